"""Many answers' journal appends share Redis round trips (state/script_call.py Batcher), each with its own reply,
in a real Redis: what comes while a round trip is in flight goes in the next, a lost script is loaded again, and a
script error reaches only its own caller."""

import asyncio

import pytest

from state.script_call import Batcher, ScriptCall
from tests.conftest import redis_client

INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
FAIL = "return redis.error_reply('no: ' .. ARGV[1])"


def test_calls_that_come_together_share_round_trips_and_each_gets_its_own_reply(redis_prefix):
    async def main():
        async with redis_client() as client:
            batcher = Batcher(client)
            rounds = []
            pipeline = client.pipeline
            client.pipeline = lambda **kw: rounds.append(1) or pipeline(**kw)
            key = f"{redis_prefix}:n"
            replies = await asyncio.gather(*(batcher.run(ScriptCall(INCR, [key], [i])) for i in range(1, 51)))
            assert sorted(replies) == sorted(set(replies)) and max(replies) == sum(range(1, 51))
            assert len(rounds) <= 2  # 50 callers, not 50 round trips
            alone = await batcher.run(ScriptCall(INCR, [key], [1]))  # nothing in flight: it goes at once
            assert alone == sum(range(1, 51)) + 1 and len(rounds) <= 3

    asyncio.run(main())


def test_a_script_redis_lost_is_loaded_again_and_an_error_reaches_only_its_caller(redis_prefix):
    async def main():
        async with redis_client() as client:
            batcher = Batcher(client)
            key = f"{redis_prefix}:m"
            await client.script_flush()  # what a restarted Redis has: no script
            ok, failed = await asyncio.gather(
                batcher.run(ScriptCall(INCR, [key], [5])),
                batcher.run(ScriptCall(FAIL, [], ["x"])),
                return_exceptions=True,
            )
            assert ok == 5 and "no: x" in str(failed)
            assert await batcher.run(ScriptCall(INCR, [key], [1])) == 6

    asyncio.run(main())


def test_each_event_loop_gets_its_own_round_trips(redis_prefix):
    async def once(batcher):
        return await batcher.run(ScriptCall(INCR, [f"{redis_prefix}:l"], [1]))

    async def main():
        async with redis_client() as client:
            batcher = Batcher(client)
            return await once(batcher), batcher

    first, _ = asyncio.run(main())
    second, _ = asyncio.run(main())  # a new loop (and client): not stuck behind the old loop's task
    assert (first, second) == (1, 2)


@pytest.mark.parametrize("most", [1, 3])
def test_more_calls_than_one_round_trip_takes_go_in_the_next(redis_prefix, most):
    async def main():
        async with redis_client() as client:
            batcher = Batcher(client, most=most)
            key = f"{redis_prefix}:k{most}"
            replies = await asyncio.gather(*(batcher.run(ScriptCall(INCR, [key], [1])) for _ in range(7)))
            assert sorted(replies) == list(range(1, 8))

    asyncio.run(main())


def test_a_round_trip_without_a_reply_in_time_fails_its_calls_with_redis_pys_error(redis_prefix):
    from redis.exceptions import TimeoutError as RedisTimeout

    async def main():
        async with redis_client() as client:
            batcher = Batcher(client, timeout_s=0.2)
            key = f"{redis_prefix}:t"
            await client.client_pause(1000, all=False)  # Redis answers nobody's writes for a second
            with pytest.raises(RedisTimeout):  # what the journal's writers retry through an outage
                await batcher.run(ScriptCall(INCR, [key], [1]))
            await asyncio.sleep(1.0)
            assert await batcher.run(ScriptCall(INCR, [key], [1])) >= 1  # the next round trip goes as usual

    asyncio.run(main())
