"""Orchestrator deployment: the stages of a turn, independent of HTTP, for the tenant the caller acts for.

    prepare  validate the request, load the conversation and retrieve context (together), build the prompt
             within the context window, fix the generation parameters
    stream   an AnswerRun (deployments/answer_run.py) routes to the providers and journals every chunk before
             it leaves; the turn is committed the moment the answer is whole, before its last chunk leaves
    finish   the run settles the reservation with the exact usage; metrics and provider usage are counted here

Runs are detached from the calls that follow them: a caller that goes away leaves the answer running, and a
caller that comes back (`after_seq`), on this replica or another, gets exactly the events it missed. When a run's
replica died, the next call for it takes it over from the journal (`take_over`).

It takes and yields the typed models of core/models.py and raises our typed errors. Its stream yields *lists* of
(sequence number, chunk JSON, is-usage) (deployments/frames.py): chunks journaled together cross the hop as one
item (the number of items per hop, not their size, is what costs), each serialised once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from redis.exceptions import RedisError

from core.errors import NotFound, ServiceUnavailable
from core.models import Caller, ChatChunk, ChatMessage, ChatRequest, ChatResponse, Citation, ConversationMessages
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
from deployments.answer_run import AnswerRun, Fenced
from deployments.answer_turn import RunServices, Turn
from deployments.answers import fold
from deployments.console_samples import record_request_sample
from deployments.frames import Wire, to_wire
from deployments.handles import configured, pace_streams
from deployments.prompt import build_prompt, generation_params, retrieval_query
from deployments.providers.factory import build_providers, build_router
from deployments.providers.router import RoutedStream
from deployments.run_metrics import Timing, end_trace, export_prometheus, wandb_record
from observability import tracing
from observability.wandb_runs import sink_for
from state.conversations import ConversationStore
from state.journal import Event, Journal
from state.limits import Limiter
from state.outage import retry_through_outage
from state.provider_usage import ProviderUsage
from state.rag_grants import SharedGrants
from state.redis_client import async_redis
from state.response_cache import ResponseCache, cache_key, cacheable
from state.scaling_signals import ScalingSignals

logger = logging.getLogger("llmserve.orchestrator")


@serve.deployment(name="Orchestrator")
class Orchestrator:
    """`llms`: each self-hosted model's LLMServer deployment, by model name; `engines`: their settings (the
    primary model's first); `model_sources`: what vLLM loads for each (its tokenizer counts that model's tokens
    here); `served_models`: the model names clients may ask for; `self_hosted_slots`: requests this replica
    keeps on the self-hosted replicas before they queue; `stream_window_bytes`: server.stream_window_bytes."""

    def __init__(
        self,
        llms: dict[str, DeploymentHandle],
        retriever: DeploymentHandle,
        *,
        engines: list[EngineSettings],
        limits: LimitsSettings,
        state: StateSettings,
        rag: RagSettings,
        routing: RoutingSettings,
        pricing: PricingSettings,
        metrics: MetricsSettings,
        model_sources: dict[str, str],
        served_models: list[str],
        self_hosted_slots: int | dict[str, int],
        grpc: bool = True,
        stream_window_bytes: int = 0,
    ):
        if not state.redis_url:
            raise ValueError("state.redis_url is required (llmserve up starts an embedded Redis when none is set)")
        tracing.setup_tracing("orchestrator", metrics.otlp_endpoint)
        if grpc:  # the engines' streams run at most this far ahead of this replica (deployments/handles.py)
            pace_streams(stream_window_bytes)
        engine = self._engine = engines[0]
        # Each self-hosted model's settings and token counter, under its name and its adapters' names.
        self._engines = {name: e for e in engines for name in (e.model_name, *e.adapters())}
        counters = {e.model_name: TokenCounter.for_model(model_sources[e.model_name]) for e in engines}
        self._counters = {name: counters[e.model_name] for name, e in self._engines.items()}
        self._may_sleep = {e.model_name for e in engines if e.min_replicas == 0}  # /healthz would wake them
        # Models under the scale-or-spill controller: each name a client may send -> the deployment's model.
        self._scaled = {name: e.model_name for name, e in self._engines.items() if e.autoscaling == "scale_or_spill"}
        tokens = counters[engine.model_name]
        self._limits = limits
        self._state = state
        self._rag = rag
        self._served = set(served_models)
        self._retriever = configured(retriever, grpc)
        self._redis = async_redis(state.redis_url)
        handles = {name: configured(handle, grpc) for name, handle in llms.items()}
        adapters = {alias: engine_id for e in engines for alias, engine_id in e.adapters().items()}
        self._providers = build_providers(routing, pricing, handles, adapters)
        self._router = build_router(
            routing, self._providers, self._redis, state.redis_prefix, self_hosted_slots, tokens
        )
        self._provider_usage = ProviderUsage(self._redis, state.redis_prefix)
        self._own = {p.name for p in self._providers if p.kind == "self_hosted"}
        self._signals = ScalingSignals(self._redis, state.redis_prefix)
        if self._scaled:
            self._follower = asyncio.get_event_loop().create_task(self._follow_decisions())
        self._pending: set[asyncio.Task] = set()
        self._conversations = ConversationStore(
            self._redis,
            state.redis_prefix,
            state.conversation_ttl_s,
            state.conversation_max_messages,
            state.conversation_max_bytes,
        )
        self._grants = SharedGrants(self._redis, state.redis_prefix)
        self._journal = Journal(self._redis, state.redis_prefix, state.journal_ttl_s)
        self._services = RunServices(
            router=self._router,
            journal=self._journal,
            conversations=self._conversations,
            limiter=Limiter(self._redis, state.redis_prefix, lease_s=limits.request_lease_s),
            tokens=tokens,
            finished=self._finished,
            grace_s=state.answer_grace_s,
            retry_s=routing.request_deadline_s,
            coalesce_s=state.journal_coalesce_ms / 1000,
            cache=ResponseCache(self._redis, state.redis_prefix, state.response_cache_ttl_s),
            hit_cost=state.response_cache_hit_cost,
        )
        self._tokens = tokens
        self._runs: dict[str, AnswerRun] = {}
        self._metrics = sink_for(metrics, "orchestrator", config={"model": engine.model_name})

    def __del__(self):
        metrics = getattr(self, "_metrics", None)
        if metrics is not None:
            metrics.close(timeout_s=10)

    # --- public methods (called through the handle) -------------------------------------------------
    async def chat_stream(
        self, request: ChatRequest, caller: Caller, after_seq: int = 0, take_over: bool = False
    ) -> AsyncIterator[Wire]:
        """The answer's events after `after_seq`: a new run, or one under way here, journaled elsewhere, or
        taken over from a journal whose writer is gone (`take_over`: the caller saw it die)."""
        async for events in self._events(request, caller, after_seq, take_over):
            yield to_wire(events)

    async def chat(self, request: ChatRequest, caller: Caller) -> ChatResponse:
        """The whole answer, folded from the same stream (one code path for both modes)."""
        events = await _collect(self._events(request.model_copy(update={"stream": False}), caller))
        return fold([ChatChunk.model_validate(e.chunk) for e in events], request.conversation_id)

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
                checks.update(provider.health_checks(skip=self._may_sleep))
        results = await asyncio.gather(
            *(asyncio.wait_for(_awaitable(c), timeout=5) for c in checks.values()), return_exceptions=True
        )
        return {
            name: "ok" if not isinstance(r, BaseException) else f"error: {type(r).__name__}: {r}"[:300]
            for name, r in zip(checks, results, strict=True)
        }

    async def flush_metrics(self) -> bool:
        return await asyncio.to_thread(self._metrics.flush)

    async def _follow_decisions(self, every_s: float = 2.0) -> None:
        """The scale-or-spill controller's share to spill, per model, for the router (routing.strategy:
        scale_or_spill); the last known share holds while Redis does not answer."""
        spill = self._router.stats.spill_fraction
        while True:
            for deployment in set(self._scaled.values()):  # one read per model, for all its names
                try:
                    share = await self._signals.spill_fraction(deployment)
                except RedisError as exc:
                    logger.debug("scale-or-spill decision not read: %r", exc)
                    continue
                spill.update({name: share for name, d in self._scaled.items() if d == deployment})
            await asyncio.sleep(every_s)

    # --- runs ---------------------------------------------------------------------------------------
    async def _events(
        self, request: ChatRequest, caller: Caller, after_seq: int = 0, take_over: bool = False
    ) -> AsyncIterator[list[Event]]:
        """The answer's events after `after_seq`. A new answer first yields an empty list: it has begun (its run
        owns the caller's reservation from then on)."""
        response_id = caller.response_id
        look = not (caller.unjournaled and not after_seq and not take_over)  # a new id: no journal to read yet
        while True:
            run = self._runs.get(response_id)
            if run is not None:
                self._release_spare(caller, run.turn.caller)
                try:
                    async for events in run.follow(after_seq):
                        after_seq = events[-1].seq
                        yield events
                    return
                except Fenced:  # another replica continues it: follow the journal
                    self._forget(run)
                    continue
            meta = await self._journal.meta(caller.tenant, response_id) if caller.journal and look else None
            fresh, look = not look, True  # from here on (another call opened it first, or its writer went quiet)
            if meta is None:
                if after_seq:
                    raise ServiceUnavailable(f"answer {response_id} was lost before it was journaled; retry it")
                turn = await self._traced_prepare(request, caller)
                if fresh and caller.journal:  # the run opens it while the engine is asked: a round trip fewer
                    record, owner = turn.record(), caller.model_dump(exclude={"unjournaled"})
                    opening = functools.partial(self._journal.open, caller.tenant, response_id, record, owner)
                    run = AnswerRun(turn, self._services, opening=opening)
                    self._start(run)
                    try:  # begun (the reservation is the run's) once its journal is open, as below
                        opened = await run.opened()
                    except asyncio.CancelledError:  # the caller left: the run goes on (once open, it is the
                        run.unattended()  # run's to settle), and stops after its grace unless someone resumes it
                        raise
                    except Exception:  # the run stops, having written nothing; this request settles
                        self._forget(run, stop=True)
                        raise
                    if not opened:  # another call opened it first: follow that
                        self._forget(run, stop=True)
                        continue
                    yield []
                    continue
                try:
                    opened = not caller.journal or await self._journal.open(
                        caller.tenant, response_id, turn.record(), caller.model_dump(exclude={"unjournaled"})
                    )
                except BaseException as exc:  # Redis, or the caller went away: no run ends the span
                    tracing.end(turn.timing.span, exc)
                    raise
                if not opened:
                    tracing.end(turn.timing.span, status="followed")  # another call's run answers it
                    continue  # another call opened it first (a retry racing its first attempt): follow that
                self._start(AnswerRun(turn, self._services))
                yield []
                continue
            self._release_spare(caller, Caller.model_validate(meta["caller"]))
            status, epoch = await self._journal.take_over(caller.tenant, response_id, force=take_over)
            if status == "taken":  # its writer is gone: continue it here, from what it journaled
                prefix = await self._journal.events(caller.tenant, response_id)
                turn = Turn.from_record(meta["request"], Caller.model_validate(meta["caller"]), response_id)
                turn.timing.span = _answer_span("answer.takeover", turn.caller, turn.request.model, epoch=epoch)
                self._start(AnswerRun(turn, self._services, epoch=epoch, prefix=prefix))
                take_over = False
                continue
            async for events in self._journal.follow(caller.tenant, response_id, after_seq):
                after_seq = events[-1].seq
                yield events
            final = await self._journal.meta(caller.tenant, response_id)
            if final is None or final["status"] == "running":
                continue  # the writer went quiet: take it over
            if final["status"] != "completed":
                raise ServiceUnavailable(f"answer {response_id} {final['status']}: {final['error'].get('message', '')}")
            return

    def _forget(self, run: AnswerRun, stop: bool = False) -> None:
        if self._runs.get(run.response_id) is run:
            del self._runs[run.response_id]
        if stop:
            run.stop()

    def _release_spare(self, caller: Caller, owner: Caller) -> None:
        """A call that follows an answer another call started (an Idempotency-Key retry) made a reservation of
        its own that no run settles: give it back, as nothing."""
        if not caller.reservation_id or caller.reservation_id == owner.reservation_id:
            return
        limiter, rid = self._services.limiter, caller.reservation_id
        settle = lambda: limiter.settle(caller.tenant, caller.key_id, rid, 0, 0, 0.0)  # noqa: E731
        task = asyncio.ensure_future(retry_through_outage(settle, self._services.retry_s))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _start(self, run: AnswerRun) -> None:
        self._runs[run.response_id] = run
        with tracing.current(run.turn.timing.span):  # its provider attempts are the answer span's children
            run.start(on_done=self._forget)

    async def _traced_prepare(self, request: ChatRequest, caller: Caller) -> Turn:
        """`_prepare` under the answer's span (a child of the caller's traceparent); the span stays open until
        the answer finishes (`_finished`)."""
        span = _answer_span("answer", caller, request.model)
        try:
            with tracing.current(span):
                turn = await self._prepare(request, caller)
        except BaseException as exc:
            tracing.end(span, exc)
            raise
        turn.timing.span = span
        return turn

    async def _prepare(self, request: ChatRequest, caller: Caller) -> Turn:
        timing = Timing()
        if request.model not in self._served:
            raise NotFound(
                f"model {request.model!r} does not exist; try {self._engine.model_name!r}",
                param="model",
                code="model_not_found",  # OpenAI's code for it
            )
        max_tokens = resolve_max_tokens(request.max_tokens, self._limits)
        if caller.kind == "text":  # /v1/completions: the prompt goes to the engine as it is
            params = generation_params(request, max_tokens)
            turn = Turn(request, caller, caller.response_id, request.messages[0].content, params, [], timing=timing)
            await self._look_up_cache(turn)
            return turn
        history, citations = await asyncio.gather(
            self._history(request, caller), self._retrieve(request, caller, timing)
        )
        with tracing.span("prompt", history_messages=len(history), chunks=len(citations)):
            prompt = build_prompt(
                history,
                request.messages,
                citations,
                max_model_len=self._engines.get(request.model, self._engine).max_model_len,
                max_tokens=max_tokens,
                tokens=self._counters.get(request.model, self._tokens),
            )
        timing.prompt_done = time.perf_counter()
        params = generation_params(request, max_tokens)
        turn = Turn(request, caller, caller.response_id, prompt, params, citations, timing=timing)
        await self._look_up_cache(turn)
        return turn

    async def _look_up_cache(self, turn: Turn) -> None:
        """A deterministic request's answer from the response cache, when it was given before (after retrieval:
        the chunks it chose are part of the key, so a changed document is a miss)."""
        cache, fields, wanted = self._services.cache, turn.params.fields(), turn.caller.response_cache
        if cache is None or not cacheable(fields) or not (self._state.response_cache if wanted is None else wanted):
            return
        turn.cache_key = cache_key(turn.request.model, fields, turn.prompt, turn.citations)
        with tracing.span("cache.lookup") as span:
            try:
                turn.cached = await cache.get(turn.caller.tenant, turn.cache_key)
            except RedisError as exc:  # no cache is no reason to fail an answer
                logger.warning("response cache lookup failed: %r", exc)
            span.set_attribute("llmserve.hit", turn.cached is not None)

    async def _history(self, request: ChatRequest, caller: Caller) -> list[ChatMessage]:
        if not request.conversation_id:
            return []
        with tracing.span("history", conversation_id=request.conversation_id):
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
            with tracing.span("retrieval", collection=collection):
                return await self._retriever.retrieve.remote(
                    query,
                    caller.tenant,
                    collection,
                    (options.top_k if options and options.top_k else None) or self._rag.top_k,
                    options.min_score if options and options.min_score is not None else self._rag.min_score,
                    traceparent=tracing.traceparent(),
                )
        finally:
            timing.retrieval_s = time.perf_counter() - t0

    # --- finish -------------------------------------------------------------------------------------
    def _finished(self, turn: Turn, routed: RoutedStream, status: str) -> None:
        """Usage per provider (Redis, off the request path) and the request's metrics."""
        task = asyncio.ensure_future(self._count_provider_usage(routed, turn))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        end = time.perf_counter()
        export_prometheus(turn.timing, routed, end, status, turn.request.model, turn.caller.tenant)
        end_trace(turn.timing, routed, end, status)
        record = wandb_record(
            turn.timing,
            routed,
            end,
            status,
            len(turn.citations),
            turn.request.stream,
            response_id=turn.caller.response_id,
            model=turn.request.model,
            tenant=turn.caller.tenant,
            trace_id=tracing.trace_id(turn.timing.span) if turn.timing.span is not None else "",
            request_id=turn.caller.request_id or "",
        )
        self._metrics.record(record)
        sample = asyncio.ensure_future(  # the web console's live charts (a capped stream per tenant)
            record_request_sample(self._redis, self._state.redis_prefix, record, routed.failovers())
        )
        self._pending.add(sample)
        sample.add_done_callback(self._pending.discard)

    async def _count_provider_usage(self, routed: RoutedStream, turn: Turn) -> None:
        """Per-provider counters in Redis (for `llmserve cost`), and the scale-or-spill controller's signals, off
        the request path; best effort."""
        try:
            deployment = self._scaled.get(turn.request.model)
            if deployment is not None:
                timing = turn.timing
                here = routed.legs and routed.legs[0].provider in self._own and timing.first_token
                ttft = timing.first_token - (timing.prompt_done or timing.start) if here else None  # the engine's
                tokens = sum(leg.usage.completion_tokens for leg in routed.legs if leg.usage)
                await self._signals.record(deployment, tokens, ttft)
            for leg in routed.legs:
                usage = leg.usage
                await self._provider_usage.add(
                    leg.provider,
                    requests=1,
                    prompt_tokens=usage.prompt_tokens if usage else 0,
                    completion_tokens=usage.completion_tokens if usage else 0,
                    cost_usd=leg.cost_usd,
                )
            for name, count in routed.failed.items():
                await self._provider_usage.add(name, failures=count)
            for name, seconds in self._router.stats.take_busy_seconds().items():
                await self._provider_usage.add(name, busy_s=seconds)
        except RedisError as exc:
            logger.warning("provider usage not counted: %r", exc)


def _answer_span(name: str, caller: Caller, model: str, **attributes: Any) -> tracing.Span:
    return tracing.start(
        name,
        tracing.context_of(caller.traceparent),
        response_id=caller.response_id,
        model=model,
        tenant=caller.tenant,
        api=caller.kind,
        **attributes,
    )


async def _collect(events: AsyncIterator[list[Event]]) -> list[Event]:
    return [e for batch in [b async for b in events] for e in batch]


async def _awaitable(value):
    return await value
