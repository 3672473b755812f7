"""The vLLM replicas as ray.serve.llm builds them: our engine settings as an `LLMConfig`. What streams from
those replicas (the self-hosted provider) lives with the other providers, in deployments/providers/self_hosted.py."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.llm._internal.common.utils.cloud_utils import is_remote_path
from ray.serve.llm import LLMConfig, LLMServer, build_llm_deployment

from core.setting_groups import EngineSettings
from deployments.coalescing import ready_batches
from deployments.lora import LOCAL_LORA_PATH, LocalLoraLoader

if TYPE_CHECKING:
    from ray.serve import Application


def build_llm_deployments(
    engines: list[EngineSettings], sources: dict[str, str], scaling: dict[str, dict[str, Any]] | None = None
) -> dict[str, Application]:
    """One ray.serve.llm LLMServer deployment per self-hosted model (named `LLM:<model id>`), each autoscaled on
    its own; `sources`: what vLLM loads for each model name; `scaling`: per model, the scale-or-spill policy's
    arguments but the engine's own (serve_app/builder.py), for models with `autoscaling: scale_or_spill`."""
    return {
        engine.model_name: build_llm_deployment(
            build_llm_config(engine, sources[engine.model_name], (scaling or {}).get(engine.model_name)),
            name_prefix="LLM:",
            bind_kwargs={"model_downloader": LocalLoraLoader},
            deployment_cls=CoalescingLLMServer,
        )
        for engine in engines
    }


class CoalescingLLMServer(LLMServer):
    """ray.serve.llm's LLMServer whose streams, with `stream_batching_interval_ms` 0, go out adaptively coalesced
    (deployments/coalescing.py): each item holds every SSE frame the engine produced since Serve took the last
    one, so a replica that keeps up sends token by token and a busy one sends fewer, fuller items, with no window
    that delays a token. A positive interval keeps ray.serve.llm's own timed batching. The frames pile up only
    while Serve's sending waits, which it does in its throughput-optimised mode (`llmserve up` and the cluster
    configs set RAY_SERVE_THROUGHPUT_OPTIMIZED=1): with user code on a thread of its own, Serve drains the
    generator into its own queue and each item holds one frame again, as with ray.serve.llm's batching off."""

    def _batch_output_stream(self, generator):
        if self._get_batch_interval_ms():
            return super()._batch_output_stream(generator)
        return ready_batches(generator)


def build_llm_config(engine: EngineSettings, model_source: str, scaling: dict[str, Any] | None = None) -> LLMConfig:
    engine_kwargs: dict[str, Any] = {
        "dtype": engine.dtype,
        "max_model_len": engine.max_model_len,
        "enforce_eager": engine.enforce_eager,
        "seed": engine.seed,
        "tensor_parallel_size": engine.tensor_parallel_size,
    }
    if engine.quantization:
        engine_kwargs["quantization"] = engine.quantization
    if engine.kv_cache_memory_bytes:
        engine_kwargs["kv_cache_memory_bytes"] = engine.kv_cache_memory_bytes
    if engine.tool_call_parser:
        engine_kwargs.update(
            enable_auto_tool_choice=True,
            tool_call_parser=engine.tool_call_parser,
            tool_strict_level=engine.tool_strict_level,
        )
    if engine.structured_outputs_config:
        engine_kwargs["structured_outputs_config"] = engine.structured_outputs_config
    if engine.accelerator == "gpu":
        engine_kwargs["gpu_memory_utilization"] = engine.gpu_memory_utilization
    engine_kwargs.update(engine.engine_kwargs)

    deployment_config: dict[str, Any] = {
        "autoscaling_config": _autoscaling(engine),
        "max_ongoing_requests": engine.max_ongoing_requests,
        "max_queued_requests": engine.max_queued_requests,
        # A replica whose engine died (EngineDeadError) fails its health check: found in seconds, not Serve's 10 s
        # period, so it is replaced sooner while requests wait for it (deployments/providers/router.py).
        "health_check_period_s": engine.health_check_period_s,
    }
    if engine.ray_resources:  # merged by ray.serve.llm into the replica's placement group bundle
        deployment_config["ray_actor_options"] = {"resources": dict(engine.ray_resources)}
    if engine.autoscaling == "scale_or_spill" and scaling is not None:
        # The policy keeps its own time (downscale_delay_s is its wait): Serve's delays on top would reset on
        # every decision that asks for the same count again.
        autoscaling = deployment_config["autoscaling_config"]
        autoscaling.update(policy=_scale_or_spill(engine, scaling), upscale_delay_s=0.0, downscale_delay_s=0.0)
    if engine.request_router == "affinity":
        deployment_config["request_router_config"] = {
            "request_router_class": "deployments.llm_router.ConversationAffinityRouter",
            "request_router_kwargs": {
                "affinity_max_queue": engine.affinity_max_queue,
                "imbalanced_threshold": engine.prefix_imbalanced_threshold,
                "do_eviction": True,  # the prefix tree stays bounded (ray.serve.llm's default sizes)
            },
        }
    extra: dict[str, Any] = {}
    experimental: dict[str, Any] = {"stream_batching_interval_ms": engine.stream_batching_interval_ms}
    if engine.lora_path:
        # ray.serve.llm loads an adapter on a replica at its first request (Serve multiplexing by model id);
        # vLLM must be started with LoRA on for it.
        lora = {"enable_lora": True, "max_lora_rank": engine.max_lora_rank, "max_loras": engine.max_loras_per_replica}
        engine_kwargs = {**lora, **engine_kwargs}  # engine.engine_kwargs still last
        remote = is_remote_path(engine.lora_path)
        extra["lora_config"] = {
            "dynamic_lora_loading_path": engine.lora_path if remote else None,
            "max_num_adapters_per_replica": engine.max_loras_per_replica,
        }
        if not remote:
            experimental[LOCAL_LORA_PATH] = str(Path(engine.lora_path).expanduser().resolve())
    if engine.accelerator == "cpu":
        extra["accelerator_config"] = {"kind": "cpu"}
    elif engine.accelerator_type:
        extra["accelerator_type"] = engine.accelerator_type
    return LLMConfig(
        model_loading_config={"model_id": engine.model_name, "model_source": model_source},
        engine_kwargs=engine_kwargs,
        deployment_config=deployment_config,
        experimental_configs=experimental,
        **extra,
    )


def _autoscaling(engine: EngineSettings) -> dict[str, Any]:
    return {
        "min_replicas": engine.min_replicas,
        "initial_replicas": max(1, engine.min_replicas),
        "max_replicas": engine.max_replicas,
        "target_ongoing_requests": engine.target_ongoing_requests,
        "upscale_delay_s": engine.upscale_delay_s,
        "downscale_delay_s": engine.downscale_delay_s,
    }


def _scale_or_spill(engine: EngineSettings, scaling: dict[str, Any]) -> dict[str, Any]:
    """Serve's class policy (deployments/scale_or_spill_policy.py) with this model's arguments."""
    economics = {
        **scaling["economics"],
        "cold_start_s": engine.cold_start_s,
        "min_replicas": engine.min_replicas,
        "max_replicas": engine.max_replicas,
        "downscale_after_s": engine.downscale_delay_s,
    }
    kwargs = {
        **{k: v for k, v in scaling.items() if k != "economics"},
        "model": engine.model_name,
        "economics": economics,
        "replica_tokens_per_s": engine.replica_tokens_per_s,
    }
    return {"policy_function": "deployments.scale_or_spill_policy:ScaleOrSpillPolicy", "policy_kwargs": kwargs}
