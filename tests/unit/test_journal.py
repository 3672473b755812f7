"""The response journal against a real Redis: appends in order, one fenced writer at a time, takeover when the
lease runs out (or at once when the caller saw the writer die), following a live journal, Idempotency-Keys."""

import asyncio
import contextlib

from state.journal import Event, Journal
from tests.conftest import redis_client

T, R = "acme", "chatcmpl-1"


def run(coro):
    return asyncio.run(coro)


@contextlib.asynccontextmanager
async def _journal(prefix, lease_s=0.5):
    async with redis_client() as client:
        yield client, Journal(client, prefix, ttl_s=600, lease_s=lease_s)


def events(first: int, *texts: str) -> list[Event]:
    return [Event(first + i, {"choices": [{"delta": {"content": t}}]}) for i, t in enumerate(texts)]


def test_events_come_back_in_order_after_any_id(redis_prefix):
    async def go():
        async with _journal(redis_prefix) as (_, journal):
            epoch = await journal.open(T, R, {"request": {}}, {"tenant": T})
            assert await journal.append(T, R, epoch, events(1, "a", "b"), 2)
            assert await journal.append(T, R, epoch, events(3, "c"), 3, status="completed")
            assert [e.seq for e in await journal.events(T, R)] == [1, 2, 3]
            assert [e.chunk["choices"][0]["delta"]["content"] for e in await journal.events(T, R, 1)] == ["b", "c"]
            meta = await journal.meta(T, R)
            assert (meta["status"], meta["last_seq"]) == ("completed", 3)
            assert await journal.meta("other-tenant", R) is None  # journals belong to their tenant

    run(go())


def test_one_writer_at_a_time_a_taken_over_writer_is_fenced_out(redis_prefix):
    async def go():
        async with _journal(redis_prefix, lease_s=0.3) as (_, journal):
            first = await journal.open(T, R, {}, {})
            assert await journal.take_over(T, R) == ("held", 0)  # its lease is live
            await asyncio.sleep(0.4)
            status, second = await journal.take_over(T, R)  # the lease ran out: a takeover
            assert status == "taken" and second == first + 1
            assert not await journal.append(T, R, first, events(1, "late"), 1)  # the old writer: fenced
            assert await journal.append(T, R, second, events(1, "new"), 1)
            status, third = await journal.take_over(T, R, force=True)  # the caller saw the writer die
            assert status == "taken" and third == second + 1
            await journal.append(T, R, third, [], 1, status="completed")
            assert await journal.take_over(T, R) == ("completed", 0)
            assert await journal.take_over(T, "never-was") == ("missing", 0)

    run(go())


def test_a_follower_gets_the_backlog_then_live_events_to_the_end(redis_prefix):
    async def go():
        async with _journal(redis_prefix, lease_s=5) as (_, journal):
            epoch = await journal.open(T, R, {}, {})
            await journal.append(T, R, epoch, events(1, "a", "b"), 2)

            async def writer():
                await asyncio.sleep(0.3)
                await journal.append(T, R, epoch, events(3, "c"), 3)
                await asyncio.sleep(0.3)
                await journal.append(T, R, epoch, events(4, "d"), 4, status="completed")

            task = asyncio.ensure_future(writer())
            seen = [e.seq async for batch in journal.follow(T, R, after_seq=1) for e in batch]
            await task
            assert seen == [2, 3, 4]

    run(go())


def test_a_follower_stops_when_the_writer_went_quiet(redis_prefix):
    async def go():
        async with _journal(redis_prefix, lease_s=0.2) as (_, journal):
            await journal.open(T, R, {}, {})
            seen = [batch async for batch in journal.follow(T, R, idle_s=1.0)]
            assert seen == []  # nothing, and nobody writing: the caller takes it over
            assert (await journal.meta(T, R))["status"] == "running"

    run(go())


def test_an_idempotency_key_binds_one_response_per_api_key(redis_prefix):
    async def go():
        async with _journal(redis_prefix) as (_, journal):
            assert await journal.claim_idempotency(T, "k1", "retry-me", "chatcmpl-a|h") is None
            assert await journal.claim_idempotency(T, "k1", "retry-me", "chatcmpl-b|h") == "chatcmpl-a|h"
            assert await journal.claim_idempotency(T, "k2", "retry-me", "chatcmpl-c|h") is None  # per key
            await journal.release_idempotency(T, "k1", "retry-me")
            assert await journal.claim_idempotency(T, "k1", "retry-me", "chatcmpl-d|h") is None

    run(go())


def test_a_journal_expires_after_its_last_write_and_never_lingers(redis_prefix):
    async def go():
        async with _journal(redis_prefix) as (client, journal):
            epoch = await journal.open(T, R, {"request": {}}, {"tenant": T})
            meta_key = f"{redis_prefix}:t:{{{T}}}:resp:{R}:meta"
            stream_key = meta_key.removesuffix(":meta")
            assert await journal.append(T, R, epoch, events(1, "a"), 1, refresh_ttl=True)  # the writer's first
            assert 0 < await client.ttl(stream_key) <= 600 and 0 < await client.ttl(meta_key) <= 600
            await client.expire(stream_key, 5)  # appends in between leave the TTL alone ...
            assert await journal.append(T, R, epoch, events(2, "b"), 2)
            assert await client.ttl(stream_key) <= 5
            assert await journal.append(T, R, epoch, [], 2, status="completed")  # ... the last one sets it again
            assert await client.ttl(stream_key) > 5

    run(go())


def test_an_append_retried_after_a_lost_reply_adds_nothing_twice(redis_prefix):
    """A write whose reply was lost (a timeout while Redis was frozen) is retried: the events are stored once."""

    async def go():
        async with _journal(redis_prefix) as (_, journal):
            epoch = await journal.open(T, R, {}, {})
            assert await journal.append(T, R, epoch, events(1, "a", "b"), 2)
            assert await journal.append(T, R, epoch, events(1, "a", "b"), 2)  # the retry
            assert await journal.append(T, R, epoch, events(3, "c"), 3, status="completed")
            assert [e.seq for e in await journal.events(T, R)] == [1, 2, 3]
            assert [e.seq async for batch in journal.follow(T, R) for e in batch] == [1, 2, 3]

    run(go())


def test_a_journal_is_opened_once_a_second_open_gets_zero(redis_prefix):
    """Two calls that both saw no journal (a retry racing its first attempt) cannot both become its writer."""

    async def go():
        async with _journal(redis_prefix) as (_, journal):
            assert await journal.open(T, R, {"request": {"a": 1}}, {}) == 1
            assert await journal.append(T, R, 1, events(1, "a"), 1)
            assert await journal.open(T, R, {"request": {"b": 2}}, {}) == 0
            meta = await journal.meta(T, R)
            assert (meta["request"], meta["last_seq"], meta["epoch"]) == ({"request": {"a": 1}}, 1, 1)

    run(go())
