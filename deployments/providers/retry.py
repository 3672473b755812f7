"""Opening a provider stream with retries: exponential backoff with full jitter (tenacity), a provider's
Retry-After honoured instead when it sends one, only for retryable failures, never past the request deadline."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from deployments.providers.base import EngineDelta, ProviderError


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4
    base_s: float = 0.25
    max_wait_s: float = 8.0


class wait_retry_after(wait_base):
    """The provider's Retry-After when it gave one, else the fallback (full-jitter exponential)."""

    def __init__(self, fallback: wait_base):
        self._fallback = fallback

    def __call__(self, retry_state) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, ProviderError) and exc.retry_after_s is not None:
            return exc.retry_after_s
        return self._fallback(retry_state)


class stop_at_deadline(stop_base):
    """Stop when the next wait would end past the deadline (time.monotonic())."""

    def __init__(self, deadline: float):
        self._deadline = deadline

    def __call__(self, retry_state) -> bool:
        return time.monotonic() + retry_state.upcoming_sleep >= self._deadline


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, ProviderError) and exc.retryable


async def open_stream(
    name: str,
    start: Callable[[], AsyncIterator[list[EngineDelta]]],
    policy: RetryPolicy,
    deadline: float,
    first_token_timeout_s: float,
    on_failure: Callable[[ProviderError], Awaitable[None]],
    gone: Callable[[], bool] | None = None,
) -> tuple[list[EngineDelta], AsyncIterator[list[EngineDelta]]]:
    """Start a stream and wait for its first deltas, retrying as the policy says. Returns the first deltas and
    the rest of the stream. Raises the last ProviderError when the attempts, or the deadline, run out.
    `gone`: checked while waiting for the first deltas; once true (the provider has nothing left to serve with,
    e.g. no running replica) the wait ends as a failure of a provider that is coming back, not retried here."""
    retrying = AsyncRetrying(
        retry=retry_if_exception(_retryable),
        wait=wait_retry_after(wait_random_exponential(multiplier=policy.base_s, max=policy.max_wait_s)),
        stop=stop_after_attempt(policy.max_attempts) | stop_at_deadline(deadline),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            stream = start()
            timeout = max(0.001, min(first_token_timeout_s, deadline - time.monotonic()))
            try:
                first = await _first(stream, timeout, gone)
            except _Gone as exc:
                await _close(stream)
                # Not the provider's fault (its node died, or it scaled down under the request): its breaker is
                # not charged, so it takes traffic again as soon as a replica runs.
                error = ProviderError(
                    name, "no running replica left to answer", retryable=False, recovering=True, breaker=False
                )
                await on_failure(error)
                raise error from exc
            except TimeoutError as exc:
                await _close(stream)
                error = ProviderError(name, "no first token in time", status=408)
                await on_failure(error)
                raise error from exc
            except StopAsyncIteration as exc:
                error = ProviderError(name, "the stream ended without output")
                await on_failure(error)
                raise error from exc
            except ProviderError as exc:
                await _close(stream)
                await on_failure(exc)
                raise
            return first, stream
    raise AssertionError("unreachable: tenacity either returns or raises")


class _Gone(Exception):
    pass


GONE_CHECKS = 3  # gone() seen true this many times in a row (0.5 s apart): a blip in Serve's list is not a loss


async def _first(stream: AsyncIterator[list[EngineDelta]], timeout: float, gone: Callable[[], bool] | None) -> Any:
    """The stream's first item within `timeout`; raises _Gone once `gone()` has been true for GONE_CHECKS checks
    in a row while waiting."""
    if gone is None:
        return await asyncio.wait_for(anext(stream), timeout)
    waiting = asyncio.ensure_future(anext(stream))
    end = time.monotonic() + timeout
    seen = 0
    try:
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError
            done, _ = await asyncio.wait({waiting}, timeout=min(0.5, left))
            if done:
                return waiting.result()
            seen = seen + 1 if gone() else 0
            if seen >= GONE_CHECKS:
                raise _Gone
    finally:
        if not waiting.done():
            waiting.cancel()
            await asyncio.wait({waiting})  # its end, without swallowing a cancellation of this task


async def _close(stream: AsyncIterator) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):  # closing a failed stream must not hide why it failed
            await aclose()
