"""The self-hosted provider: the ray.serve.llm `LLMServer` deployment (deployments/llm.py builds it) behind the
provider protocol. It is the one place that decodes what the LLMServer handle yields (lists of
`data: {json}\\n\\n` strings, several per item when batched, or `ErrorResponse` objects), so no other code
depends on that format.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from core.errors import EngineError, InvalidRequest, ServiceUnavailable, unwrap
from core.pricing import Price
from deployments.providers.base import EngineDelta, GenerationParams, ProviderError, deltas_from_chunk

logger = logging.getLogger("llmserve.self_hosted")

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
            deltas.extend(deltas_from_chunk(payload))
    return deltas


def _adapter_load_failure(exc: BaseException) -> str | None:
    """What ray.serve.llm or our loader said when a LoRA adapter could not be loaded, or None for any other
    failure (read from the original exception inside Ray's wrapper, not from its traceback)."""
    seen = exc
    for _ in range(5):
        cause = getattr(seen, "cause", None)
        if not isinstance(cause, BaseException):
            break
        seen = cause
    message = str(seen.args[0]) if seen.args else ""
    if isinstance(seen, ValueError) and message.startswith(("Failed to load lora model", "LoRA adapter")):
        return message[:300]
    if type(seen).__name__ == "HTTPException" and getattr(seen, "status_code", None) == 404:  # not in storage
        return str(getattr(seen, "detail", ""))[:300]
    return None


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        return str(first.get("msg", exc))[:300]
    return str(exc)[:300]


class ServeLLMEngine:
    """The self-hosted provider of one model: its ray.serve.llm `LLMServer` deployment handle, and the model's
    LoRA adapters (Serve's multiplexing by adapter id picks a replica that has the adapter loaded, or loads
    it). Replica death and overload become ProviderError (the router fails over); the request's own faults stay
    InvalidRequest."""

    kind = "self_hosted"
    completes = True

    def __init__(
        self,
        handle: DeploymentHandle,
        model: str,
        adapters: dict[str, str] | None = None,
        name: str = "self-hosted",
        price: Price | None = None,
        health_name: str = "engine",
    ):
        """`adapters`: each name a client may send for one of the model's adapters -> its id on the engine
        ('<model>:<adapter>'); `health_name`: the model's key in /healthz."""
        self.name = name
        self.price = price or Price()
        self.model = model
        self._handle = handle
        self._stream_handle = handle.options(stream=True)
        self._adapters = adapters or {}
        self._health_name = health_name
        self._waking: asyncio.Task | None = None
        # vLLM's request classes, imported as the provider is made (in the replica's constructor), not at the first
        # request: Serve freezes what exists when the constructor returns out of the GC's scans, and this import
        # pulls in torch, sympy and scipy (~600k objects that every full collection would walk: 200-350 ms each,
        # every 2-3 s at 64 streams, with the event loop stopped).
        from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest
        from vllm.exceptions import VLLMClientError

        self._requests = ChatCompletionRequest, CompletionRequest, VLLMClientError

    def serves(self, model: str) -> bool:
        return model == self.model or model in self._adapters

    def _target(self, model: str) -> tuple[Any, str]:
        """The stream handle for `model` and the model id the engine knows it by."""
        engine_id = self._adapters.get(model)
        if engine_id is None:
            return self._stream_handle, model
        return self._stream_handle.options(multiplexed_model_id=engine_id), engine_id

    def cold(self) -> bool:
        """True while the deployment has no running replica, as its handle last heard from Serve's controller
        (scaled to zero, or every replica lost): a request sent now waits out a cold start."""
        return running_replicas(self._stream_handle) == 0

    def wake(self) -> None:
        """Start a replica without making a client wait for it: a health call queued at the handle is the demand
        Serve's autoscaler scales up from zero for (the handle reports it at once while there are no replicas).
        One at a time; it returns once a replica answers."""
        if self._waking is None or self._waking.done():
            self._waking = asyncio.ensure_future(self._wake())

    async def _wake(self) -> None:
        try:
            await self._handle.check_health.remote()
        except Exception as exc:
            logger.warning("waking %s failed: %s", self.name, type(exc).__name__)

    def refuses(self, params: GenerationParams) -> str | None:
        return None  # vLLM serves every field we take (tools and structured outputs through its grammars)

    async def stream(
        self,
        model: str,
        messages: list[dict[str, Any]] | str,
        params: GenerationParams,
        request_id: str,
        affinity: str | None = None,
    ) -> AsyncIterator[list[EngineDelta]]:
        """`affinity`: the conversation the request belongs to (the LLM deployment's router keeps its turns on one
        replica, deployments/llm_router.py)."""
        ChatCompletionRequest, CompletionRequest, VLLMClientError = self._requests
        handle, engine_model = self._target(model)
        if affinity:
            handle = handle.options(session_id=affinity)
        fields = params.fields()
        common = {"model": engine_model, "stream": True, "stream_options": {"include_usage": True}}
        try:
            if isinstance(messages, str):  # /v1/completions: the raw prompt
                request: Any = CompletionRequest(prompt=messages, request_id=request_id, **common, **fields)
                call = handle.completions
            else:
                if messages[-1]["role"] == "assistant":  # continue a partial answer (failover)
                    fields.update(continue_final_message=True, add_generation_prompt=False)
                request = ChatCompletionRequest(messages=messages, request_id=request_id, **common, **fields)
                call = handle.chat
        except (ValueError, VLLMClientError) as exc:  # vLLM's own checks (pydantic's ValidationError is a ValueError)
            raise InvalidRequest(f"the engine refused the request: {_first_error(exc)}") from exc
        started = False
        try:
            async for item in call.remote(request):
                deltas = decode_sse_items(item)
                if deltas:
                    started = True
                    yield deltas
        except _UNAVAILABLE as exc:
            unavailable = f"model replica unavailable: {type(exc).__name__}"
            raise ProviderError(self.name, unavailable, recovering=True) from exc
        except EngineError as exc:
            raise ProviderError(self.name, f"engine error: {exc.message}", recovering=True) from exc
        except InvalidRequest:
            raise  # the request's own fault: no other attempt will do better
        except Exception as exc:  # the engine died under the replica (EngineDeadError), or any other engine fault
            cause = unwrap(exc)
            failure = _adapter_load_failure(exc) if model in self._adapters and not started else None
            if failure is not None:
                # The adapter cannot be loaded (bad weights, a rank over max_lora_rank, gone from storage): no
                # replica will do better. The request fails at once; the base model's breaker is not charged.
                logger.warning("LoRA adapter %s could not be loaded: %s", engine_model, failure)
                raise ServiceUnavailable(
                    f"LoRA adapter {model!r} could not be loaded by the engine; see the server log",
                    code="adapter_unavailable",
                ) from exc
            raise ProviderError(self.name, f"engine failed: {type(cause).__name__}", recovering=True) from exc

    def health_checks(self, skip: set[str] = frozenset()) -> dict[str, Any]:
        """The model's check under its health name, unless the model is in `skip` (it may have scaled to zero: a
        call would wake it)."""
        return {} if self.model in skip else {self._health_name: self.check_health()}

    async def check_health(self) -> None:
        try:
            await self._handle.check_health.remote()
        except _UNAVAILABLE as exc:
            raise ServiceUnavailable(f"model replica unavailable: {type(exc).__name__}") from exc

    async def aclose(self) -> None:
        if self._waking is not None:
            self._waking.cancel()


def running_replicas(handle: DeploymentHandle) -> int | None:
    """How many replicas the handle can send to, from the running-replica list Serve's controller pushes to it;
    None before the handle has heard (or if Ray's router no longer has these internals)."""
    router = getattr(getattr(handle, "_router", None), "_asyncio_router", None)
    if router is None:
        return None
    try:
        request_router = getattr(router, "_request_router", None)
        if request_router is not None:
            return len(request_router.curr_replicas)
        replicas = getattr(router, "_running_replicas", None)
        return None if replicas is None else len(replicas)
    except (AttributeError, TypeError):  # Ray's internals changed: unknown, so never taken for cold
        return None
