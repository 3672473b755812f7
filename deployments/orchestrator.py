"""Orchestrator deployment: conversation state, retrieval, prompt, engine streaming, turn commit, metrics.

Independent of HTTP: it takes and yields the typed models of serve_app.models and raises our typed errors.
Its stream yields *lists* of chunks, one list per engine item, so chunks that arrive together cross the
Ray hop as one item (the number of items per hop, not their size, is what costs).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.handles import configured
from deployments.prompt import build_prompt, retrieval_query
from deployments.providers.base import GenerationParams
from deployments.providers.factory import build_providers, build_router
from deployments.providers.router import RoutedStream
from observability import prom
from observability.wandb_sink import MetricsSink
from serve_app.errors import InvalidRequest, NotFound, ServiceUnavailable
from serve_app.models import (
    ChatChunk,
    ChatMessage,
    ChatRequest,
    ChatResponse,
    Choice,
    ChunkChoice,
    Citation,
    ConversationMessages,
    Delta,
    IngestRequest,
    IngestResponse,
    Usage,
    new_id,
)
from serve_app.settings import Settings
from state.conversations import ConversationStore
from state.provider_usage import ProviderUsage
from state.redis_client import async_redis

logger = logging.getLogger("llmserve.orchestrator")


@dataclass
class _Timing:
    start: float = field(default_factory=time.perf_counter)
    retrieval_s: float = 0.0
    prompt_done: float | None = None
    first_token: float | None = None


@serve.deployment(name="Orchestrator")
class Orchestrator:
    def __init__(self, settings: Settings, llm: DeploymentHandle, retriever: DeploymentHandle):
        if not settings.redis_url:
            raise ValueError("redis_url is required (llmserve up starts an embedded Redis when none is set)")
        self._settings = settings
        self._retriever = configured(retriever, settings)
        self._redis = async_redis(settings.redis_url)
        self._providers = build_providers(settings, configured(llm, settings))
        self._router = build_router(settings, self._providers, self._redis)
        self._provider_usage = ProviderUsage(self._redis, settings.redis_prefix)
        self._pending: set[asyncio.Task] = set()
        self._conversations = ConversationStore(self._redis, settings.redis_prefix, settings.conversation_ttl_s)
        replica = serve.get_replica_context().replica_tag if _in_serve() else f"local-{os.getpid()}"
        self._metrics = MetricsSink(
            mode=settings.resolved_wandb_mode(),
            project=settings.wandb_project,
            directory=settings.wandb_dir,
            run_name=f"orchestrator-{replica}",
            group=settings.app_name,
            flush_interval_s=settings.metrics_flush_interval_s,
            config={"model": settings.model_name, "replica": replica},
        )

    def __del__(self):
        metrics = getattr(self, "_metrics", None)
        if metrics is not None:
            metrics.close(timeout_s=10)

    # --- public methods (called through the handle) -------------------------------------------------
    async def chat_stream(self, request: ChatRequest) -> AsyncIterator[list[ChatChunk]]:
        async for chunks in self._run(request):
            yield chunks

    async def chat(self, request: ChatRequest) -> ChatResponse:
        text, finish, usage, head, tail = [], None, Usage(), None, None
        async for chunks in self._run(request.model_copy(update={"stream": False})):
            for chunk in chunks:
                head = head or chunk
                for choice in chunk.choices:
                    text.append(choice.delta.content or "")
                    finish = choice.finish_reason or finish
                if chunk.usage is not None:
                    usage, tail = chunk.usage, chunk
        assert head is not None  # _run always yields a first chunk or raises
        return ChatResponse(
            id=head.id,
            created=head.created,
            model=head.model,
            choices=[Choice(message=ChatMessage(role="assistant", content="".join(text)), finish_reason=finish)],
            usage=usage,
            conversation_id=request.conversation_id,
            citations=head.citations or [],
            provider=tail.provider if tail else head.provider,
            cost_usd=tail.cost_usd if tail else None,
        )

    async def conversation(self, conversation_id: str) -> ConversationMessages:
        if not await self._conversations.exists(conversation_id):
            raise NotFound(f"conversation {conversation_id!r} not found", param="conversation_id")
        messages = await self._conversations.history(conversation_id)
        return ConversationMessages(id=conversation_id, messages=messages)

    async def ingest(self, request: IngestRequest) -> IngestResponse:
        return await self._retriever.ingest.remote(request)

    async def health(self) -> dict[str, str]:
        """Each dependency really checked: Redis PING, Chroma heartbeat, the engine's own health check."""
        checks = {"redis": self._redis.ping(), "chroma": self._retriever.health.remote()}
        for provider in self._providers:
            if provider.kind == "self_hosted":  # managed providers are watched by their circuit breakers
                checks["engine"] = provider.check_health()
        results = await asyncio.gather(
            *(asyncio.wait_for(_awaitable(c), timeout=5) for c in checks.values()), return_exceptions=True
        )
        return {
            name: "ok" if not isinstance(r, BaseException) else f"error: {type(r).__name__}: {r}"[:300]
            for name, r in zip(checks, results, strict=True)
        }

    async def flush_metrics(self) -> bool:
        return await asyncio.to_thread(self._metrics.flush)

    # --- the request path ---------------------------------------------------------------------------
    def _max_tokens(self, request: ChatRequest) -> int:
        if request.max_tokens is None:
            return self._settings.default_max_tokens
        if request.max_tokens > self._settings.max_tokens_cap:
            raise InvalidRequest(
                f"max_tokens {request.max_tokens} exceeds this server's limit of {self._settings.max_tokens_cap}",
                param="max_tokens",
            )
        return request.max_tokens

    async def _retrieve(self, request: ChatRequest) -> list[Citation]:
        options = request.rag
        enabled = options.enabled if options is not None else self._settings.rag_enabled
        query = retrieval_query(request.messages)
        if not enabled or query is None:
            return []
        return await self._retriever.retrieve.remote(
            query,
            options.collection if options else None,
            (options.top_k if options and options.top_k else None) or self._settings.rag_top_k,
            options.min_score if options and options.min_score is not None else self._settings.rag_min_score,
        )

    async def _run(self, request: ChatRequest) -> AsyncIterator[list[ChatChunk]]:
        timing = _Timing()
        if request.model not in self._settings.served_models():
            raise NotFound(f"model {request.model!r} does not exist; try {self._settings.model_name!r}", param="model")
        max_tokens = self._max_tokens(request)
        request_id = request.request_id or new_id("req")
        # The request id may be the client's x-request-id, so it only labels (chunk ids, logs). What must be
        # unique (the engine's request id, the turn's commit key) gets an id of our own.
        run_id = new_id("run")
        conversation_id = request.conversation_id
        history_task = (
            self._conversations.history(conversation_id, self._settings.history_max_messages)
            if conversation_id
            else _empty()
        )
        try:
            history, citations = await asyncio.gather(history_task, self._retrieve_timed(request, timing))
        except (ConnectionError, OSError) as exc:
            raise ServiceUnavailable(f"state store unavailable: {exc}") from exc
        prompt = build_prompt(
            history,
            request.messages,
            citations,
            max_model_len=self._settings.max_model_len,
            max_tokens=max_tokens,
        )
        timing.prompt_done = time.perf_counter()
        params = GenerationParams(
            max_tokens=max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=request.stop,
            seed=request.seed,
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
        )
        chunk_id, created = f"chatcmpl-{request_id}", int(time.time())
        model = request.model

        def chunk(**kwargs) -> ChatChunk:
            return ChatChunk(id=chunk_id, created=created, model=model, **kwargs)

        answer: list[str] = []
        routed = RoutedStream()
        finish: str | None = None
        status = "error"
        try:
            first = True
            async for deltas in self._router.stream(model, prompt, params, run_id, routed):
                out: list[ChatChunk] = []
                if first:
                    timing.first_token = time.perf_counter()
                    out.append(
                        chunk(
                            choices=[ChunkChoice(delta=Delta(role="assistant", content=""))],
                            conversation_id=conversation_id,
                            citations=citations,
                            provider=routed.providers[0],
                        )
                    )
                    first = False
                for d in deltas:
                    if d.text or d.finish_reason:
                        answer.append(d.text)
                        finish = d.finish_reason or finish
                        out.append(
                            chunk(
                                choices=[
                                    ChunkChoice(delta=Delta(content=d.text or None), finish_reason=d.finish_reason)
                                ]
                            )
                        )
                if finish is not None and conversation_id:
                    # Commit before the last chunks leave: once the client has the whole answer, so does Redis.
                    new_turn = [*request.messages, ChatMessage(role="assistant", content="".join(answer))]
                    await self._conversations.commit_turn(conversation_id, run_id, new_turn)
                    conversation_id = None  # committed once
                if out:
                    yield out
            if first:
                raise ServiceUnavailable("the engine ended the stream without output")
            if request.include_usage or not request.stream:
                yield [chunk(usage=routed.usage(), provider="+".join(routed.providers), cost_usd=routed.cost_usd)]
            status = "ok"
        except asyncio.CancelledError:
            status = "cancelled"
            raise
        finally:
            self._record(timing, routed, len(citations), request.stream, status)

    async def _retrieve_timed(self, request: ChatRequest, timing: _Timing) -> list[Citation]:
        t0 = time.perf_counter()
        try:
            return await self._retrieve(request)
        finally:
            timing.retrieval_s = time.perf_counter() - t0

    def _record(self, timing: _Timing, routed: RoutedStream, rag_chunks: int, stream: bool, status: str) -> None:
        task = asyncio.ensure_future(self._count_provider_usage(routed))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        usage = routed.usage()
        end = time.perf_counter()
        e2e = end - timing.start
        ttft = (timing.first_token - timing.start) if timing.first_token else None
        decode_s = (end - timing.first_token) if timing.first_token else 0.0
        self._export(timing, routed, usage, end, status)
        self._metrics.record(
            {
                "ttft_s": ttft,
                "e2e_latency_s": e2e,
                "retrieval_s": timing.retrieval_s,
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "tokens_per_s": usage.completion_tokens / e2e if e2e > 0 else 0.0,
                "decode_tokens_per_s": (usage.completion_tokens - 1) / decode_s if decode_s > 0 else 0.0,
                "rag_chunks": rag_chunks,
                "stream": int(stream),
                "ok": int(status == "ok"),
                "status": status,
                "provider": "+".join(routed.providers),
                "failovers": len(routed.failures),
                "cost_usd": routed.cost_usd,
            }
        )

    @staticmethod
    def _export(timing: _Timing, routed: RoutedStream, usage: Usage, end: float, status: str) -> None:
        """Prometheus (through Ray's metrics agent): latencies, stages, tokens, outcomes, cost."""
        provider = "+".join(routed.providers) or "none"
        prom.inc("llmserve_requests_total", provider=provider, status=status)
        prom.observe("llmserve_e2e_seconds", end - timing.start, provider=provider, status=status)
        prom.observe("llmserve_stage_seconds", timing.retrieval_s, stage="retrieval")
        if timing.prompt_done is not None:
            prom.observe(
                "llmserve_stage_seconds", timing.prompt_done - timing.start - timing.retrieval_s, stage="prompt"
            )
        if timing.first_token is not None:
            prom.observe("llmserve_ttft_seconds", timing.first_token - timing.start, provider=provider)
            if timing.prompt_done is not None:
                prom.observe("llmserve_stage_seconds", timing.first_token - timing.prompt_done, stage="queue")
            prom.observe("llmserve_stage_seconds", end - timing.first_token, stage="decode")
            if usage.completion_tokens > 1:
                tpot = (end - timing.first_token) / (usage.completion_tokens - 1)
                prom.observe("llmserve_tpot_seconds", tpot, provider=provider)
        prom.inc("llmserve_tokens_total", usage.prompt_tokens, provider=provider, kind="prompt")
        prom.inc("llmserve_tokens_total", usage.completion_tokens, provider=provider, kind="completion")
        for leg in routed.legs:
            prom.inc("llmserve_cost_usd_total", leg.cost_usd, provider=leg.provider)
        for name, count in routed.failed.items():
            prom.inc("llmserve_failovers_total", count, provider=name)

    async def _count_provider_usage(self, routed: RoutedStream) -> None:
        """Per-provider counters in Redis (for `llmserve cost`), off the request path; best effort."""
        try:
            for leg in routed.legs:
                usage = leg.usage
                await self._provider_usage.add(
                    leg.provider,
                    requests=1,
                    prompt_tokens=usage.prompt_tokens if usage else 0,
                    completion_tokens=usage.completion_tokens if usage else leg.deltas,
                    cost_usd=leg.cost_usd,
                )
            for name, count in routed.failed.items():
                await self._provider_usage.add(name, failures=count)
            for name, seconds in self._router.stats.take_busy_seconds().items():
                await self._provider_usage.add(name, busy_s=seconds)
        except (ConnectionError, OSError) as exc:
            logger.warning("provider usage not counted: %r", exc)


async def _empty() -> list:
    return []


async def _awaitable(value):
    return await value


def _in_serve() -> bool:
    try:
        serve.get_replica_context()
        return True
    except Exception:
        return False
