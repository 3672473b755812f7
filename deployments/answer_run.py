"""One answer being generated, detached from whoever asked for it: the orchestrator's stream and finish stages.

A run reads the providers' deltas (deployments/providers/router.py) and, for every batch of chunks, in this order:
journals them (state/journal.py; what piled up while the previous write was in flight, or within `coalesce_s` of
it, goes as one write: the first chunk never waits, fast streams are written every `coalesce_s`), commits the
conversation turn when the answer is whole, settles the caller's reservation with the exact usage when the
answer ends, and only then hands the chunks to the callers attached to it. So nothing a client saw is missing
from the journal, and the stored turn is what the client got.

A caller going away does not stop the run (a client resumes from the journal, on any ingress replica); a run
nobody follows for `grace_s` is cancelled. A run can also start from a journal whose writer died (a takeover):
it continues the journaled text as an assistant prefill, and the turn and the reservation are still committed
and settled once.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import operator
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

from redis.exceptions import RedisError

from core.errors import LLMServeError, ServiceUnavailable
from core.models import ChatChunk, ChunkChoice, Delta, Usage
from deployments import journaled
from deployments.answer_turn import RunServices, Turn
from deployments.handles import detached
from deployments.providers.router import RoutedStream, continuing, interrupted
from observability import tracing
from state.journal import Built, Event
from state.outage import retry_through_outage
from state.script_call import ScriptCall

logger = logging.getLogger("llmserve.runs")
_END = object()


class _Abandoned(Exception):
    """Nobody followed the run for its grace period, or its cancellation was asked for."""


class Fenced(Exception):
    """Another replica took this answer over (this writer was only slow): it continues, commits and settles the
    answer there; this run's followers follow the journal instead."""


def stopping_error() -> ServiceUnavailable:
    """What followers of a run get when its replica stops under it: the ingress takes the answer over elsewhere."""
    return ServiceUnavailable("this replica is stopping; the answer continues on another", code="replica_stopping")


class AnswerRun:
    def __init__(
        self,
        turn: Turn,
        services: RunServices,
        epoch: int = 1,
        prefix: list[Event] | None = None,
        opening: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        """`opening`: opens the answer's journal (1: opened, 0: another call has it); called as the run starts,
        while the providers are asked, once (a new answer fails fast when Redis does not answer). The run's
        first write waits for it (nothing leaves unjournaled); `opened()` says how it went."""
        self.turn = turn
        self._s = services
        self._epoch = epoch
        self._journaled = turn.caller.journal
        self.events: list[Event] = list(prefix or [])
        self._seq = self.events[-1].seq if self.events else 0
        self._prefix_text = "".join(journaled.text(e.chunk) for e in self.events)  # the first choice's: continued
        self._prefix_generated = "".join(journaled.generated(e.chunk) for e in self.events)  # all of it: counted
        self.routed = RoutedStream()
        self.finish_reason = next((r for e in self.events if (r := journaled.finish(e.chunk))), None)
        self.error: BaseException | None = None
        self.done = False
        self._committed = False
        self._ttl_set = False
        self._last_write: float | None = None
        self._changed = asyncio.Condition()
        self._followers = 0
        self._alone_since: float | None = None
        self._task: asyncio.Task | None = None
        self._renewed = time.monotonic()
        self._hit_cost_usd = 0.0
        self._opening = opening
        self._opened: asyncio.Future | None = None

    @property
    def response_id(self) -> str:
        return self.turn.chunk_id

    def start(self, on_done: Callable[[AnswerRun], None]) -> None:
        if self._opening is not None:  # a round trip fewer before the first token
            self._opened = asyncio.ensure_future(self._opening())
            self._opened.add_done_callback(lambda f: f.cancelled() or f.exception())  # (read by whoever asks)
        self._task = detached(self._run())
        self._task.add_done_callback(lambda _: on_done(self))

    async def follow(self, after_seq: int = 0) -> AsyncIterator[list[Event]]:
        """The run's events after `after_seq`, as they are journaled, to the end (its error, if it failed)."""
        self._followers += 1
        try:
            while True:
                async with self._changed:
                    await self._changed.wait_for(lambda seen=after_seq: self._has_news(seen))
                    batch = self.events[bisect.bisect_right(self.events, after_seq, key=operator.attrgetter("seq")) :]
                if batch:
                    after_seq = batch[-1].seq
                    yield batch
                elif self.done:
                    if self.error is not None:
                        raise self.error
                    return
        finally:
            self._followers -= 1
            if not self._followers:
                self._alone_since = time.monotonic()
                if not self._journaled and self._task is not None and not self.done:  # none can come back (batch)
                    self._task.cancel()

    def unattended(self) -> None:
        """Its caller left before it followed the run: the grace of an answer nobody follows starts now."""
        if not self._followers and self._alone_since is None:
            self._alone_since = time.monotonic()

    def stop(self) -> None:
        """Stop it where it is, writing nothing more (as when its replica stops)."""
        if self._task is not None:
            self._task.cancel()

    async def opened(self) -> bool:
        """Whether the journal this run opens (a new answer's) is its own: False when another call had opened it;
        raises why the open failed. A run that opened none: True."""
        return True if self._opened is None else bool(await asyncio.shield(self._opened))

    async def _ensure_open(self) -> None:
        """Raises Fenced unless this run holds its answer's journal: its open found another call's, or failed
        (then the request that saw it fail settles the reservation, and nothing of this run is written)."""
        if self._opened is None:
            return
        try:
            opened = await self.opened()
        except Exception as exc:
            raise Fenced(f"answer {self.response_id}: its journal could not be opened: {exc!r}") from exc
        if not opened:
            raise Fenced(f"answer {self.response_id}: another call opened its journal first")
        self._opened = None  # open: later writes need not ask

    def _has_news(self, seen: int) -> bool:
        return self.done or bool(self.events and self.events[-1].seq > seen)

    # --- the run ------------------------------------------------------------------------------------
    async def _run(self) -> None:
        queue: asyncio.Queue = asyncio.Queue()
        producer = asyncio.ensure_future(self._produce(queue))
        status = "error"
        try:
            while True:
                items = await self._next_items(queue, producer)
                if items is None:
                    continue  # a lease renewal or a grace check
                chunks = [c for item in items if isinstance(item, list) for c in item]
                end = next((item for item in items if not isinstance(item, list)), None)
                await self._write(chunks, end)
                if end is not None:
                    status = "ok" if end is _END else "error"
                    if end is not _END:
                        raise end
                    return
                if await self._abandoned():  # a run that streams on with nobody reading it
                    raise _Abandoned("nobody followed it")
                await self._renew_reservation()
        except _Abandoned as stopped:
            status = "cancelled"
            self.error = ServiceUnavailable(f"the answer was cancelled: {stopped}", code="cancelled")
            await _stop(producer)  # its last leg's usage is counted as the engine call closes
            with contextlib.suppress(RedisError, ServiceUnavailable, Fenced):
                await self._ensure_open()
                await self._settle()
                await self._journal([], status="cancelled")
        except Fenced as exc:  # the new writer commits, settles and ends the answer
            status = "taken over"
            self.error = exc
        except asyncio.CancelledError:  # the replica is stopping: the journal stays running, for a takeover
            status = "cancelled"
            self.error = stopping_error()
            raise
        except Exception as exc:  # the providers failed: journal why, settle what was generated
            self.error = exc
            await _stop(producer)
            with contextlib.suppress(RedisError, ServiceUnavailable, Fenced):
                await self._ensure_open()
                await self._settle()
                error = exc.to_error_body()["error"] if isinstance(exc, LLMServeError) else {"code": "internal_error"}
                await self._journal([], status="failed", error=error)
        finally:
            producer.cancel()
            self.done = True
            log = logger.info if status == "ok" else logger.warning
            log("answer %s ended %s after event %d (epoch %d, trace %s)%s", self.response_id, status, self._seq,
                self._epoch, tracing.trace_id(self.turn.timing.span) if self.turn.timing.span else "-",
                f": {self.error!r}" if self.error is not None else "")  # fmt: skip
            async with self._changed:
                self._changed.notify_all()
            self._s.finished(self.turn, self.routed, status)

    async def _next_items(self, queue: asyncio.Queue, producer: asyncio.Task) -> list | None:
        """Whatever the producer queued (at least one item), or None after a quiet third of the lease."""
        try:
            if queue.empty():
                async with asyncio.timeout(self._s.journal.lease_ms / 3000):  # (wait_for: a task per wait)
                    first = await queue.get()
            else:
                first = queue.get_nowait()
        except TimeoutError:
            await self._journal([])  # renew the lease
            if await self._abandoned():
                raise _Abandoned("nobody followed it") from None
            await self._renew_reservation()
            return None
        if self._last_write is not None:  # a write went out moments ago: let a few more chunks join this one
            wait_s = self._last_write + self._s.coalesce_s - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
        items = [first]
        while not queue.empty():
            items.append(queue.get_nowait())
        return items

    async def _abandoned(self) -> bool:
        """Nobody has followed it for `grace_s`: not here, and not from another replica (a client that resumed
        there follows the journal, and says so in it)."""
        if self.turn.caller.detached:  # a background answer runs to its end (or its cancel)
            return False
        if self._followers or self._alone_since is None or time.monotonic() - self._alone_since < self._s.grace_s:
            return False
        if not self._journaled:
            return True
        tenant, rid = self.turn.caller.tenant, self.turn.chunk_id
        try:
            return not await self._s.journal.followed_within(tenant, rid, self._s.grace_s)
        except RedisError:  # cannot tell while Redis is away: keep it, and ask again at the next write
            return False

    async def _produce(self, queue: asyncio.Queue) -> None:
        """The providers' deltas as chat chunks; `_END`, or the exception, last."""
        try:
            async for chunks in self._chunks():
                await queue.put(chunks)
            await queue.put(_END)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # the run stops its producer
                raise
            # A call inside was cancelled, not this run: an error of the answer, not a silent stop.
            await queue.put(ServiceUnavailable(f"the engine call was cancelled: {exc!r}"))
        except BaseException as exc:
            await queue.put(exc)

    async def _chunks(self) -> AsyncIterator[list[ChatChunk | Built]]:
        turn, routed = self.turn, self.routed
        whole = self.finish_reason is not None and len(journaled.finished(self.events)) >= (turn.params.n or 1)
        if whole:  # a takeover of an answer that was whole already
            if not any("usage" in e.chunk for e in self.events):
                yield [turn.chunk(usage=self._usage(), provider="+".join(routed.providers), cost_usd=self._cost())]
            return
        if turn.cached is not None and not self.events:  # a response cache hit: no provider is asked
            turn.timing.first_token = time.perf_counter()
            routed.attempts.append(("cache", True))
            yield self._replayed(turn.cached)
            return
        prompt, params = turn.prompt, turn.params
        if params.structured and any(journaled.output(e.chunk) for e in self.events):
            raise interrupted("its replica died")
        if self._prefix_text:  # continue the journaled text
            prompt = continuing(prompt, self._prefix_text)
            done = self._s.tokens.count_text(self._prefix_text)
            params = replace(params, max_tokens=max(1, params.max_tokens - done))
        first = not self.events
        engine_request_id = f"{turn.chunk_id}-{self._epoch}"  # a takeover's engine requests are new ones
        affinity = f"{turn.caller.tenant}:{turn.conversation_id}" if turn.conversation_id else None
        stream = self._s.router.stream(turn.request.model, prompt, params, engine_request_id, routed, affinity)
        async for deltas in stream:
            out: list[ChatChunk | Built] = []
            if first:
                turn.timing.first_token = time.perf_counter()
                out.append(
                    turn.chunk(
                        choices=[
                            ChunkChoice(index=i, delta=Delta(role="assistant", content=""))
                            for i in range(params.n or 1)
                        ],
                        conversation_id=turn.conversation_id,
                        citations=turn.citations,
                        provider=routed.providers[0],
                    )
                )
                first = False
            for d in deltas:
                if d.output or d.finish_reason or d.logprobs:
                    out.append(turn.delta_chunk(d))
            if out:
                yield out
        if first:
            raise ServiceUnavailable("the engine ended the stream without output")
        yield [turn.chunk(usage=self._usage(), provider="+".join(routed.providers), cost_usd=self._cost())]

    async def _write(self, chunks: list[ChatChunk | Built], end: object | None) -> None:
        """Journal, then commit and settle where due, then hand to the followers."""
        events = []
        for chunk in chunks:
            self._seq += 1
            events.append(Event.of(self._seq, chunk))
            self.finish_reason = self.finish_reason or journaled.finish(events[-1].chunk)
        head, tail = events, []
        if end is _END and events and not events[-1].chunk.get("choices"):  # the usual end: the usage chunk last,
            head, tail = events[:-1], events[-1:]  # which goes with the settle and `completed`
        if head or not tail:
            await self._journal(head)
        if self.finish_reason is not None and not self._committed:
            await self._commit([*self.events, *events])
            self._committed = True
        if tail:
            await self._settle_and_complete(tail)
        elif end is _END:
            await self._settle()
            await self._journal([], status="completed")
        self.events.extend(events)
        if end is _END:
            self._keep_in_cache()
        self._last_write = time.monotonic()
        async with self._changed:
            self._changed.notify_all()

    # --- the writes, retried through a Redis outage --------------------------------------------------
    async def _retrying(self, write: Callable[[], Awaitable[Any]]) -> Any:
        return await retry_through_outage(write, self._s.retry_s)

    async def _journal(self, events: list[Event], status: str = "", error: dict | None = None) -> None:
        if not self._journaled:
            return
        tenant, rid, refresh_ttl = self.turn.caller.tenant, self.turn.chunk_id, not self._ttl_set and bool(events)
        await self._ensure_open()
        last = events[-1].seq if events else self._seq  # (a batch's head, when its usage chunk goes after)
        append = self._s.journal.append
        accepted = await self._retrying(
            lambda: append(tenant, rid, self._epoch, events, last, status, error, refresh_ttl)
        )
        self._ttl_set |= refresh_ttl
        if accepted == 0:
            raise Fenced(f"answer {rid}: another replica took it over (epoch > {self._epoch})")
        if accepted == 2:
            raise _Abandoned("its cancellation was asked for")

    async def _commit(self, events: list[Event]) -> None:
        """The request's new messages and the whole answer, appended to the conversation once (keyed by the
        response id, whichever replica gets here)."""
        turn = self.turn
        if turn.conversation_id is None:
            return
        new_turn = [*turn.request.messages, journaled.first_answer(events)]
        commit = self._s.conversations.commit_turn
        with tracing.span("commit", conversation_id=turn.conversation_id):
            await self._retrying(lambda: commit(turn.caller.tenant, turn.conversation_id, turn.chunk_id, new_turn))

    async def _renew_reservation(self) -> None:
        """Keep the caller's reservation leased while the answer runs (a third of the lease at a time)."""
        caller, limiter = self.turn.caller, self._s.limiter
        if not caller.reservation_id or time.monotonic() - self._renewed < limiter.lease_s / 3:
            return
        self._renewed = time.monotonic()
        with contextlib.suppress(RedisError):  # the next renewal, a third of a lease later, tries again
            await limiter.renew(caller.tenant, caller.key_id, caller.reservation_id)

    def _settle_call(self) -> ScriptCall | None:
        """The settle of the caller's reservation with this answer's usage (None: it holds none)."""
        caller = self.turn.caller
        if not caller.reservation_id:
            return None
        usage, cost = self._usage(), self._cost()
        return self._s.limiter.settle_call(
            caller.tenant, caller.key_id, caller.reservation_id, usage.prompt_tokens, usage.completion_tokens, cost
        )

    async def _settle(self) -> None:
        call = self._settle_call()
        if call is not None:
            settle_by = self._s.limiter.settle_by
            self._counted(await self._retrying(lambda: settle_by(call)))

    def _counted(self, counted: Any) -> None:
        if not counted:  # settled already (a retry), or reclaimed: its lease ran out before the answer ended
            logger.warning("answer %s: reservation %s was settled or reclaimed before its usage %s was counted",
                           self.response_id, self.turn.caller.reservation_id, self._usage().total_tokens)  # fmt: skip

    async def _settle_and_complete(self, events: list[Event]) -> None:
        """The last write, when the answer ends with its usage chunk (everything before it is journaled, and its
        turn committed): the settle, then the usage chunk and `completed`, in one round trip, run in that order.
        Were the second lost (Redis gone between them), the journal holds a whole answer without its usage chunk:
        a retry or a takeover writes that chunk, and its settle counts nothing twice (a reservation settles
        once)."""
        settle = self._settle_call()
        if settle is None or not self._journaled:
            await self._settle()
            await self._journal(events, status="completed")
            return
        tenant, rid, epoch, last = self.turn.caller.tenant, self.turn.chunk_id, self._epoch, events[-1].seq
        together = self._s.journal.append_after
        counted, accepted = await self._retrying(
            lambda: together(settle, tenant, rid, epoch, events, last, "completed")
        )
        if accepted == 0:  # (and the settle did not run: the new writer settles)
            raise Fenced(f"answer {rid}: another replica took it over (epoch > {epoch})")
        self._counted(counted)

    def _replayed(self, cached: list[dict[str, Any]]) -> list[ChatChunk]:
        """A cached answer's chunks as this answer's: its id, conversation and citations, provider `cache`, and
        the hit's cost (a fraction of what the answer first cost; nothing by default)."""
        turn, out = self.turn, []
        own = ("id", "object", "created", "model", "conversation_id", "citations", "provider", "cost_usd")
        for i, chunk in enumerate(cached):
            fields = {k: v for k, v in chunk.items() if k not in own}
            if i == 0:
                fields.update(conversation_id=turn.conversation_id, citations=turn.citations, provider="cache")
            if "usage" in chunk:
                self._hit_cost_usd = self._s.hit_cost * float(chunk.get("cost_usd") or 0.0)
                fields.update(provider="cache", cost_usd=self._hit_cost_usd)
            out.append(turn.chunk(**fields))
        return out

    def _keep_in_cache(self) -> None:
        """A deterministic answer that one provider gave whole, in one run, goes to the response cache (in the
        background: it is best effort, a miss next time is all a failure costs)."""
        turn, routed = self.turn, self.routed
        whole = len(journaled.finished(self.events)) >= (turn.params.n or 1)  # every choice ended (and well: at _END)
        fresh = turn.cached is None and self._epoch == 1 and not self._prefix_generated and len(routed.legs) == 1
        if self._s.cache is None or turn.cache_key is None or not (whole and fresh):
            return
        chunks = [e.chunk for e in self.events]
        sources = [c.source for c in turn.citations]
        put = self._s.cache.put(turn.caller.tenant, turn.cache_key, chunks, sources)
        task = asyncio.ensure_future(put)
        _caching.add(task)
        task.add_done_callback(_cached)

    def _usage(self) -> Usage:
        """What the providers reported, plus, for a takeover, what was journaled (every choice, tool-call
        arguments) counted exactly."""
        usage = self.routed.usage()
        if not self._prefix_generated:
            return usage
        prompt = usage.prompt_tokens or self._s.tokens.count_messages(self.turn.prompt)
        completion = usage.completion_tokens + self._s.tokens.count_text(self._prefix_generated)
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    def _cost(self) -> float:
        cost = self.routed.cost_usd + self._hit_cost_usd
        if self._prefix_generated:  # the journaled part, at the first provider's price
            provider = next(iter(self._s.router.providers), None)
            if provider is not None:
                cost += provider.price.cost(0, self._s.tokens.count_text(self._prefix_generated))
        return cost


_caching: set[asyncio.Task] = set()  # puts in flight (a task nobody holds may be collected)


def _cached(task: asyncio.Task) -> None:
    _caching.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.warning("an answer was not kept in the response cache: %r", task.exception())


async def _stop(task: asyncio.Task) -> None:
    """Cancel the producer and wait until it stopped (its engine call closed and counted)."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
