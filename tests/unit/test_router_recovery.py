"""The router and engine faults, with in-process providers: a self-hosted engine whose replica is being replaced
is waited for (up to the deadline) and continues the answer; an engine that stops yielding mid-answer (wedged)
is a failure after its idle timeout, failed over to the next provider with nothing repeated."""

import asyncio
import time

import pytest

from core.errors import ServiceUnavailable
from core.pricing import Price
from deployments.providers.base import EngineDelta, GenerationParams, ProviderError
from deployments.providers.retry import RetryPolicy
from deployments.providers.router import ProviderRouter, RoutedStream
from deployments.providers.routing import LoadStats, strategy

PARAMS = GenerationParams(max_tokens=20)
HI = [{"role": "user", "content": "Count."}]


class Engine:
    """Streams words; `dies_after` words in, its replica dies; it is back `down_s` later; `wedges_after`: it
    stops yielding (and never ends)."""

    kind = "self_hosted"

    def __init__(self, name, words, dies_after=None, down_s=0.0, wedges_after=None):
        self.name, self.words, self.price = name, words, Price()
        self.dies_after, self.down_s, self.wedges_after = dies_after, down_s, wedges_after
        self.back_at = 0.0
        self.requests: list[list[dict]] = []

    def serves(self, model):
        return True

    def refuses(self, params):
        return None

    async def stream(self, model, messages, params, request_id, affinity=None):
        self.requests.append(messages)
        if time.monotonic() < self.back_at:
            raise ProviderError(self.name, "model replica unavailable: ActorDiedError", recovering=True)
        sent = messages[-1]["content"] if messages[-1]["role"] == "assistant" else ""
        for i, word in enumerate(w for w in self.words if not sent.endswith(w) and w not in sent.split()):
            if self.dies_after is not None and i == self.dies_after:
                self.dies_after, self.back_at = None, time.monotonic() + self.down_s
                raise ProviderError(self.name, "engine failed: EngineDeadError", recovering=True)
            if self.wedges_after is not None and i == self.wedges_after:
                await asyncio.sleep(3600)
            yield [EngineDelta(text=word)]
        yield [EngineDelta(finish_reason="stop")]

    async def check_health(self):
        return None

    async def aclose(self):
        return None


def router(providers, deadline_s=20.0, idle_s=0.5):
    return ProviderRouter(
        providers,
        strategy("ordered"),
        LoadStats(4, 2.0),
        None,
        RetryPolicy(2, 0.01, 0.05),
        deadline_s,
        {p.name: 5.0 for p in providers},
        None,
        {p.name: idle_s for p in providers},
    )


async def answer(r):
    out, text = RoutedStream(), ""
    async for deltas in r.stream("m", HI, PARAMS, "req", out):
        text += "".join(d.text for d in deltas)
    return text, out


def test_an_engine_being_replaced_is_waited_for_and_continues_the_answer():
    engine = Engine("self-hosted", ["one", " two", " three", " four"], dies_after=2, down_s=1.5)
    started = time.monotonic()
    text, _ = asyncio.run(answer(router([engine])))
    assert text == "one two three four"  # nothing lost, nothing repeated
    assert time.monotonic() - started >= 1.5  # it waited for the replacement
    assert engine.requests[-1][-1] == {"role": "assistant", "content": "one two"}  # a continuation


def test_waiting_for_a_replica_stops_at_the_deadline():
    engine = Engine("self-hosted", ["one", " two"], dies_after=1, down_s=60)
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable):
        asyncio.run(answer(router([engine], deadline_s=2.0)))
    assert time.monotonic() - started < 6


def test_a_wedged_engine_is_failed_over_after_its_idle_timeout():
    wedged = Engine("self-hosted", ["one", " two", " three"], wedges_after=2)
    fallback = Engine("fallback", ["one", " two", " three"])
    fallback.kind = "openai"
    started = time.monotonic()
    text, out = asyncio.run(answer(router([wedged, fallback], idle_s=0.5)))
    assert text == "one two three" and out.providers == ["self-hosted", "fallback"]
    assert any("stalled" in f for f in out.failures)
    assert time.monotonic() - started < 5


def test_a_takeover_that_fails_over_continues_one_assistant_message():
    """A takeover starts with the journaled text as an assistant prefill; when its engine then dies, the
    continuation extends that same message (the engine continues only the last one), not a second one."""
    engine = Engine("self-hosted", ["one", " two", " three", " four"], dies_after=1, down_s=0.5)
    prefill = [*HI, {"role": "assistant", "content": "one"}]

    async def go():
        out, text = RoutedStream(), ""
        async for deltas in router([engine]).stream("m", prefill, PARAMS, "req", out):
            text += "".join(d.text for d in deltas)
        return text

    assert asyncio.run(go()) == " two three four"
    assert engine.requests[-1] == [*HI, {"role": "assistant", "content": "one two"}]


def test_a_stopping_replica_counts_as_gone_and_a_request_error_does_not():
    from core.errors import NotFound
    from deployments.answer_run import stopping_error
    from deployments.answer_stream import replica_gone

    assert replica_gone(stopping_error())  # the ingress takes the answer over on another replica
    assert not replica_gone(ServiceUnavailable("the engine is down"))
    assert not replica_gone(NotFound("no such model"))
