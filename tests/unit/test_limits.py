"""Exact limits of a key and of its tenant against a real Redis: concurrency exactness, settlement, budget
windows, leaks."""

import asyncio
import contextlib
import uuid

from state.api_keys import Limits
from state.limits import WINDOW_S, Limiter, Scope
from tests.conftest import redis_client

NOW = 1_800_000_000.0 + 5  # 5 s into a window (2027-01-15 08:00:05 UTC)
DAY = 86400


def run(coro):
    return asyncio.run(coro)


def key(limits: Limits, kid: str = "k1", tenant: Limits | None = None, tenant_id: str = "t1") -> Scope:
    return Scope(tenant_id, kid, limits, tenant or Limits())


@contextlib.asynccontextmanager
async def _limiter(prefix, lease_s=900.0):
    async with redis_client() as client:
        yield Limiter(client, prefix, lease_s=lease_s)


async def _many(limiter, scope, n, tokens=10, cost=0.0, now=NOW, interactive=True):
    ids = [uuid.uuid4().hex for _ in range(n)]
    results = await asyncio.gather(
        *(limiter.admit(scope, rid, tokens, cost, now=now, interactive=interactive) for rid in ids)
    )
    return ids, results


def test_exactly_rpm_requests_pass_among_50_concurrent(redis_prefix):
    async def go():
        async with _limiter(redis_prefix) as limiter:
            _, results = await _many(limiter, key(Limits(rpm=7)), 50)
            assert sum(r.allowed for r in results) == 7
            refused = [r for r in results if not r.allowed]
            assert {(r.reason, r.level) for r in refused} == {("rpm", "key")}
            assert all(r.retry_after_s == WINDOW_S - 5 for r in refused)
            # The next window admits again.
            later = await limiter.admit(key(Limits(rpm=7)), "next", 10, 0.0, now=NOW + WINDOW_S)
            assert later.allowed

    run(go())


def test_a_tenant_limit_holds_across_its_keys(redis_prefix):
    async def go():
        async with _limiter(redis_prefix) as limiter:
            tenant = Limits(rpm=6)
            a, b = key(Limits(), "ka", tenant), key(Limits(), "kb", tenant)
            ids = [uuid.uuid4().hex for _ in range(40)]
            results = await asyncio.gather(
                *(limiter.admit(a if i % 2 else b, rid, 10, 0.0, now=NOW) for i, rid in enumerate(ids))
            )
            assert sum(r.allowed for r in results) == 6  # six in all, whichever key asked
            assert {(r.reason, r.level) for r in results if not r.allowed} == {("rpm", "tenant")}
            # Another tenant is not touched by it.
            other = await limiter.admit(key(Limits(), "kc", tenant, tenant_id="t2"), "x", 10, 0.0, now=NOW)
            assert other.allowed

    run(go())


def test_tpm_counts_reserved_tokens_exactly(redis_prefix):
    async def go():
        async with _limiter(redis_prefix) as limiter:
            _, results = await _many(limiter, key(Limits(tpm=1000)), 50, tokens=100)
            assert sum(r.allowed for r in results) == 10
            too_big = await limiter.admit(key(Limits(tpm=1000)), "huge", 5000, 0.0, now=NOW + WINDOW_S)
            assert not too_big.allowed and too_big.reason == "tpm_exceeds_limit"

    run(go())


def test_settling_below_the_estimate_frees_tokens_for_others(redis_prefix):
    async def go():
        async with _limiter(redis_prefix) as limiter:
            scope = key(Limits(), tenant=Limits(tpm=300))
            ids, results = await _many(limiter, scope, 3, tokens=100)
            assert all(r.allowed for r in results)
            assert not (await limiter.admit(scope, "blocked", 100, 0.0, now=NOW)).allowed
            assert await limiter.settle("t1", "k1", ids[0], prompt_tokens=10, completion_tokens=10, cost_usd=0.0)
            assert (await limiter.admit(scope, "now-fits", 80, 0.0, now=NOW)).allowed

    run(go())


def test_parallel_slots_are_exact_and_released_on_settle(redis_prefix):
    async def go():
        async with _limiter(redis_prefix) as limiter:
            scope = key(Limits(max_parallel=3))
            ids, results = await _many(limiter, scope, 50)
            admitted = [rid for rid, r in zip(ids, results, strict=True) if r.allowed]
            assert len(admitted) == 3 and await limiter.inflight("t1", "k1") == 3
            await limiter.settle("t1", "k1", admitted[0], 1, 1, 0.0)
            assert await limiter.inflight("t1", "k1") == 2
            assert (await limiter.admit(scope, "another", 10, 0.0, now=NOW)).allowed

    run(go())


def test_budget_is_exact_under_concurrency_and_spent_is_real_cost(redis_prefix):
    async def go():
        async with _limiter(redis_prefix) as limiter:
            scope = key(Limits(budget_usd=1.0))
            ids, results = await _many(limiter, scope, 50, cost=0.3)
            admitted = [rid for rid, r in zip(ids, results, strict=True) if r.allowed]
            assert len(admitted) == 3
            assert {r.reason for r in results if not r.allowed} == {"budget"}
            for rid in admitted:
                await limiter.settle("t1", "k1", rid, 5, 5, 0.1)
            usage = await limiter.usage("t1", "k1")
            assert abs(usage["cost_usd"] - 0.3) < 1e-9 and usage["reserved_usd"] < 1e-9
            assert usage["requests"] == 3 and usage["prompt_tokens"] == 15
            assert (await limiter.usage("t1"))["requests"] == 3  # the tenant counts its keys' requests

    run(go())


def test_a_daily_budget_starts_again_the_next_utc_day(redis_prefix):
    async def go():
        async with _limiter(redis_prefix) as limiter:
            scope = key(Limits(), tenant=Limits(budget_usd=0.5, budget_window="daily"))
            assert (await limiter.admit(scope, "a", 10, 0.4, now=NOW)).allowed
            await limiter.settle("t1", "k1", "a", 5, 5, 0.4, now=NOW)
            refused = await limiter.admit(scope, "b", 10, 0.2, now=NOW + 60)
            assert not refused.allowed and (refused.reason, refused.level) == ("budget", "tenant")
            assert (await limiter.admit(scope, "c", 10, 0.2, now=NOW + DAY)).allowed  # a new day, a new budget
            total = key(Limits(budget_usd=0.5), "k2")  # a total budget never starts again
            assert (await limiter.admit(total, "d", 10, 0.4, now=NOW)).allowed
            await limiter.settle("t1", "k2", "d", 5, 5, 0.4, now=NOW)
            assert not (await limiter.admit(total, "e", 10, 0.2, now=NOW + 40 * DAY)).allowed

    run(go())


def test_settle_counts_once(redis_prefix):
    async def go():
        async with _limiter(redis_prefix) as limiter:
            await limiter.admit(key(Limits()), "r1", 10, 0.01, now=NOW)
            results = await asyncio.gather(*(limiter.settle("t1", "k1", "r1", 3, 4, 0.01) for _ in range(10)))
            assert sum(results) == 1
            assert (await limiter.usage("t1", "k1"))["requests"] == 1

    run(go())


def test_a_crash_between_reserve_and_settle_leaks_nothing(redis_prefix):
    async def go():
        async with _limiter(redis_prefix, lease_s=30) as limiter:
            scope = key(Limits(max_parallel=1, budget_usd=1.0), tenant=Limits(max_parallel=1))
            assert (await limiter.admit(scope, "crashed", 10, 0.9, now=NOW)).allowed
            # The holder dies without settling: the slot and the reserved money are held until the lease ends ...
            blocked = await limiter.admit(scope, "r2", 10, 0.5, now=NOW + 10)
            assert not blocked.allowed and blocked.reason == "max_parallel"
            # ... then the next admission of any key of the tenant reclaims them.
            other_key = key(Limits(), "k2", tenant=Limits(max_parallel=1))
            assert (await limiter.admit(other_key, "r3", 10, 0.5, now=NOW + 31)).allowed
            assert await limiter.inflight("t1", "k1") == 0 and await limiter.inflight("t1") == 1
            assert (await limiter.usage("t1", "k1"))["reserved_usd"] < 1e-9
            # A late settle of the reclaimed request counts nothing.
            assert not await limiter.settle("t1", "k1", "crashed", 10, 10, 0.9)

    run(go())


def test_batch_reservations_take_budget_but_no_rate_or_parallel_place(redis_prefix):
    async def go():
        async with _limiter(redis_prefix) as limiter:
            scope = key(Limits(rpm=1, max_parallel=1, budget_usd=1.0))
            _, results = await _many(limiter, scope, 5, cost=0.3, interactive=False)
            assert sum(r.allowed for r in results) == 3  # the budget holds
            assert (await limiter.admit(scope, "chat", 10, 0.05, now=NOW)).allowed  # rpm and parallel untouched
            # Released without a charge (the batch commit charges the real cost itself).
            assert await limiter.settle("t1", "k1", "chat", 1, 1, 0.0)
            usage = await limiter.usage("t1", "k1")
            assert usage["requests"] == 1 and abs(usage["reserved_usd"] - 0.9) < 1e-9

    run(go())


def test_a_retried_admission_is_not_counted_twice(redis_prefix):
    async def go():
        async with _limiter(redis_prefix) as limiter:
            scope = key(Limits(rpm=1))
            assert (await limiter.admit(scope, "same", 10, 0.0, now=NOW)).allowed
            again = await limiter.admit(scope, "same", 10, 0.0, now=NOW)
            assert again.allowed and again.reason == "duplicate"
            assert not (await limiter.admit(scope, "other", 10, 0.0, now=NOW)).allowed

    run(go())
