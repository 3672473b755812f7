"""Orchestrator deployment: the stages of a turn, independent of HTTP, for the tenant the caller acts for.

    prepare  validate the request, load the conversation and retrieve context (together), build the prompt
             within the context window, fix the generation parameters
    stream   route to the providers and turn their deltas into chat chunks; the turn is committed to the
             conversation the moment the answer is whole, before its last chunk leaves
    finish   count usage and cost per provider, record metrics (Prometheus, W&B)

It takes and yields the typed models of core/models.py and raises our typed errors. Its stream yields *lists*
of chunks, one list per engine item, so chunks that arrive together cross the Ray hop as one item (the number
of items per hop, not their size, is what costs).
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
from redis.exceptions import RedisError

from core.errors import NotFound, ServiceUnavailable
from core.models import (
    Caller,
    ChatChunk,
    ChatMessage,
    ChatRequest,
    ChatResponse,
    Choice,
    ChunkChoice,
    Citation,
    ConversationMessages,
    Delta,
    Usage,
    new_id,
)
from core.names import SHARED_PREFIX, is_shared, validate_collection_name
from core.setting_groups import (
    EngineSettings,
    LimitsSettings,
    MetricsSettings,
    PricingSettings,
    RagSettings,
    RoutingSettings,
    StateSettings,
)
from core.tokens import TokenCounter, resolve_max_tokens
from deployments.handles import configured
from deployments.prompt import build_prompt, retrieval_query
from deployments.providers.base import EngineDelta, GenerationParams
from deployments.providers.factory import build_providers, build_router
from deployments.providers.router import RoutedStream
from deployments.run_metrics import Timing, export_prometheus, wandb_record
from observability.wandb_sink import MetricsSink
from state.conversations import ConversationStore
from state.provider_usage import ProviderUsage
from state.rag_grants import SharedGrants
from state.redis_client import async_redis

logger = logging.getLogger("llmserve.orchestrator")


@dataclass
class Turn:
    """One request on its way through the stages: what prepare decided, what stream produced."""

    request: ChatRequest
    caller: Caller
    chunk_id: str
    run_id: str  # ours, unique: the engine's request id and the turn's commit key
    conversation_id: str | None
    citations: list[Citation]
    prompt: list[dict[str, str]]
    params: GenerationParams
    timing: Timing
    created: int = field(default_factory=lambda: int(time.time()))
    routed: RoutedStream = field(default_factory=RoutedStream)
    answer: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    committed: bool = False

    def chunk(self, **fields) -> ChatChunk:
        return ChatChunk(id=self.chunk_id, created=self.created, model=self.request.model, **fields)


@serve.deployment(name="Orchestrator")
class Orchestrator:
    """`model_source`: what vLLM loads (its tokenizer counts tokens here); `served_models`: the model names
    clients may ask for; `self_hosted_slots`: requests this replica keeps on the self-hosted replicas before
    they queue."""

    def __init__(
        self,
        llm: DeploymentHandle,
        retriever: DeploymentHandle,
        *,
        engine: EngineSettings,
        limits: LimitsSettings,
        state: StateSettings,
        rag: RagSettings,
        routing: RoutingSettings,
        pricing: PricingSettings,
        metrics: MetricsSettings,
        model_source: str,
        served_models: list[str],
        self_hosted_slots: int,
        grpc: bool = True,
    ):
        if not state.redis_url:
            raise ValueError("state.redis_url is required (llmserve up starts an embedded Redis when none is set)")
        self._engine = engine
        self._limits = limits
        self._state = state
        self._rag = rag
        self._served = set(served_models)
        self._retriever = configured(retriever, grpc)
        self._redis = async_redis(state.redis_url)
        self._tokens = TokenCounter.for_model(model_source)
        self._providers = build_providers(routing, pricing, engine.model_name, configured(llm, grpc))
        self._router = build_router(
            routing, self._providers, self._redis, state.redis_prefix, self_hosted_slots, self._tokens
        )
        self._provider_usage = ProviderUsage(self._redis, state.redis_prefix)
        self._pending: set[asyncio.Task] = set()
        self._conversations = ConversationStore(
            self._redis,
            state.redis_prefix,
            state.conversation_ttl_s,
            state.conversation_max_messages,
            state.conversation_max_bytes,
        )
        self._grants = SharedGrants(self._redis, state.redis_prefix)
        replica = serve.get_replica_context().replica_tag if _in_serve() else f"local-{os.getpid()}"
        self._metrics = MetricsSink.for_settings(
            metrics, run_name=f"orchestrator-{replica}", config={"model": engine.model_name, "replica": replica}
        )

    def __del__(self):
        metrics = getattr(self, "_metrics", None)
        if metrics is not None:
            metrics.close(timeout_s=10)

    # --- public methods (called through the handle) -------------------------------------------------
    async def chat_stream(self, request: ChatRequest, caller: Caller) -> AsyncIterator[list[ChatChunk]]:
        async for chunks in self._run(request, caller):
            yield chunks

    async def chat(self, request: ChatRequest, caller: Caller) -> ChatResponse:
        """The whole answer, folded from the same stream (one code path for both modes)."""
        text, finish, usage, head, tail = [], None, Usage(), None, None
        async for chunks in self._run(request.model_copy(update={"stream": False}), caller):
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

    async def conversation(self, conversation_id: str, caller: Caller) -> ConversationMessages:
        messages = await self._conversations.history(caller.tenant, conversation_id)
        if not messages:
            raise NotFound(f"conversation {conversation_id!r} not found", param="conversation_id")
        return ConversationMessages(id=conversation_id, messages=messages)

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

    # --- the stages of a turn -----------------------------------------------------------------------
    async def _run(self, request: ChatRequest, caller: Caller) -> AsyncIterator[list[ChatChunk]]:
        turn = await self._prepare(request, caller)
        status = "error"
        try:
            async for chunks in self._stream(turn):
                yield chunks
            status = "ok"
        except asyncio.CancelledError:
            status = "cancelled"
            raise
        finally:
            self._finish(turn, status)

    async def _prepare(self, request: ChatRequest, caller: Caller) -> Turn:
        timing = Timing()
        if request.model not in self._served:
            raise NotFound(f"model {request.model!r} does not exist; try {self._engine.model_name!r}", param="model")
        max_tokens = resolve_max_tokens(request.max_tokens, self._limits)
        history, citations = await asyncio.gather(
            self._history(request, caller), self._retrieve(request, caller, timing)
        )
        prompt = build_prompt(
            history,
            request.messages,
            citations,
            max_model_len=self._engine.max_model_len,
            max_tokens=max_tokens,
            tokens=self._tokens,
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
        # The request id may be the client's x-request-id, so it only labels (chunk ids, logs).
        return Turn(
            request=request,
            caller=caller,
            chunk_id=f"chatcmpl-{request.request_id or new_id('req')}",
            run_id=new_id("run"),
            conversation_id=request.conversation_id,
            citations=citations,
            prompt=prompt,
            params=params,
            timing=timing,
        )

    async def _stream(self, turn: Turn) -> AsyncIterator[list[ChatChunk]]:
        first = True
        async for deltas in self._router.stream(turn.request.model, turn.prompt, turn.params, turn.run_id, turn.routed):
            out: list[ChatChunk] = []
            if first:
                turn.timing.first_token = time.perf_counter()
                out.append(
                    turn.chunk(
                        choices=[ChunkChoice(delta=Delta(role="assistant", content=""))],
                        conversation_id=turn.conversation_id,
                        citations=turn.citations,
                        provider=turn.routed.providers[0],
                    )
                )
                first = False
            out.extend(self._answer_chunks(turn, deltas))
            if turn.finish_reason is not None:
                # Commit before the last chunks leave: once the client has the whole answer, so does Redis.
                await self._commit(turn)
            if out:
                yield out
        if first:
            raise ServiceUnavailable("the engine ended the stream without output")
        if turn.request.include_usage or not turn.request.stream:
            routed = turn.routed
            yield [turn.chunk(usage=routed.usage(), provider="+".join(routed.providers), cost_usd=routed.cost_usd)]

    @staticmethod
    def _answer_chunks(turn: Turn, deltas: list[EngineDelta]) -> list[ChatChunk]:
        out = []
        for d in deltas:
            if d.text or d.finish_reason:
                turn.answer.append(d.text)
                turn.finish_reason = d.finish_reason or turn.finish_reason
                choice = ChunkChoice(delta=Delta(content=d.text or None), finish_reason=d.finish_reason)
                out.append(turn.chunk(choices=[choice]))
        return out

    async def _commit(self, turn: Turn) -> None:
        """The request's new messages and the whole answer, appended to the conversation once."""
        if turn.conversation_id is None or turn.committed:
            return
        new_turn = [*turn.request.messages, ChatMessage(role="assistant", content="".join(turn.answer))]
        await self._conversations.commit_turn(turn.caller.tenant, turn.conversation_id, turn.run_id, new_turn)
        turn.committed = True

    def _finish(self, turn: Turn, status: str) -> None:
        """Usage per provider (Redis, off the request path) and the request's metrics."""
        task = asyncio.ensure_future(self._count_provider_usage(turn.routed))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        end = time.perf_counter()
        export_prometheus(turn.timing, turn.routed, end, status)
        self._metrics.record(
            wandb_record(turn.timing, turn.routed, end, status, len(turn.citations), turn.request.stream)
        )

    # --- prepare's parts ----------------------------------------------------------------------------
    async def _history(self, request: ChatRequest, caller: Caller) -> list[ChatMessage]:
        if not request.conversation_id:
            return []
        return await self._conversations.history(
            caller.tenant, request.conversation_id, self._state.history_max_messages
        )

    async def _retrieve(self, request: ChatRequest, caller: Caller, timing: Timing) -> list[Citation]:
        """Chunks from what the caller may read: its tenant's own collections, or a shared one granted to it."""
        options = request.rag
        enabled = options.enabled if options is not None else self._rag.enabled
        query = retrieval_query(request.messages)
        if not enabled or query is None:
            return []
        collection = validate_collection_name(options.collection) if options and options.collection else None
        shared = collection is not None and is_shared(collection) and not caller.admin
        if shared and not await self._grants.may_read(caller.tenant, collection[len(SHARED_PREFIX) :]):
            raise NotFound(f"RAG collection {collection!r} does not exist", param="rag.collection")
        t0 = time.perf_counter()
        try:
            return await self._retriever.retrieve.remote(
                query,
                caller.tenant,
                collection,
                (options.top_k if options and options.top_k else None) or self._rag.top_k,
                options.min_score if options and options.min_score is not None else self._rag.min_score,
            )
        finally:
            timing.retrieval_s = time.perf_counter() - t0

    # --- finish's parts -----------------------------------------------------------------------------
    async def _count_provider_usage(self, routed: RoutedStream) -> None:
        """Per-provider counters in Redis (for `llmserve cost`), off the request path; best effort."""
        try:
            for leg in routed.legs:
                usage = leg.usage or Usage()
                await self._provider_usage.add(
                    leg.provider,
                    requests=1,
                    prompt_tokens=usage.prompt_tokens,
                    completion_tokens=usage.completion_tokens,
                    cost_usd=leg.cost_usd,
                )
            for name, count in routed.failed.items():
                await self._provider_usage.add(name, failures=count)
            for name, seconds in self._router.stats.take_busy_seconds().items():
                await self._provider_usage.add(name, busy_s=seconds)
        except RedisError as exc:
            logger.warning("provider usage not counted: %r", exc)


async def _awaitable(value):
    return await value


def _in_serve() -> bool:
    try:
        serve.get_replica_context()
        return True
    except Exception:
        return False
