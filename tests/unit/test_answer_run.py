"""AnswerRun against a real Redis (journal, conversations, limits) and the real router, with a scripted provider
standing in for the engine: journal before followers, the turn committed once, the reservation settled with the
exact usage; a takeover continuing a journal; a fenced writer stopping; an abandoned answer cancelled."""

import asyncio
import contextlib

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.errors import ServiceUnavailable
from core.models import Caller, ChatRequest
from core.tokens import TokenCounter
from deployments.answer_run import AnswerRun, Fenced
from deployments.answer_turn import RunServices, Turn
from deployments.providers.base import GenerationParams
from deployments.providers.retry import RetryPolicy
from deployments.providers.router import ProviderRouter
from deployments.providers.routing import LoadStats, strategy
from state import journal as journal_module
from state.api_keys import Limits
from state.conversations import ConversationStore
from state.journal import Event, Journal
from state.limits import Limiter, Scope
from tests.conftest import redis_client
from tests.fakes.scripted_provider import Scripted

TENANT, KEY = "acme", "k1"
HI = [{"role": "user", "content": "Say hello."}]


@contextlib.asynccontextmanager
async def services(prefix, provider, grace_s=30.0, lease_s=3.0):
    async with redis_client() as client:
        router = ProviderRouter(
            [provider], strategy("ordered"), LoadStats(4, 2.0), None, RetryPolicy(2, 0.01, 0.05), 30.0
        )
        statuses: list[str] = []
        yield (
            client,
            RunServices(
                router=router,
                journal=Journal(client, prefix, ttl_s=600, lease_s=lease_s),
                conversations=ConversationStore(client, prefix, 3600),
                limiter=Limiter(client, prefix),
                tokens=TokenCounter(),
                finished=lambda turn, routed, status: statuses.append(status),
                grace_s=grace_s,
                retry_s=5.0,
            ),
            statuses,
        )


async def reserve(limiter: Limiter, rid: str) -> None:
    admitted = await limiter.admit(Scope(TENANT, KEY, Limits(), Limits()), rid, 100, 0.01)
    assert admitted.allowed


def turn(response_id: str, max_tokens: int = 8) -> Turn:
    request = ChatRequest(model="m", messages=HI, conversation_id="conv-1", max_tokens=max_tokens)
    caller = Caller(tenant=TENANT, key_id=KEY, response_id=response_id, reservation_id=f"r-{response_id}")
    return Turn(request, caller, response_id, HI, GenerationParams(max_tokens=max_tokens), [])


async def started(s: RunServices, response_id: str, max_tokens: int = 8) -> AnswerRun:
    """A new answer's run, its journal opened, running."""
    t = turn(response_id, max_tokens)
    await s.journal.open(TENANT, response_id, t.record(), t.caller.model_dump())
    run = AnswerRun(t, s)
    run.start(on_done=lambda _: None)
    return run


async def ended(run: AnswerRun, within_s: float = 5.0) -> None:
    """Until the run is done (a run nobody follows ends after its grace), for at most `within_s`."""
    for _ in range(int(within_s / 0.1)):
        if run.done:
            return
        await asyncio.sleep(0.1)


def text_of(events: list[Event]) -> str:
    return "".join((c.get("delta") or {}).get("content") or "" for e in events for c in e.chunk.get("choices", []))


async def follow_all(run: AnswerRun, after: int = 0) -> list[Event]:
    return [e async for batch in run.follow(after) for e in batch]


def test_a_run_journals_commits_once_and_settles_the_exact_usage(redis_prefix):
    async def go():
        provider = Scripted(["Hello", " there", " friend"])
        async with services(redis_prefix, provider) as (_, s, statuses):
            await reserve(s.limiter, "r-chatcmpl-1")
            run = await started(s, "chatcmpl-1")
            followed = await follow_all(run)
            journaled = await s.journal.events(TENANT, "chatcmpl-1")
            assert [e.seq for e in followed] == [e.seq for e in journaled]  # nothing the follower saw is missing
            assert text_of(followed) == "Hello there friend"
            history = await s.conversations.history(TENANT, "conv-1")
            assert [m.content for m in history] == ["Say hello.", "Hello there friend"]  # the turn, once
            usage = await s.limiter.usage(TENANT, KEY)
            assert (usage["requests"], usage["prompt_tokens"], usage["completion_tokens"]) == (1, 10, 3)
            assert abs(usage["cost_usd"] - (10 * 1.0 + 3 * 2.0) / 1e6) < 1e-12 and usage["reserved_usd"] < 1e-12
            assert (await s.journal.meta(TENANT, "chatcmpl-1"))["status"] == "completed"
            assert statuses == ["ok"]
            assert [e.seq for e in await follow_all(run, after=2)] == [e.seq for e in followed if e.seq > 2]
            assert provider.affinities == [f"{TENANT}:conv-1"]  # routed by its conversation (llm_router.py)

    asyncio.run(go())


def test_an_answer_ends_with_one_round_trip_that_settles_then_journals_its_usage_and_completed(redis_prefix):
    async def go():
        async with services(redis_prefix, Scripted(["Hello", " there"])) as (_, s, _statuses):
            await reserve(s.limiter, "r-chatcmpl-end")
            writes: list[tuple[str, str]] = []
            for name in ("append", "append_after"):
                method = getattr(s.journal, name)

                async def recorded(*args, _method=method, _name=name, **kwargs):
                    writes.append((_name, args[-1] if _name == "append_after" else args[5] if len(args) > 5 else ""))
                    return await _method(*args, **kwargs)

                setattr(s.journal, name, recorded)
            settle_by = s.limiter.settle_by  # (a settle on its own)
            s.limiter.settle_by = lambda *a, **k: writes.append(("settle", "")) or settle_by(*a, **k)
            run = await started(s, "chatcmpl-end")
            followed = await follow_all(run)
            assert (
                "usage" in followed[-1].chunk
                and (await s.journal.meta(TENANT, "chatcmpl-end"))["status"] == "completed"
            )
            assert writes[-1] == ("append_after", "completed") and ("settle", "") not in writes  # one round trip
            assert (await s.limiter.usage(TENANT, KEY))["completion_tokens"] == 2 and not await s.limiter.inflight(
                TENANT, KEY
            )

    asyncio.run(go())


def test_a_takeover_continues_the_journaled_text_and_commits_the_whole_answer_once(redis_prefix):
    async def go():
        provider = Scripted([" there", " friend"])
        async with services(redis_prefix, provider) as (_, s, _statuses):
            await reserve(s.limiter, "r-chatcmpl-2")
            t = turn("chatcmpl-2")
            await s.journal.open(TENANT, "chatcmpl-2", t.record(), t.caller.model_dump())
            head = Event(
                1, {"id": "chatcmpl-2", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
            )
            hello = Event(2, {"id": "chatcmpl-2", "choices": [{"index": 0, "delta": {"content": "Hello"}}]})
            await s.journal.append(TENANT, "chatcmpl-2", 1, [head, hello], 2)  # then its writer died
            status, epoch = await s.journal.take_over(TENANT, "chatcmpl-2", force=True)
            assert status == "taken"
            meta = await s.journal.meta(TENANT, "chatcmpl-2")
            resumed = Turn.from_record(meta["request"], Caller.model_validate(meta["caller"]), "chatcmpl-2")
            run = AnswerRun(resumed, s, epoch=epoch, prefix=await s.journal.events(TENANT, "chatcmpl-2"))
            run.start(on_done=lambda _: None)
            rest = await follow_all(run, after=2)
            assert rest[0].seq == 3  # numbering goes on where the journal stopped
            assert provider.seen[0][-1] == {"role": "assistant", "content": "Hello"}  # continued, not redone
            assert text_of(await s.journal.events(TENANT, "chatcmpl-2")) == "Hello there friend"
            history = await s.conversations.history(TENANT, "conv-1")
            assert [m.content for m in history] == ["Say hello.", "Hello there friend"]
            usage = await s.limiter.usage(TENANT, KEY)
            assert usage["requests"] == 1 and usage["completion_tokens"] == 2 + TokenCounter().count_text("Hello")

    asyncio.run(go())


async def _journaled_then_taken_over(s: RunServices, t: Turn, events: list[dict]) -> AnswerRun:
    """`t`'s journal holds `events` and its writer died: a run taking it over, started."""
    rid = t.chunk_id
    await s.journal.open(TENANT, rid, t.record(), t.caller.model_dump())
    await s.journal.append(TENANT, rid, 1, [Event(i, e) for i, e in enumerate(events, 1)], len(events))
    status, epoch = await s.journal.take_over(TENANT, rid, force=True)
    assert status == "taken"
    meta = await s.journal.meta(TENANT, rid)
    resumed = Turn.from_record(meta["request"], Caller.model_validate(meta["caller"]), rid)
    run = AnswerRun(resumed, s, epoch=epoch, prefix=await s.journal.events(TENANT, rid))
    run.start(on_done=lambda _: None)
    return run


def test_a_completion_is_taken_over_by_continuing_its_raw_prompt(redis_prefix):
    async def go():
        provider = Scripted([" there", " friend"])
        async with services(redis_prefix, provider) as (_, s, _statuses):
            request = ChatRequest(model="m", messages=[{"role": "user", "content": "Once upon"}], max_tokens=8)
            caller = Caller(tenant=TENANT, key_id=KEY, response_id="cmpl-1", kind="text")
            t = Turn(request, caller, "cmpl-1", "Once upon", GenerationParams(max_tokens=8), [])
            hello = {"id": "cmpl-1", "choices": [{"index": 0, "delta": {"content": " a time"}}]}
            run = await _journaled_then_taken_over(s, t, [hello])
            await follow_all(run, after=1)
            assert provider.seen == ["Once upon a time"]  # the raw prompt went on with the text, no template
            assert text_of(await s.journal.events(TENANT, "cmpl-1")) == " a time there friend"

    asyncio.run(go())


def test_a_tool_call_taken_over_mid_way_ends_interrupted_not_continued_as_text(redis_prefix):
    async def go():
        provider = Scripted([" never"])
        async with services(redis_prefix, provider) as (_, s, _statuses):
            tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
            request = ChatRequest(model="m", messages=HI, tools=[tool], tool_choice="required", max_tokens=8)
            caller = Caller(tenant=TENANT, key_id=KEY, response_id="chatcmpl-9")
            params = GenerationParams(max_tokens=8, tools=[tool], tool_choice="required")
            t = Turn(request, caller, "chatcmpl-9", HI, params, [])
            half = {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a'}}
            run = await _journaled_then_taken_over(
                s, t, [{"id": "chatcmpl-9", "choices": [{"index": 0, "delta": {"tool_calls": [half]}}]}]
            )
            with pytest.raises(ServiceUnavailable) as cut:
                await follow_all(run, after=1)
            assert cut.value.code == "answer_interrupted" and provider.seen == []
            assert (await s.journal.meta(TENANT, "chatcmpl-9"))["status"] == "failed"

    asyncio.run(go())


def test_several_choices_are_whole_only_when_every_choice_finished(redis_prefix):
    async def go():
        provider = Scripted([" never"])
        async with services(redis_prefix, provider) as (_, s, _statuses):
            request = ChatRequest(model="m", messages=HI, n=2, max_tokens=8)
            caller = Caller(tenant=TENANT, key_id=KEY, response_id="chatcmpl-8")
            t = Turn(request, caller, "chatcmpl-8", HI, GenerationParams(max_tokens=8, n=2), [])
            first_done = {"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop"}
            second_half = {"index": 1, "delta": {"content": "Hel"}}
            run = await _journaled_then_taken_over(s, t, [{"id": "chatcmpl-8", "choices": [first_done, second_half]}])
            with pytest.raises(ServiceUnavailable) as cut:  # choice 1 was cut: not reported as whole
                await follow_all(run, after=1)
            assert cut.value.code == "answer_interrupted" and provider.seen == []

    asyncio.run(go())


def test_a_cancelled_answer_stops_at_its_next_write_and_is_charged_what_it_wrote(redis_prefix):
    async def go():
        provider = Scripted(["a", "b", "c", "d", "e", "f", "g", "h"], delay_s=0.2)
        async with services(redis_prefix, provider) as (_, s, statuses):
            await reserve(s.limiter, "r-chatcmpl-5")
            run = await started(s, "chatcmpl-5")
            await asyncio.sleep(0.5)
            assert await s.journal.cancel(TENANT, "chatcmpl-5") == "running"
            with pytest.raises(ServiceUnavailable) as stopped:
                await follow_all(run)
            assert stopped.value.code == "cancelled" and statuses == ["cancelled"]
            assert (await s.journal.meta(TENANT, "chatcmpl-5"))["status"] == "cancelled"
            usage = await s.limiter.usage(TENANT, KEY)
            assert usage["requests"] == 1 and 0 < usage["completion_tokens"] < 8
            assert await s.journal.cancel(TENANT, "chatcmpl-5") == "cancelled"  # nothing left to cancel

    asyncio.run(go())


def test_a_detached_answer_runs_to_its_end_with_nobody_following(redis_prefix):
    async def go():
        provider = Scripted(["a", "b", "c"], delay_s=0.1)
        async with services(redis_prefix, provider, grace_s=0.05) as (_, s, statuses):
            t = turn("chatcmpl-6")
            t = Turn(t.request, t.caller.model_copy(update={"detached": True}), t.chunk_id, t.prompt, t.params, [])
            await s.journal.open(TENANT, "chatcmpl-6", t.record(), t.caller.model_dump())
            run = AnswerRun(t, s)
            run.start(on_done=lambda _: None)
            follower = run.follow()
            await anext(follower)  # one look, then nobody follows it (undetached, it would be cancelled)
            await follower.aclose()
            while not run.done:
                await asyncio.sleep(0.05)
            assert statuses == ["ok"] and text_of(await s.journal.events(TENANT, "chatcmpl-6")) == "abc"

    asyncio.run(go())


def test_a_writer_that_was_taken_over_stops_and_commits_settles_and_ends_nothing(redis_prefix):
    """The new writer commits, settles and ends the answer; the old one (only slow) must not touch any of it."""

    async def go():
        provider = Scripted(["a", "b", "c", "d", "e", "f"], delay_s=0.15)
        async with services(redis_prefix, provider) as (_, s, statuses):
            await reserve(s.limiter, "r-chatcmpl-3")
            run = await started(s, "chatcmpl-3")
            await asyncio.sleep(0.35)
            await s.journal.take_over(TENANT, "chatcmpl-3", force=True)  # another replica took it
            with pytest.raises(Fenced):  # its followers follow the journal instead
                await follow_all(run)
            assert await s.conversations.history(TENANT, "conv-1") == []
            assert statuses == ["taken over"]
            assert await s.limiter.inflight(TENANT, KEY) == 1  # the reservation is the new writer's to settle
            assert (await s.journal.meta(TENANT, "chatcmpl-3"))["status"] == "running"

    asyncio.run(go())


def test_a_run_that_opens_its_own_journal_lets_nothing_out_before_it_is_open(redis_prefix):
    """A new answer's run asks the engine while its journal is being opened (a round trip fewer before the first
    token); its first chunk waits for the open, so a follower never sees an event the journal does not hold."""

    async def go():
        async with services(redis_prefix, Scripted(["Hello", " there"])) as (_, s, statuses):
            await reserve(s.limiter, "r-chatcmpl-open")
            t = turn("chatcmpl-open")
            gate, asked = asyncio.Event(), []

            async def opening() -> int:
                asked.append(await s.journal.meta(TENANT, "chatcmpl-open"))  # (nothing journaled yet)
                await gate.wait()
                return await s.journal.open(TENANT, "chatcmpl-open", t.record(), t.caller.model_dump())

            run = AnswerRun(t, s, opening=opening)
            run.start(on_done=lambda _: None)
            follower = asyncio.ensure_future(follow_all(run))
            await asyncio.sleep(0.3)  # the scripted engine has answered by now
            assert asked == [None] and not run.events and not follower.done()  # held until the open is done
            gate.set()
            followed = await follower
            assert text_of(followed) == "Hello there"
            assert [e.seq for e in await s.journal.events(TENANT, "chatcmpl-open")] == [e.seq for e in followed]
            assert (await s.journal.meta(TENANT, "chatcmpl-open"))["status"] == "completed" and statuses == ["ok"]

    asyncio.run(go())


def test_a_run_whose_journal_another_call_opened_first_writes_nothing(redis_prefix):
    """Its open finds the journal another call opened (a takeover raced it): the run stops fenced, before any
    write, and leaves the answer, the turn and the reservation to that call."""

    async def go():
        async with services(redis_prefix, Scripted(["Hello", " there"])) as (_, s, statuses):
            await reserve(s.limiter, "r-chatcmpl-raced")
            t = turn("chatcmpl-raced")
            assert await s.journal.open(TENANT, "chatcmpl-raced", t.record(), t.caller.model_dump()) == 1
            opening = lambda: s.journal.open(TENANT, "chatcmpl-raced", t.record(), {})  # noqa: E731
            run = AnswerRun(t, s, opening=opening)
            run.start(on_done=lambda _: None)
            assert await run.opened() is False  # the orchestrator follows the other call's journal instead
            with pytest.raises(Fenced):
                await follow_all(run)
            assert await s.journal.events(TENANT, "chatcmpl-raced") == []
            assert (await s.journal.meta(TENANT, "chatcmpl-raced"))["status"] == "running"
            assert await s.conversations.history(TENANT, "conv-1") == []
            assert statuses == ["taken over"] and await s.limiter.inflight(TENANT, KEY) == 1

    asyncio.run(go())


def test_a_run_whose_journal_could_not_be_opened_writes_and_settles_nothing(redis_prefix):
    """Redis failed the open: the request that started the run sees why (it fails fast, and settles its own
    reservation as nothing); the run writes no event, no turn and no settle of its own."""

    async def go():
        async with services(redis_prefix, Scripted(["Hello", " there"])) as (_, s, statuses):
            await reserve(s.limiter, "r-chatcmpl-noopen")

            async def opening() -> int:
                raise RedisTimeoutError("Timeout reading from 127.0.0.1:6379")

            run = AnswerRun(turn("chatcmpl-noopen"), s, opening=opening)
            run.start(on_done=lambda _: None)
            with pytest.raises(RedisTimeoutError):
                await run.opened()
            with pytest.raises(Fenced):
                await follow_all(run)
            assert await s.journal.meta(TENANT, "chatcmpl-noopen") is None
            assert await s.conversations.history(TENANT, "conv-1") == []
            assert statuses == ["taken over"] and await s.limiter.inflight(TENANT, KEY) == 1  # not the run's

    asyncio.run(go())


def test_a_writer_taken_over_just_before_its_last_write_settles_nothing(redis_prefix):
    """Its settle goes with its last append, in one round trip: fenced, neither runs (the new writer settles)."""

    async def go():
        async with services(redis_prefix, Scripted(["a", "b"])) as (_, s, statuses):
            await reserve(s.limiter, "r-chatcmpl-7")
            together = s.journal.append_after

            async def taken_first(*args, **kwargs):
                await s.journal.take_over(TENANT, "chatcmpl-7", force=True)  # another replica, right now
                return await together(*args, **kwargs)

            s.journal.append_after = taken_first
            run = await started(s, "chatcmpl-7")
            with pytest.raises(Fenced):
                await follow_all(run)
            assert statuses == ["taken over"]
            assert await s.limiter.inflight(TENANT, KEY) == 1  # not settled: the new writer's to settle
            meta = await s.journal.meta(TENANT, "chatcmpl-7")
            assert meta["status"] == "running" and not any("usage" in e.chunk for e in await s.journal.events(
                TENANT, "chatcmpl-7"))  # fmt: skip

    asyncio.run(go())


def test_an_answer_read_from_another_replica_is_not_cancelled(redis_prefix, monkeypatch):
    """A client that resumed on another orchestrator replica follows the journal there; the run sees it."""
    monkeypatch.setattr(journal_module, "FOLLOWED_EVERY_S", 0.05)

    async def go():
        provider = Scripted([f"w{i} " for i in range(12)], delay_s=0.1)
        async with services(redis_prefix, provider, grace_s=0.3) as (_, s, statuses):
            run = await started(s, "chatcmpl-6", max_tokens=12)
            async for _ in run.follow():
                break  # the client's connection broke here ...
            elsewhere = [e async for batch in s.journal.follow(TENANT, "chatcmpl-6") for e in batch]  # ... it resumed
            assert statuses == ["ok"] and text_of(elsewhere) == "".join(f"w{i} " for i in range(12))

    asyncio.run(go())


def test_a_batch_answer_stops_when_its_caller_goes(redis_prefix):
    """Unjournaled runs (batch requests) have nobody to come back for them: preempting the caller frees the
    engine at once."""

    async def go():
        provider = Scripted([f"w{i} " for i in range(50)], delay_s=0.05)
        async with services(redis_prefix, provider) as (_, s, statuses):
            t = turn("batch-1", max_tokens=50)
            t.caller = t.caller.model_copy(update={"journal": False, "reservation_id": None})
            run = AnswerRun(t, s)
            run.start(on_done=lambda _: None)
            async for _ in run.follow():
                break
            for _ in range(20):
                if run.done:
                    break
                await asyncio.sleep(0.05)
            assert run.done and statuses == ["cancelled"] and run.routed.usage().completion_tokens < 50

    asyncio.run(go())


def test_an_answer_nobody_follows_is_cancelled_after_its_grace(redis_prefix):
    async def go():
        provider = Scripted([f"w{i} " for i in range(50)], delay_s=0.1)
        async with services(redis_prefix, provider, grace_s=0.3, lease_s=0.3) as (_, s, statuses):
            await reserve(s.limiter, "r-chatcmpl-4")
            run = await started(s, "chatcmpl-4", max_tokens=50)
            async for _ in run.follow():
                break  # the client read one batch and left
            await ended(run)
            assert run.done and statuses == ["cancelled"]
            assert (await s.journal.meta(TENANT, "chatcmpl-4"))["status"] == "cancelled"
            assert await s.conversations.history(TENANT, "conv-1") == []  # not whole: not stored
            assert await s.limiter.inflight(TENANT, KEY) == 0  # its reservation settled ...
            usage = await s.limiter.usage(TENANT, KEY)
            assert 0 < usage["completion_tokens"] < 50  # ... with the tokens it generated

    asyncio.run(go())


def test_an_answer_whose_caller_left_before_following_it_is_cancelled_after_its_grace(redis_prefix):
    """The request that started it went away while its journal was being opened, before it read anything: the
    run is not left to generate for nobody."""

    async def go():
        provider = Scripted([f"w{i} " for i in range(50)], delay_s=0.1)
        async with services(redis_prefix, provider, grace_s=0.3, lease_s=0.3) as (_, s, statuses):
            await reserve(s.limiter, "r-chatcmpl-left")
            t = turn("chatcmpl-left", max_tokens=50)
            opening = lambda: s.journal.open(TENANT, "chatcmpl-left", t.record(), t.caller.model_dump())  # noqa: E731
            run = AnswerRun(t, s, opening=opening)
            run.start(on_done=lambda _: None)
            run.unattended()  # (what the orchestrator does when its caller is cancelled)
            await ended(run)
            assert run.done and statuses == ["cancelled"]
            assert (await s.journal.meta(TENANT, "chatcmpl-left"))["status"] == "cancelled"
            assert await s.limiter.inflight(TENANT, KEY) == 0  # the run settled it, with what it generated
            assert 0 < (await s.limiter.usage(TENANT, KEY))["completion_tokens"] < 50

    asyncio.run(go())
