"""The application graph as `compose` wires it: each deployment gets the settings groups it works with, never the
whole settings, and the master key reaches the replicas only as its hash."""

import cloudpickle
from pydantic import BaseModel, SecretStr
from ray import serve

from core.settings import Settings
from serve_app.builder import compose

SECRET = "sk-plain-" + "x" * 24


@serve.deployment(name="FakeLLM")
class FakeLLM:
    pass


def bound_deployments(app) -> dict[str, tuple[tuple, dict]]:
    """name -> (args, kwargs) for every deployment in the graph, the bound handles' own graphs included."""
    found, todo = {}, [app]
    while todo:
        bound = todo.pop()._bound_deployment
        found[bound.name] = (bound.init_args, bound.init_kwargs)
        args = [*bound.init_args, *bound.init_kwargs.values()]
        args += [v for a in args if isinstance(a, dict) for v in a.values()]  # the engines, by model name
        todo += [a for a in args if hasattr(a, "_bound_deployment")]
    return found


def test_each_deployment_gets_its_groups_and_only_the_key_hash():
    settings = Settings(master_key=SecretStr(SECRET), state={"redis_url": "redis://127.0.0.1:6379/0"})
    graph = bound_deployments(compose(settings, FakeLLM.bind(), model_source="/models/x"))
    assert set(graph) == {"Ingress", "Orchestrator", "Retriever", "BatchWorker", "FakeLLM"}
    for name, (args, kwargs) in graph.items():
        values = [a for a in (*args, *kwargs.values()) if not hasattr(a, "_bound_deployment")]
        assert not any(isinstance(v, Settings) for v in values), f"{name} got the whole settings"
        assert SECRET not in str(cloudpickle.dumps(values)), f"{name} got the plaintext master key"
        groups = {type(v).__name__ for v in values if isinstance(v, BaseModel)}
        assert groups <= {
            "Ingress": {"LimitsSettings", "StateSettings", "EngineSettings", "PricingSettings", "RoutingSettings",
                        "BatchSettings", "MetricsSettings"},
            "Orchestrator": {"EngineSettings", "LimitsSettings", "StateSettings", "RagSettings", "RoutingSettings",
                             "PricingSettings", "MetricsSettings"},
            "Retriever": {"RagSettings", "MetricsSettings"},  # traces
            "BatchWorker": {"BatchSettings", "StateSettings", "LimitsSettings", "MetricsSettings"},
            "FakeLLM": set(),
        }[name]  # fmt: skip
    assert graph["Ingress"][1]["master_key_hash"] == settings.master_key_hash()
    assert graph["Retriever"][0] == (settings.rag,)


def test_orchestrators_cover_what_the_engines_deliver_at_their_maximum_scale(monkeypatch):
    """One orchestrator replica per replicas.orchestrator_tokens_per_s of the engines' known rate at max scale,
    never fewer than the pair memory allows; an explicit count wins."""
    import psutil

    from core.setting_groups import EngineSettings, ReplicaSettings
    from serve_app.builder import orchestrator_replicas

    class Memory:
        available = 64 * 1024**3

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Memory)
    gpu = EngineSettings(max_replicas=4, replica_tokens_per_s=2500.0)  # a node of 4 GPUs: 10,000 tokens/s
    assert orchestrator_replicas(ReplicaSettings(), [gpu]) == 3
    assert orchestrator_replicas(ReplicaSettings(), [EngineSettings()]) == 2  # rate unknown: the pair
    assert orchestrator_replicas(ReplicaSettings(orchestrator_tokens_per_s=20000), [gpu]) == 2
    assert orchestrator_replicas(ReplicaSettings(orchestrator=1), [gpu]) == 1
    Memory.available = 1024**3
    assert orchestrator_replicas(ReplicaSettings(), [EngineSettings()]) == 1


def test_with_the_orchestrator_in_the_ingress_each_ingress_gets_its_arguments_and_slots():
    engine = {"max_replicas": 4, "target_ongoing_requests": 8}
    common = {"master_key": SecretStr(SECRET), "state": {"redis_url": "redis://127.0.0.1:6379/0"}, "engine": engine}
    apart = Settings(**common, replicas={"orchestrator": 2, "ingress": 2})
    fused = Settings(**common, server={"orchestrator_in_ingress": True}, replicas={"ingress": 2})
    apart_graph = bound_deployments(compose(apart, FakeLLM.bind(), model_source="/models/x"))
    app = compose(fused, FakeLLM.bind(), model_source="/models/x")
    graph = bound_deployments(app)
    assert apart_graph["Ingress"][1]["orchestrator_here"] is None  # the default: answers in the Orchestrator
    here = graph["Ingress"][1]["orchestrator_here"]
    orchestrator_kwargs = graph["Orchestrator"][1]
    assert set(here) == set(orchestrator_kwargs)  # what the deployment gets, by name
    assert here["engines"] == orchestrator_kwargs["engines"] and here["state"] == orchestrator_kwargs["state"]
    assert apart_graph["Orchestrator"][1]["self_hosted_slots"] == {fused.model_name: 16}  # the engines' 4 x 8, by 2
    # The 2 ingress replicas answer, and the Orchestrator deployment's one replica (left with batch work) too: the
    # engines' 32 slots go to the 3 of them, never more in all.
    assert here["self_hosted_slots"] == orchestrator_kwargs["self_hosted_slots"] == {fused.model_name: 10}
    [orchestrator] = [a for a in app._bound_deployment.init_args if a._bound_deployment.name == "Orchestrator"]
    assert orchestrator._bound_deployment.num_replicas == 1
