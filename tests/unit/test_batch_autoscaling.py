"""The batch workers' autoscaling policy: replicas follow the queue's depth, and its age when it stalls."""

from types import SimpleNamespace

from deployments.batch_worker import queue_autoscaling_policy


def context(depth: float, age: float, replicas: int = 1, per_replica: float = 200, max_age: float = 600):
    # Every replica reports the same queue-wide numbers (read from Redis); the policy takes the max.
    metrics = {
        "queue_depth": {f"r{i}": depth for i in range(replicas)},
        "queue_oldest_age_s": {f"r{i}": age for i in range(replicas)},
        "queue_per_replica": {f"r{i}": per_replica for i in range(replicas)},
        "queue_max_age_s": {f"r{i}": max_age for i in range(replicas)},
    }
    return SimpleNamespace(aggregated_metrics=metrics, current_num_replicas=replicas)


def test_replicas_follow_the_depth():
    assert queue_autoscaling_policy(context(0, 0))[0] == 1  # an idle worker keeps watching the queue
    assert queue_autoscaling_policy(context(150, 10))[0] == 1
    assert queue_autoscaling_policy(context(450, 10))[0] == 3
    assert queue_autoscaling_policy(context(450, 10, per_replica=50))[0] == 9  # bounds are Serve's to apply


def test_an_old_queue_adds_a_replica_even_when_short():
    assert queue_autoscaling_policy(context(20, 900, replicas=2))[0] == 3
    assert queue_autoscaling_policy(context(20, 100, replicas=2))[0] == 1


def test_no_metrics_yet_means_one_replica():
    assert queue_autoscaling_policy(SimpleNamespace(aggregated_metrics=None, current_num_replicas=1))[0] == 1
