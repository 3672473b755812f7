"""Exact limits against a real Redis: concurrency exactness, settlement, leaks."""

import asyncio
import contextlib
import uuid

from state.api_keys import KeyLimits
from state.limits import WINDOW_S, Limiter
from tests.conftest import redis_client

NOW = 1_800_000_000.0 + 5  # 5 s into a window


def run(coro):
    return asyncio.run(coro)


@contextlib.asynccontextmanager
async def _limiter(prefix, lease_s=900.0):
    async with redis_client() as client:
        yield Limiter(client, prefix, lease_s=lease_s)


async def _many(limiter, limits, n, tokens=10, cost=0.0, now=NOW):
    ids = [uuid.uuid4().hex for _ in range(n)]
    results = await asyncio.gather(*(limiter.admit("k1", limits, rid, tokens, cost, now=now) for rid in ids))
    return ids, results


def test_exactly_rpm_requests_pass_among_50_concurrent(redis_prefix):
    async def go():
        async with _limiter(redis_prefix) as limiter:
            _, results = await _many(limiter, KeyLimits(rpm=7), 50)
            assert sum(r.allowed for r in results) == 7
            refused = [r for r in results if not r.allowed]
            assert {r.reason for r in refused} == {"rpm"}
            assert all(r.retry_after_s == WINDOW_S - 5 for r in refused)
            # The next window admits again.
            later = await limiter.admit("k1", KeyLimits(rpm=7), "next", 10, 0.0, now=NOW + WINDOW_S)
            assert later.allowed

    run(go())


def test_tpm_counts_reserved_tokens_exactly(redis_prefix):
    async def go():
        async with _limiter(redis_prefix) as limiter:
            _, results = await _many(limiter, KeyLimits(tpm=1000), 50, tokens=100)
            assert sum(r.allowed for r in results) == 10
            too_big = await limiter.admit("k1", KeyLimits(tpm=1000), "huge", 5000, 0.0, now=NOW + WINDOW_S)
            assert not too_big.allowed and too_big.reason == "tpm_exceeds_limit"

    run(go())


def test_settling_below_the_estimate_frees_tokens_for_others(redis_prefix):
    async def go():
        async with _limiter(redis_prefix) as limiter:
            limits = KeyLimits(tpm=300)
            ids, results = await _many(limiter, limits, 3, tokens=100)
            assert all(r.allowed for r in results)
            assert not (await limiter.admit("k1", limits, "blocked", 100, 0.0, now=NOW)).allowed
            assert await limiter.settle("k1", ids[0], prompt_tokens=10, completion_tokens=10, cost_usd=0.0)
            assert (await limiter.admit("k1", limits, "now-fits", 80, 0.0, now=NOW)).allowed

    run(go())


def test_parallel_slots_are_exact_and_released_on_settle(redis_prefix):
    async def go():
        async with _limiter(redis_prefix) as limiter:
            limits = KeyLimits(max_parallel=3)
            ids, results = await _many(limiter, limits, 50)
            admitted = [rid for rid, r in zip(ids, results, strict=True) if r.allowed]
            assert len(admitted) == 3 and await limiter.inflight("k1") == 3
            await limiter.settle("k1", admitted[0], 1, 1, 0.0)
            assert await limiter.inflight("k1") == 2
            assert (await limiter.admit("k1", limits, "another", 10, 0.0, now=NOW)).allowed

    run(go())


def test_budget_is_exact_under_concurrency_and_spent_is_real_cost(redis_prefix):
    async def go():
        async with _limiter(redis_prefix) as limiter:
            limits = KeyLimits(budget_usd=1.0)
            ids, results = await _many(limiter, limits, 50, cost=0.3)
            admitted = [rid for rid, r in zip(ids, results, strict=True) if r.allowed]
            assert len(admitted) == 3
            assert {r.reason for r in results if not r.allowed} == {"budget"}
            for rid in admitted:
                await limiter.settle("k1", rid, 5, 5, 0.1)
            usage = await limiter.usage("k1")
            assert abs(usage["cost_usd"] - 0.3) < 1e-9 and usage["reserved_usd"] < 1e-9
            assert usage["requests"] == 3 and usage["prompt_tokens"] == 15

    run(go())


def test_settle_counts_once(redis_prefix):
    async def go():
        async with _limiter(redis_prefix) as limiter:
            await limiter.admit("k1", KeyLimits(), "r1", 10, 0.01, now=NOW)
            results = await asyncio.gather(*(limiter.settle("k1", "r1", 3, 4, 0.01) for _ in range(10)))
            assert sum(results) == 1
            assert (await limiter.usage("k1"))["requests"] == 1

    run(go())


def test_a_crash_between_reserve_and_settle_leaks_nothing(redis_prefix):
    async def go():
        async with _limiter(redis_prefix, lease_s=30) as limiter:
            limits = KeyLimits(max_parallel=1, budget_usd=1.0)
            assert (await limiter.admit("k1", limits, "crashed", 10, 0.9, now=NOW)).allowed
            # The holder dies without settling: the slot and the reserved money are held until the lease ends ...
            blocked = await limiter.admit("k1", limits, "r2", 10, 0.5, now=NOW + 10)
            assert not blocked.allowed and blocked.reason == "max_parallel"
            # ... then the next admission reclaims them.
            assert (await limiter.admit("k1", limits, "r3", 10, 0.5, now=NOW + 31)).allowed
            assert await limiter.inflight("k1") == 1
            assert abs((await limiter.usage("k1"))["reserved_usd"] - 0.5) < 1e-9
            # A late settle of the reclaimed request counts nothing.
            assert not await limiter.settle("k1", "crashed", 10, 10, 0.9)

    run(go())


def test_a_retried_admission_is_not_counted_twice(redis_prefix):
    async def go():
        async with _limiter(redis_prefix) as limiter:
            limits = KeyLimits(rpm=1)
            assert (await limiter.admit("k1", limits, "same", 10, 0.0, now=NOW)).allowed
            again = await limiter.admit("k1", limits, "same", 10, 0.0, now=NOW)
            assert again.allowed and again.reason == "duplicate"
            assert not (await limiter.admit("k1", limits, "other", 10, 0.0, now=NOW)).allowed

    run(go())
