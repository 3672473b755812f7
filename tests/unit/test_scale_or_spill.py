"""The scale-or-spill controller's decisions on a recorded load, and the day simulation's numbers."""

import pytest

from core.scale_or_spill import Economics, History, Load, decide

# A replica: 50 tok/s at full use, $0.09/h; the managed API $2/1M tokens: break-even at 25 % of a replica.
ECONOMICS = Economics(
    replica_hour_usd=0.09,
    managed_usd_per_mtok=2.0,
    replica_tokens_per_s=50.0,
    cold_start_s=75.0,
    ttft_target_s=2.0,
    max_utilisation=0.8,  # 40 tok/s per replica within the TTFT target
    min_replicas=0,
    max_replicas=4,
    downscale_after_s=300.0,
)


def test_break_even_is_a_replicas_hour_over_what_its_tokens_would_cost_managed():
    assert ECONOMICS.break_even_utilisation == pytest.approx(0.09 / (50 * 3600 * 2e-6))
    assert Economics(1.0, 0.0, 50, 60, 2).break_even_utilisation == float("inf")  # free managed: never pays


def run(recorded: list[tuple[float, float, int, int]], economics: Economics = ECONOMICS) -> list:
    """Decisions over a recorded load: (time s, demand tok/s, replicas serving, replicas starting)."""
    history = History()
    return [decide(Load(t, demand, serving, starting), economics, history) for t, demand, serving, starting in recorded]


def test_a_recorded_day_scales_spills_and_pulls_back():
    decisions = run([
        (0, 30, 1, 0),      # fits one replica
        (10, 70, 1, 0),     # a burst: 30 tok/s over, just begun
        (20, 70, 1, 0),     # 10 s old: a replica would start for a burst that may end
        (90, 70, 1, 0),     # 90 s old: expected to last, fills 60 % of a replica: add one, spill meanwhile
        (100, 70, 1, 1),    # it is starting: spill
        (200, 70, 2, 0),    # it serves: traffic stays here
        (300, 20, 2, 0),    # the burst is over: one replica would do...
        (500, 20, 2, 0),    # ...not yet 300 s
        (600, 20, 2, 0),    # 300 s: scale down, nothing spilled
        (700, 8, 1, 0),     # night: 8 tok/s fills 16 % of a replica, below break-even (25 %)...
        (1000, 8, 1, 0),    # ...for 300 s: no replica, all to the managed provider
    ])  # fmt: skip
    actions = [(d.action, d.replicas, d.spill_fraction) for d in decisions]
    assert actions[0] == ("hold", 1, 0.0)
    assert actions[1][0] == actions[2][0] == "spill" and actions[1][1] == 1
    assert actions[1][2] == pytest.approx(30 / 70, abs=1e-3)
    assert actions[3][:2] == ("scale_up", 2) and actions[3][2] > 0
    assert actions[4][:2] == ("spill", 2)
    assert actions[5] == ("hold", 2, 0.0)
    assert [a[0] for a in actions[6:8]] == ["hold", "hold"]
    assert actions[8] == ("scale_down", 1, 0.0)
    assert actions[9] == ("hold", 1, 0.0)
    assert actions[10] == ("scale_down", 0, 1.0)
    assert "break-even" in decisions[10].reason and decisions[3].break_even_utilisation == pytest.approx(0.25)


def test_an_excess_too_small_to_fill_a_replica_is_spilled_however_long_it_lasts():
    decisions = run([(t, 45, 1, 0) for t in range(0, 3600, 60)])  # 5 tok/s over: 10 % of a replica
    assert {d.action for d in decisions} == {"spill"} and {d.replicas for d in decisions} == {1}


def test_a_big_excess_adds_as_many_replicas_as_pay_and_no_more_than_the_ceiling():
    [*_, last] = run([(0, 400, 1, 0), (120, 400, 1, 0)])
    assert last.action == "scale_up" and last.replicas == 4  # 9 would carry it; max_replicas is 4


def test_with_no_managed_provider_it_scales_at_once_and_never_spills():
    alone = Economics(**{**ECONOMICS.__dict__, "managed_available": False})
    [first] = run([(0, 45, 1, 0)], alone)
    assert (first.action, first.replicas, first.spill_fraction) == ("scale_up", 2, 0.0)


def test_slow_first_tokens_spill_a_share_without_buying_a_replica():
    decision = decide(Load(0, 30, 1, 0, ttft_s=4.0), ECONOMICS, History())
    assert decision.action == "spill" and decision.replicas == 1 and decision.spill_fraction == 0.5


def test_the_history_survives_a_round_trip_as_serve_keeps_it():
    history = History()
    decide(Load(0, 70, 1, 0), ECONOMICS, history)
    restored = History.from_dict(history.to_dict())
    assert restored == history and restored.excess_since_s == 0


def test_the_simulated_day_repeats_from_its_seed_and_the_controller_keeps_the_slo():
    from benchmarks.scale_or_spill import Engine, Traffic, run_all

    economics = Economics(0.09, 2.0, Engine().tokens_per_s, Engine().cold_start_s, 2.0, min_replicas=0, max_replicas=16)
    first = [r.summary() for r in run_all(economics, Engine(), Traffic(), seed=7)]
    assert first == [r.summary() for r in run_all(economics, Engine(), Traffic(), seed=7)]
    assert first != [r.summary() for r in run_all(economics, Engine(), Traffic(), seed=8)]
    by = {r["policy"]: r for r in first}
    assert by["controller"]["slo_attainment"] >= by["serve-default"]["slo_attainment"]
    assert by["controller"]["cost_usd"] < min(by["peak"]["cost_usd"], by["managed"]["cost_usd"])


def ctx(running: int, target: int, state: dict, now: float):
    from types import SimpleNamespace

    return SimpleNamespace(
        running_replicas=list(range(running)), target_num_replicas=target, policy_state=state, current_time=now
    )


def test_the_serve_policy_decides_from_the_signals_in_redis_and_the_routers_follow(redis_prefix):
    import asyncio
    import json
    import time

    import redis

    from deployments.scale_or_spill_policy import ScaleOrSpillPolicy
    from state.scaling_signals import BUCKET_S, ScalingSignals
    from tests.conftest import REDIS_URL, redis_client

    economics = {k: v for k, v in ECONOMICS.__dict__.items() if k not in ("replica_tokens_per_s", "managed_available")}
    policy = ScaleOrSpillPolicy(REDIS_URL, redis_prefix, "m", economics, replica_tokens_per_s=50.0)
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    now = (int(time.time()) // BUCKET_S) * BUCKET_S + 1.0  # the start of a bucket: the minute before is complete
    for bucket in range(int(now) // BUCKET_S - 6, int(now) // BUCKET_S):  # 70 tok/s over the last minute
        client.hset(f"{redis_prefix}:sos:{{m}}:{bucket}", mapping={"tokens": 700, "ttft_ms": 400, "ttft_n": 1})
    replicas, state = policy(ctx(1, 1, {"history": {"excess_since_s": now - 120}}, now))
    assert replicas == 2 and state["decided_at"] == now
    stored = json.loads(client.get(f"{redis_prefix}:sos:{{m}}:decision"))
    assert stored["action"] == "scale_up" and stored["numbers"]["demand_tokens_per_s"] == 70.0
    assert stored["tokens_per_s_source"] == "setting"
    assert policy(ctx(1, 2, state, now + 1)) == (2, state)  # within its period: no new decision

    async def routers_side():
        async with redis_client() as aio:
            signals = ScalingSignals(aio, redis_prefix)
            await signals.record("m", 128, 0.5)
            return await signals.spill_fraction("m"), await signals.decisions()

    spill, decisions = asyncio.run(routers_side())
    assert spill == stored["spill_fraction"] > 0 and decisions["m"]["action"] == "scale_up"


def test_without_redis_the_policy_keeps_what_runs():
    from deployments.scale_or_spill_policy import ScaleOrSpillPolicy

    economics = {k: v for k, v in ECONOMICS.__dict__.items() if k not in ("replica_tokens_per_s",)}
    policy = ScaleOrSpillPolicy("redis://127.0.0.1:1/0", "p", "m", economics)
    assert policy(ctx(2, 3, {}, 100.0)) == (3, {})


def test_the_llm_deployment_gets_the_policy_only_when_asked(tmp_path):
    from core.settings import Settings
    from deployments.llm import build_llm_config
    from serve_app.builder import scaling_arguments

    settings = Settings(engine={"autoscaling": "scale_or_spill", "cold_start_s": 60, "max_replicas": 3})
    config = build_llm_config(settings.engine, "/m", scaling_arguments(settings))
    policy = config.deployment_config["autoscaling_config"]["policy"]
    assert policy["policy_function"] == "deployments.scale_or_spill_policy:ScaleOrSpillPolicy"
    kwargs = policy["policy_kwargs"]
    assert kwargs["model"] == "SmolLM2-135M-Instruct" and kwargs["economics"]["cold_start_s"] == 60
    assert kwargs["economics"]["max_replicas"] == 3 and kwargs["economics"]["managed_available"] is False
    plain = build_llm_config(Settings().engine, "/m", scaling_arguments(Settings()))
    assert "policy" not in plain.deployment_config["autoscaling_config"]
