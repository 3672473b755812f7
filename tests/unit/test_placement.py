"""Where the replicas go on a cluster: the vLLM replicas to the nodes that have the engine's custom Ray
resources (a cluster's GPU workers), the light deployments to the nodes that have theirs (the CPU nodes)."""

from core.settings import Settings


def test_the_engines_resources_reach_its_replicas_placement_group_and_an_extra_model_inherits_them():
    from deployments.llm import build_llm_deployments

    settings = Settings(
        engine={"ray_resources": {"llm_node": 1}},
        extra_models=[{"model": "org/Other-Model"}, {"model": "org/Third", "ray_resources": {"big_node": 2}}],
    )
    sources = {e.model_name: f"/m/{e.model_name}" for e in settings.engines()}
    apps = build_llm_deployments(settings.engines(), sources)
    bundles = {name: app._bound_deployment._replica_config.placement_group_bundles for name, app in apps.items()}
    # The replica's own bundle (with the engine's CPU) holds the resource: the whole group lands on such a node.
    assert bundles["SmolLM2-135M-Instruct"][0]["llm_node"] == 1
    assert bundles["Other-Model"][0]["llm_node"] == 1  # hardware settings are inherited
    assert bundles["Third"][0]["big_node"] == 2 and "llm_node" not in bundles["Third"][0]  # its own replace them


def _deployments(app, found=None) -> dict:
    """Every deployment bound into an application graph, by name."""
    found = {} if found is None else found
    bound = app._bound_deployment
    found[bound.name] = bound
    for arg in [*bound.init_args, *bound.init_kwargs.values()]:
        for inner in arg.values() if isinstance(arg, dict) else [arg]:
            if hasattr(inner, "_bound_deployment") and inner._bound_deployment.name not in found:
                _deployments(inner, found)
    return found


def test_the_light_deployments_take_their_resources():
    from ray.serve import deployment

    from serve_app.builder import compose

    settings = Settings(replicas={"light_ray_resources": {"head": 0.01}, "orchestrator": 1})
    engine = deployment(name="LLM:fake")(type("Engine", (), {})).bind()
    found = _deployments(compose(settings, engine, "/m"))
    assert set(found) == {"Ingress", "Orchestrator", "Retriever", "BatchWorker", "LLM:fake"}
    for name in ("Ingress", "Orchestrator", "Retriever", "BatchWorker"):
        assert found[name].ray_actor_options["resources"] == {"head": 0.01}, name
    assert "resources" not in (found["LLM:fake"].ray_actor_options or {})
