"""The vLLM replicas: built by ray.serve.llm, wrapped behind a small engine protocol.

`build_llm_config` turns our settings into an `LLMConfig`; `ServeLLMEngine` is what the orchestrator calls.
It is the one place that decodes what the LLMServer handle yields (lists of `data: {json}\\n\\n` strings,
several per item when batched, or `ErrorResponse` objects), so no other code depends on that format.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from ray.serve.llm import LLMConfig

from deployments.providers.base import EngineDelta, GenerationParams, Price, ProviderError, delta_from_chunk
from serve_app.errors import EngineError, InvalidRequest, ServiceUnavailable
from serve_app.settings import Settings


def build_llm_config(settings: Settings, model_source: str) -> LLMConfig:
    engine_kwargs: dict[str, Any] = {
        "dtype": settings.dtype,
        "max_model_len": settings.max_model_len,
        "enforce_eager": settings.enforce_eager,
        "seed": settings.seed,
        "tensor_parallel_size": settings.tensor_parallel_size,
    }
    if settings.quantization:
        engine_kwargs["quantization"] = settings.quantization
    if settings.kv_cache_memory_bytes:
        engine_kwargs["kv_cache_memory_bytes"] = settings.kv_cache_memory_bytes
    if settings.accelerator == "gpu":
        engine_kwargs["gpu_memory_utilization"] = settings.gpu_memory_utilization
    engine_kwargs.update(settings.engine_kwargs)

    deployment_config: dict[str, Any] = {
        "autoscaling_config": {
            "min_replicas": settings.llm_min_replicas,
            "initial_replicas": max(1, settings.llm_min_replicas),
            "max_replicas": settings.llm_max_replicas,
            "target_ongoing_requests": settings.llm_target_ongoing_requests,
            "upscale_delay_s": settings.llm_upscale_delay_s,
            "downscale_delay_s": settings.llm_downscale_delay_s,
        },
        "max_ongoing_requests": settings.llm_max_ongoing_requests,
        "max_queued_requests": settings.llm_max_queued_requests,
    }
    extra: dict[str, Any] = {}
    if settings.accelerator == "cpu":
        extra["accelerator_config"] = {"kind": "cpu"}
    elif settings.accelerator_type:
        extra["accelerator_type"] = settings.accelerator_type
    return LLMConfig(
        model_loading_config={"model_id": settings.model_name, "model_source": model_source},
        engine_kwargs=engine_kwargs,
        deployment_config=deployment_config,
        experimental_configs={"stream_batching_interval_ms": settings.stream_batching_interval_ms},
        **extra,
    )


# Replica death or overload between us and the engine: the request may succeed if retried.
_UNAVAILABLE = (
    ActorDiedError,
    ActorUnavailableError,
    RayActorError,
    BackPressureError,
    DeploymentUnavailableError,
)


def raise_engine_error(error: dict[str, Any]) -> None:
    """Map an engine error body ({message, type, param, code}) to our typed errors."""
    message = str(error.get("message") or "engine error")
    code = error.get("code")
    if "context length" in message or error.get("param") == "input_tokens":
        # vLLM names the param `input_tokens`; OpenAI clients expect this shape.
        raise InvalidRequest(message, param="messages", code="context_length_exceeded")
    if code in (400, "400") or error.get("type") in ("BadRequestError", "invalid_request_error"):
        raise InvalidRequest(message, param=error.get("param"))
    raise EngineError(message)


def decode_sse_items(item: Any) -> list[EngineDelta]:
    """Decode one item yielded by the LLMServer stream into deltas (an item may hold many frames)."""
    deltas: list[EngineDelta] = []
    for part in item if isinstance(item, list) else [item]:
        error = getattr(part, "error", None)
        if error is not None:  # an ErrorResponse object
            raise_engine_error(error.model_dump() if hasattr(error, "model_dump") else dict(error))
        if not isinstance(part, str):
            raise EngineError(f"unexpected engine stream item {type(part).__name__}")
        for frame in part.split("\n\n"):
            frame = frame.strip()
            if not frame.startswith("data:"):
                continue
            data = frame[5:].strip()
            if data == "[DONE]":
                continue
            payload = json.loads(data)
            if "error" in payload:
                raise_engine_error(payload["error"])
            delta = delta_from_chunk(payload)
            if delta is not None:
                deltas.append(delta)
    return deltas


class ServeLLMEngine:
    """The self-hosted provider: a ray.serve.llm `LLMServer` deployment handle. Replica death and overload
    become ProviderError (the router fails over); the request's own faults stay InvalidRequest."""

    kind = "self_hosted"

    def __init__(self, handle: DeploymentHandle, model_id: str, name: str = "self-hosted", price: Price | None = None):
        self.name = name
        self.price = price or Price()
        self._handle = handle
        self._stream_handle = handle.options(stream=True)
        self._model_id = model_id

    def serves(self, model: str) -> bool:
        return model == self._model_id

    async def stream(
        self, model: str, messages: list[dict[str, str]], params: GenerationParams, request_id: str
    ) -> AsyncIterator[list[EngineDelta]]:
        # Imported here: the module pulls in vLLM's protocol classes, which only replicas need.
        from ray.serve.llm.openai_api_models import ChatCompletionRequest

        fields = {k: v for k, v in params.__dict__.items() if v is not None}
        if messages[-1]["role"] == "assistant":  # continue a partial answer (failover)
            fields.update(continue_final_message=True, add_generation_prompt=False)
        request = ChatCompletionRequest(
            model=self._model_id,
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
            request_id=request_id,
            **fields,
        )
        try:
            async for item in self._stream_handle.chat.remote(request):
                deltas = decode_sse_items(item)
                if deltas:
                    yield deltas
        except _UNAVAILABLE as exc:
            raise ProviderError(self.name, f"model replica unavailable: {type(exc).__name__}") from exc
        except EngineError as exc:
            raise ProviderError(self.name, f"engine error: {exc.message}") from exc

    async def check_health(self) -> None:
        try:
            await self._handle.check_health.remote()
        except _UNAVAILABLE as exc:
            raise ServiceUnavailable(f"model replica unavailable: {type(exc).__name__}") from exc

    async def aclose(self) -> None:
        return None
