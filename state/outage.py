"""Writes that must happen even when Redis is briefly away (a settle, a turn commit, a journal append): retried
with backoff until Redis answers, for as long as the request's lease, so nothing goes unbilled or unstored
because of a blip. Only redis-py's own errors of an outage are retried (they are not the built-in ConnectionError;
BusyLoadingError and MasterNotFoundError are ConnectionErrors)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis import exceptions as rx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

T = TypeVar("T")
# Redis away or moving (down, frozen, loading its AOF, a replica during a Sentinel failover, a slot moving): these
# pass. Other errors (a script error, out of memory under noeviction, a wrong type) would not, and are raised.
TRANSIENT = (rx.ConnectionError, rx.TimeoutError, rx.ReadOnlyError, rx.TryAgainError)


async def retry_through_outage(write: Callable[[], Awaitable[T]], within_s: float) -> T:
    try:  # the usual case, without building a retry loop (a journal append runs this per chunk batch)
        return await write()
    except TRANSIENT:
        pass
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(TRANSIENT),
        wait=wait_exponential(multiplier=0.1, max=2.0),
        stop=stop_after_delay(within_s),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await write()
    raise AssertionError("unreachable: tenacity returns or raises")
