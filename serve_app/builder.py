"""The application builder: `build_app(args) -> Application`, usable as a Serve `import_path`
(`serve run serve_app:build_app key=value ...`, `serve build`, `serve deploy`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from serve_app.settings import Settings

if TYPE_CHECKING:
    from ray.serve import Application


def build_app(args: dict[str, Any] | Settings | None = None) -> Application:
    """Ingress -> Orchestrator -> (Retriever, vLLM replicas), configured by `args` (Settings fields;
    environment variables and LLMSERVE_CONFIG fill in the rest)."""
    # Imported here so that `import serve_app` stays light (the CLI's --help must not load vLLM).
    from ray.serve.llm import build_llm_deployment

    from deployments.llm import build_llm_config

    settings = args if isinstance(args, Settings) else Settings(**(args or {}))
    if not settings.redis_url:
        raise ValueError("redis_url is not set: set REDIS_URL (or use `llmserve up`, which embeds one)")
    if not settings.master_key_hash():
        raise ValueError("no master key: set LLMSERVE_MASTER_KEY (or master_key_sha256)")
    model_source = preflight(settings)
    llm = build_llm_deployment(build_llm_config(settings, model_source), name_prefix="LLM:")
    return compose(settings, llm)


def preflight(settings: Settings, progress: Callable[[str], None] = print) -> str:
    """What must hold before anything starts: the model is reachable (SmolLM2 is prepared on first use) and
    the quantization mode suits its checkpoint and the hardware. Returns the model source for vLLM."""
    from serve_app.model_prep import resolve_model_source
    from serve_app.quantization import check_quantization

    model_source = resolve_model_source(settings.model, settings.model_cache_dir, progress=progress)
    check_quantization(settings.quantization, settings.accelerator, settings.accelerator_type, model_source)
    return model_source


def compose(settings: Settings, llm: Application) -> Application:
    """Ingress -> Orchestrator -> (Retriever, `llm`), and the batch workers (-> Orchestrator): the graph in
    front of any engine deployment with the handle interface of ray.serve.llm's LLMServer (benchmarks put a
    fake engine there)."""
    from deployments.batch_worker import BatchWorker
    from deployments.ingress import Ingress
    from deployments.orchestrator import Orchestrator
    from deployments.retriever import Retriever

    shipped = settings.for_deployments()  # replicas get the key's hash, never the key
    light = {"num_cpus": settings.light_num_cpus}
    retriever = Retriever.options(
        num_replicas=settings.retriever_replicas, ray_actor_options=light, max_ongoing_requests=256
    ).bind(shipped)
    orchestrator = Orchestrator.options(
        num_replicas=settings.orchestrator_replicas, ray_actor_options=light, max_ongoing_requests=1000
    ).bind(shipped, llm, retriever)
    batch_worker = BatchWorker.options(
        ray_actor_options=light,
        autoscaling_config={
            "min_replicas": settings.batch_worker_min_replicas,
            "initial_replicas": settings.batch_worker_min_replicas,
            "max_replicas": settings.batch_worker_max_replicas,
            "upscale_delay_s": 10.0,
            "downscale_delay_s": 120.0,
            "policy": {"policy_function": "deployments.batch_worker:queue_autoscaling_policy"},
        },
    ).bind(shipped, orchestrator)
    return Ingress.options(
        num_replicas=settings.ingress_replicas, ray_actor_options=light, max_ongoing_requests=1000
    ).bind(shipped, orchestrator, batch_worker)
