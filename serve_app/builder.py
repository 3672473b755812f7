"""The application builder: `build_app(args) -> Application`, usable as a Serve `import_path`
(`serve run serve_app:build_app key=value ...`, `serve build`, `serve deploy`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from core.setting_groups import EngineSettings, ReplicaSettings
from core.settings import Settings

if TYPE_CHECKING:
    from ray.serve import Application


def build_app(args: dict[str, Any] | Settings | None = None) -> Application:
    """Ingress -> Orchestrator -> (Retriever, vLLM replicas), configured by `args` (Settings fields, nested by
    group; environment variables and LLMSERVE_CONFIG fill in the rest)."""
    # Imported here so that `import serve_app` stays light (the CLI's --help must not load vLLM).
    from deployments.llm import build_llm_deployments

    settings = args if isinstance(args, Settings) else Settings(**(args or {}))
    if not settings.state.redis_url:
        raise ValueError("state.redis_url is not set: set REDIS_URL (or use `llmserve up`, which embeds one)")
    if not settings.master_key_hash():
        raise ValueError("no master key: set LLMSERVE_MASTER_KEY (or master_key_sha256)")
    sources = preflight(settings)
    return compose(settings, build_llm_deployments(settings.engines(), sources, scaling_arguments(settings)), sources)


def scaling_arguments(settings: Settings) -> dict[str, dict[str, Any]]:
    """Per self-hosted model, what its scale-or-spill policy needs beyond the model's own settings: where the
    signals are, its provider's name, what its replica-hour costs, the cheapest managed provider of that model
    (its output price, as the router orders them: an unpriced one is free) and the TTFT target."""
    from core.pricing import price_of

    own = next((p.name for p in settings.routing.providers if p.kind == "self_hosted"), "self-hosted")
    arguments = {}
    for i, engine in enumerate(settings.engines()):
        managed = [
            price_of(p, settings.pricing).output_per_mtok
            for p in settings.routing.providers
            if p.kind != "self_hosted" and p.upstream_model(engine.model_name) is not None
        ]
        arguments[engine.model_name] = {
            "redis_url": settings.state.redis_url,
            "redis_prefix": settings.state.redis_prefix,
            "self_hosted_provider": own if i == 0 else f"{own}/{engine.model_name}",
            "economics": {
                "replica_hour_usd": settings.pricing.gpu_hour_usd * engine.tensor_parallel_size,
                "managed_usd_per_mtok": min(managed, default=0.0),
                "ttft_target_s": settings.routing.ttft_target_s,
                "managed_available": bool(managed),
            },
        }
    return arguments


def preflight(settings: Settings, progress: Callable[[str], None] = print) -> dict[str, str]:
    """What must hold before anything starts: each self-hosted model is reachable (SmolLM2 is prepared on
    first use), its quantization mode suits its checkpoint and the hardware, and its LoRA adapters are where
    the settings say. Returns what vLLM loads for each model name."""
    from core.quantization import check_quantization
    from serve_app.model_prep import check_lora_adapters, resolve_model_source

    sources = {}
    for engine in settings.engines():
        source = resolve_model_source(engine.model, engine.model_cache_dir, progress=progress)
        check_quantization(engine.quantization, engine.accelerator, engine.accelerator_type, source, dtype=engine.dtype)
        check_lora_adapters(engine.lora_path, engine.lora_adapters, engine.max_lora_rank)
        sources[engine.model_name] = source
    return sources


def orchestrator_replicas(replicas: ReplicaSettings, engines: list[EngineSettings] | None = None) -> int:
    """The configured count; else enough to carry what the engines deliver at their maximum scale, where their
    `replica_tokens_per_s` is known (`replicas.orchestrator_tokens_per_s` each), and at least 2 when memory
    allows (one replica's death then interrupts nothing: the other carries on its answers from their journals)."""
    if replicas.orchestrator is not None:
        return replicas.orchestrator
    import psutil

    free_gib = psutil.virtual_memory().available / 1024**3
    floor = 2 if free_gib >= replicas.orchestrator_pair_min_free_gib else 1
    peak = sum(e.max_replicas * e.replica_tokens_per_s for e in engines or [] if e.replica_tokens_per_s)
    return max(floor, math.ceil(peak / replicas.orchestrator_tokens_per_s))


def compose(
    settings: Settings, llm: Application | dict[str, Application], model_source: str | dict[str, str]
) -> Application:
    """Ingress -> Orchestrator -> (Retriever, the engines), and the batch workers (-> Orchestrator): the graph
    in front of any engine deployments with the handle interface of ray.serve.llm's LLMServer (benchmarks put
    a fake engine there). `llm` and `model_source`: one per self-hosted model name (one alone is the primary
    model's). Each deployment gets the settings groups it works with, nothing else; the master key reaches
    them only as its hash."""
    from core.pricing import self_hosted_price
    from deployments.batch_worker import BatchWorker
    from deployments.ingress import Ingress
    from deployments.orchestrator import Orchestrator
    from deployments.retriever import Retriever

    s = settings
    llms = llm if isinstance(llm, dict) else {s.model_name: llm}
    sources = model_source if isinstance(model_source, dict) else {s.model_name: model_source}
    engines = [e for e in s.engines() if e.model_name in llms]
    grpc = s.server.handle_grpc
    light: dict = {"num_cpus": s.replicas.light_num_cpus}
    if s.replicas.light_ray_resources:
        light["resources"] = s.replicas.light_ray_resources
    checked = {"health_check_period_s": s.replicas.health_check_period_s}
    served_models = s.served_models()
    retriever = Retriever.options(
        num_replicas=s.rag.replicas, ray_actor_options=light, max_ongoing_requests=256, **checked
    ).bind(s.rag, metrics=s.metrics)
    in_ingress = s.server.orchestrator_in_ingress
    # With answers run in the ingress, the Orchestrator deployment serves batch work only: one replica unless set.
    alone = in_ingress and s.replicas.orchestrator is None
    orchestrators = 1 if alone else orchestrator_replicas(s.replicas, engines)
    # The processes that run answers share the engines' slots: the orchestrators, and the ingress replicas too
    # when they answer (the Orchestrator deployment still runs batch answers).
    answering = orchestrators + (s.replicas.ingress if in_ingress else 0)
    slots = {e.model_name: max(1, e.max_replicas * e.target_ongoing_requests // answering) for e in engines}
    orchestrator_args = dict(
        llms=llms,
        retriever=retriever,
        engines=engines,
        limits=s.limits,
        state=s.state,
        rag=s.rag,
        routing=s.routing,
        pricing=s.pricing,
        metrics=s.metrics,
        model_sources=sources,
        served_models=served_models,
        self_hosted_slots=slots,
        grpc=grpc,
        stream_window_bytes=s.server.stream_window_bytes,
    )
    orchestrator = Orchestrator.options(
        num_replicas=orchestrators, ray_actor_options=light, max_ongoing_requests=1000, **checked
    ).bind(**orchestrator_args)
    batch_worker = BatchWorker.options(
        ray_actor_options=light,
        **checked,
        autoscaling_config={
            "min_replicas": s.batch.worker_min_replicas,
            "initial_replicas": s.batch.worker_min_replicas,
            "max_replicas": s.batch.worker_max_replicas,
            "upscale_delay_s": 10.0,
            "downscale_delay_s": 120.0,
            "policy": {"policy_function": "deployments.batch_worker:queue_autoscaling_policy"},
        },
    ).bind(
        orchestrator,
        batch=s.batch,
        state=s.state,
        limits=s.limits,
        metrics=s.metrics,
        price=self_hosted_price(s.pricing),
        model_name=s.model_name,
        grpc=grpc,
    )
    ingress = Ingress.options(
        num_replicas=s.replicas.ingress, ray_actor_options=light, max_ongoing_requests=1000, **checked
    )
    return ingress.bind(
        orchestrator,
        retriever,
        batch_worker,
        master_key_hash=s.master_key_hash(),
        limits=s.limits,
        state=s.state,
        engines=engines,
        pricing=s.pricing,
        routing=s.routing,
        batch=s.batch,
        served_models=served_models,
        ingress_replicas=s.replicas.ingress,
        grpc=grpc,
        metrics=s.metrics,
        stream_window_bytes=s.server.stream_window_bytes,
        orchestrator_here=orchestrator_args if in_ingress else None,
    )
