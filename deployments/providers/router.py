"""The failover loop: try providers in the strategy's order, skip those whose breaker is open, retry each as
the policy says, and when one fails after tokens were streamed, let the next continue from the text already
sent (as an assistant prefill), so the caller sees one answer with nothing repeated or lost.

`RoutedStream` yields lists of EngineDelta and keeps what the orchestrator reports afterwards: the providers
that answered, usage and cost summed over every attempt that produced output, and the routing decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from opentelemetry.trace import Span
from redis.exceptions import RedisError

from core.errors import InvalidRequest, ServiceUnavailable
from core.models import Usage
from core.tokens import TokenCounter
from deployments.providers.base import EngineDelta, GenerationParams, Provider, ProviderError
from deployments.providers.retry import RetryPolicy, open_stream
from deployments.providers.routing import LoadStats, Route, Strategy
from observability import tracing
from state.breaker import CircuitBreaker

logger = logging.getLogger("llmserve.router")


@dataclass
class Leg:
    """One provider's share of an answer. `usage` is what the provider reported, or, when it stopped before
    reporting, the exact count of what it was sent and what it produced (set when the leg ends)."""

    provider: str
    text: str = ""  # the first choice's text: what another provider continues
    generated: str = ""  # everything it wrote (every choice, tool-call arguments): counted when it reported no usage
    produced: bool = False  # any output (text or tool calls, in any choice)
    usage: Usage | None = None
    cost_usd: float = 0.0


@dataclass
class RoutedStream:
    reason: str = ""
    legs: list[Leg] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    failed: Counter[str] = field(default_factory=Counter)  # failed attempts per provider
    attempts: list[tuple[str, bool]] = field(default_factory=list)  # (provider, succeeded), in order
    finish_reason: str | None = None

    @property
    def providers(self) -> list[str]:
        return [leg.provider for leg in self.legs]

    @property
    def finisher(self) -> str:
        """The provider whose attempt ended the answer well, or 'none' (failed, cancelled, or never answered)."""
        return self.attempts[-1][0] if self.attempts and self.attempts[-1][1] else "none"

    def failovers(self) -> list[tuple[str, str]]:
        """(from, to) each time a failed attempt was followed by an attempt of another provider."""
        return [
            (before, after)
            for (before, ok), (after, _) in zip(self.attempts, self.attempts[1:], strict=False)
            if not ok and before != after
        ]

    @property
    def text(self) -> str:
        return "".join(leg.text for leg in self.legs)

    def usage(self) -> Usage:
        """The prompt as the first provider saw it, and the completion tokens of every leg."""
        prompt = next((leg.usage.prompt_tokens for leg in self.legs if leg.usage), 0)
        completion = sum(leg.usage.completion_tokens for leg in self.legs if leg.usage)
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    @property
    def cost_usd(self) -> float:
        return sum(leg.cost_usd for leg in self.legs)


class ProviderRouter:
    def __init__(
        self,
        providers: list[Provider],
        strategy: Strategy,
        stats: LoadStats,
        breaker: CircuitBreaker | None,
        policy: RetryPolicy,
        deadline_s: float,
        first_token_timeout_s: dict[str, float] | None = None,
        tokens: TokenCounter | None = None,
        idle_timeout_s: dict[str, float] | None = None,
    ):
        self.providers = providers
        self.stats = stats
        self._strategy = strategy
        self._breaker = breaker
        self._policy = policy
        self._deadline_s = deadline_s
        self._first_token_timeout_s = first_token_timeout_s or {}
        self._idle_timeout_s = idle_timeout_s or {}
        self._tokens = tokens or TokenCounter()

    async def _allowed(self, provider: Provider) -> str:
        """The provider's breaker: `open` skips it; `clean` (no failure counted) needs no success recorded after."""
        if self._breaker is None:
            return "clean"
        try:
            return await self._breaker.allow(provider.name)
        except RedisError:  # no Redis: no breaker, still serve
            return "closed"

    async def _record(self, provider: Provider, ok: bool) -> None:
        if self._breaker is None:
            return
        try:
            await (self._breaker.success(provider.name) if ok else self._breaker.failure(provider.name))
        except RedisError:
            logger.warning("circuit breaker state for %s not recorded: Redis unavailable", provider.name)

    async def _failed(self, provider: Provider, out: RoutedStream, span: Span, error: BaseException) -> None:
        span.add_event("attempt failed", {"llmserve.error": str(error)[:300]})
        out.failed[provider.name] += 1
        out.attempts.append((provider.name, False))
        if not isinstance(error, ProviderError) or error.breaker:
            await self._record(provider, ok=False)

    async def stream(
        self,
        model: str,
        messages: list[dict[str, Any]] | str,
        params: GenerationParams,
        request_id: str,
        out: RoutedStream,
        affinity: str | None = None,
    ) -> AsyncIterator[list[EngineDelta]]:
        """`affinity`: the conversation, for the self-hosted replicas' cache-aware routing."""
        serving = [p for p in self.providers if p.serves(model)]
        if isinstance(messages, str):  # a raw completions prompt: only providers with a completions API
            serving = [p for p in serving if getattr(p, "completes", False)]
            if not serving:
                raise InvalidRequest(f"no provider of model {model!r} serves /v1/completions", param="model")
        candidates = capable(model, serving, params)
        route = _woken(self._strategy.order(candidates, self.stats, model))
        out.reason = route.reason
        queue = list(route.providers)
        retried_mid_stream: set[str] = set()
        recovering: list[Provider] = []  # failed because their replica is being replaced: tried again later
        coming_back: set[str] = set()
        deadline = time.monotonic() + self._deadline_s
        wait_s = 0.5
        while (queue or recovering) and time.monotonic() < deadline:
            if not queue:  # only providers that are coming back are left: wait for them, up to the deadline
                await asyncio.sleep(min(wait_s, max(0.0, deadline - time.monotonic())))
                wait_s = min(wait_s * 2, 4.0)
                queue, recovering = recovering, []
            provider = queue.pop(0)
            breaker = await self._allowed(provider)
            if breaker == "open":
                out.failures.append(f"{provider.name}: circuit open")
                if provider.name in coming_back:  # its breaker's probe will let it back in
                    recovering.append(provider)
                continue
            if params.structured and any(leg.produced for leg in out.legs):
                raise interrupted(f"its provider {out.legs[-1].provider} failed")
            sent = out.text
            attempt_messages = continuing(messages, sent) if sent else messages
            done = out.usage().completion_tokens
            attempt_params = replace(params, max_tokens=max(1, params.max_tokens - done)) if sent else params
            leg = Leg(provider.name)
            failed_before = out.failed[provider.name]  # (its retries within this attempt count failures too)
            self.stats.enter(provider.name)
            started = time.perf_counter()
            # A span per attempt (its retries are events), current while the attempt opens: a managed
            # provider gets it as its traceparent. Ended by hand: the stream crosses yields.
            attempt = tracing.start("provider.attempt", provider=provider.name, model=model, sent_chars=len(sent))
            if out.attempts and not out.attempts[-1][1]:
                attempt.add_event("failover", {"llmserve.from_provider": out.attempts[-1][0]})
            outcome = "stopped"  # closed or cancelled before it ended
            try:
                try:
                    with tracing.current(attempt):
                        first, rest = await open_stream(
                            provider.name,
                            _starter(
                                provider,
                                model,
                                attempt_messages,
                                attempt_params,
                                f"{request_id}-{len(out.failures)}",
                                affinity,
                            ),
                            self._policy,
                            deadline,
                            self._first_token_timeout_s.get(provider.name, 30.0),
                            lambda exc, p=provider, s=attempt: self._failed(p, out, s, exc),
                            # Waiting on a model with no running replica (its node lost, or scaled to zero)
                            # ends as soon as that is known, when another kind of provider can answer.
                            _gone(provider, queue),
                        )
                except ProviderError as exc:
                    outcome = "rejected" if exc.client_error else "error"
                    out.failures.append(str(exc))
                    if exc.recovering and provider not in recovering:
                        recovering.append(provider)
                        coming_back.add(provider.name)
                    if exc.client_error:
                        # What the provider said goes to the log, not to the client (it may echo anything).
                        logger.warning("request %s: %s rejected it: %s", request_id, provider.name, exc)
                        status = f" (HTTP {exc.status})" if exc.status else ""
                        raise InvalidRequest(f"the request was rejected by provider {provider.name}{status}") from exc
                    continue
                self.stats.observe_ttft(provider.name, time.perf_counter() - started)
                out.legs.append(leg)
                try:
                    batch = first
                    while True:
                        for d in batch:
                            leg.text += d.text if d.index == 0 else ""
                            leg.produced |= d.output
                            leg.generated += d.generated
                            leg.usage = d.usage or leg.usage
                            out.finish_reason = d.finish_reason or out.finish_reason
                        yield batch
                        batch = await self._next(provider, rest)
                except StopAsyncIteration:
                    pass
                except ProviderError as exc:
                    outcome = "error"
                    await self._failed(provider, out, attempt, exc)
                    out.failures.append(f"{exc} (after {len(leg.text)} characters)")
                    logger.warning("request %s: %s failed mid-stream; failing over", request_id, provider.name)
                    if exc.recovering:  # its replica is being replaced: it continues once it is back
                        recovering.append(provider)
                        coming_back.add(provider.name)
                    elif provider.name not in retried_mid_stream:  # it may still continue, after the others
                        retried_mid_stream.add(provider.name)
                        queue.append(provider)
                    continue
                finally:
                    self._settle_leg(provider, leg, attempt_messages)
                out.attempts.append((provider.name, True))
                outcome = "ok"
                # A probe closes its breaker; a success clears the failures counted, its own retries' included.
                if breaker != "clean" or out.failed[provider.name] > failed_before:
                    await self._record(provider, ok=True)
                return
            finally:
                self.stats.leave(provider.name)
                # Only a provider's failure is an error; a client that left, or a 4xx, is an outcome.
                tracing.end(attempt, "failed" if outcome == "error" else None, outcome=outcome, chars=len(leg.text))
        logger.warning("request %s: no provider answered: %s", request_id, "; ".join(out.failures) or "none serves it")
        tried = ", ".join(dict.fromkeys(p.name for p in route.providers)) or "none serves this model"
        raise ServiceUnavailable(
            f"no model provider could answer (tried: {tried}); retry shortly",
            code="providers_unavailable",
            retry_after_s=1,
        )

    async def _next(self, provider: Provider, rest: AsyncIterator[list[EngineDelta]]) -> list[EngineDelta]:
        """The next deltas; a provider that goes quiet mid-answer for its idle timeout has stalled (a wedged
        engine): that is a failure like any other, failed over from."""
        idle_s = self._idle_timeout_s.get(provider.name, 30.0)
        try:
            async with asyncio.timeout(idle_s):  # wait_for would make a task per token
                return await anext(rest)
        except TimeoutError as exc:
            with contextlib.suppress(Exception):
                await rest.aclose()
            raise ProviderError(provider.name, f"stalled: no token for {idle_s:g} s", recovering=True) from exc

    def _settle_leg(self, provider: Provider, leg: Leg, messages: list[dict[str, Any]]) -> None:
        """The leg's usage (counted exactly when the provider stopped before reporting it) and its cost."""
        if leg.usage is None:
            prompt, completion = self._tokens.count_messages(messages), self._tokens.count_text(leg.generated)
            leg.usage = Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
        leg.cost_usd = provider.price.cost(leg.usage.prompt_tokens, leg.usage.completion_tokens)


def interrupted(why: str) -> ServiceUnavailable:
    """An answer with tool calls, a response_format or several choices is not continued from its text (a grammar
    cannot resume inside a half-written call): cut off mid-way, it ends with this error."""
    return ServiceUnavailable(
        f"the answer was cut off mid-way ({why}); an answer with tool calls, a response_format or several choices "
        "cannot be continued elsewhere: retry it",
        code="answer_interrupted",
        retry_after_s=1,
    )


def capable(model: str, providers: list[Provider], params: GenerationParams) -> list[Provider]:
    """The providers that honour every field of `params`; none while some serve the model: 400 naming a field."""
    able = [p for p in providers if p.refuses(params) is None]
    if providers and not able:
        field = providers[0].refuses(params)
        raise InvalidRequest(
            f"{field} is not supported by the providers of model {model!r}", param=field, code="unsupported_parameter"
        )
    return able


def _woken(route: Route) -> Route:
    """A self-hosted model scaled to zero answers only after a cold start: it is woken, and the managed
    providers answer meanwhile. With no managed provider the request waits for it (it is the demand that
    starts a replica)."""
    cold = [p for p in route.providers if p.kind == "self_hosted" and _is_cold(p)]
    if not cold or all(p.kind == "self_hosted" for p in route.providers):
        return route
    for provider in cold:
        provider.wake()
    names = ", ".join(p.name for p in cold)
    warm = [p for p in route.providers if p not in cold]
    return Route(warm + cold, f"{names}: no running replica (scaled to zero, starting or lost): woken, managed first")


def _is_cold(provider: Provider) -> bool:
    cold = getattr(provider, "cold", None)  # self-hosted providers that can scale to zero (ServeLLMEngine)
    return bool(cold is not None and cold())


def _gone(provider: Provider, rest: list[Provider]) -> Callable[[], bool] | None:
    """For a self-hosted attempt with another kind of provider still to try: whether its model has no running
    replica left (its node died, or it scaled to zero under the request), which ends the wait for a first token."""
    if getattr(provider, "cold", None) is None or not any(p.kind != provider.kind for p in rest):
        return None
    return lambda: _is_cold(provider)


def _starter(
    provider: Provider,
    model: str,
    messages: list[dict[str, Any]],
    params: GenerationParams,
    request_id: str,
    affinity: str | None = None,
) -> Callable[[], AsyncIterator[list[EngineDelta]]]:
    if affinity and provider.kind == "self_hosted":  # only our replicas have a KV cache to route by
        return lambda: provider.stream(model, messages, params, request_id, affinity=affinity)
    return lambda: provider.stream(model, messages, params, request_id)


async def close_all(providers: list[Provider]) -> None:
    await asyncio.gather(*(p.aclose() for p in providers), return_exceptions=True)


def continuing(messages: list[dict[str, Any]] | str, sent: str) -> list[dict[str, Any]] | str:
    """The prompt with the text sent so far as the assistant's message to continue: appended to the assistant
    prefill a takeover began with (one trailing assistant message: the engine continues only the last). A raw
    completions prompt simply goes on with the text."""
    if isinstance(messages, str):
        return messages + sent
    if messages and messages[-1].get("role") == "assistant":
        return [*messages[:-1], {**messages[-1], "content": messages[-1]["content"] + sent}]
    return [*messages, {"role": "assistant", "content": sent}]
