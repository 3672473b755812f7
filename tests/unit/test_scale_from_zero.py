"""A self-hosted model scaled to zero (engine.min_replicas: 0): the router wakes it and lets a managed provider
answer meanwhile, instead of holding the client through a cold start; once a replica runs, it answers again."""

import asyncio
import time

from deployments.providers.base import GenerationParams
from deployments.providers.router import RoutedStream
from tests.unit.test_router_recovery import HI, Engine, router

PARAMS = GenerationParams(max_tokens=20)


class Sleeping(Engine):
    """A self-hosted engine with no running replica until woken; it runs `start_s` after the wake-up."""

    def __init__(self, name, words, replicas=0):
        super().__init__(name, words)
        self.replicas = replicas
        self.wakes = 0

    def cold(self):
        return self.replicas == 0

    def wake(self):
        self.wakes += 1


class Managed(Engine):
    kind = "openai"


async def _answer(r):
    out = RoutedStream()
    async for _ in r.stream("m", HI, PARAMS, "req", out):
        pass
    return out


def test_a_request_at_zero_replicas_is_answered_by_managed_and_wakes_the_model():
    own, managed = Sleeping("self-hosted", ["own"]), Managed("managed", ["managed"])
    out = asyncio.run(_answer(router([own, managed])))
    assert out.text == "managed" and out.providers == ["managed"]
    assert own.wakes == 1 and own.requests == []  # woken, not made to answer
    assert "scaled to zero" in out.reason

    own.replicas = 1  # the replica is up: self-hosted answers again, and nothing wakes it
    out = asyncio.run(_answer(router([own, managed])))
    assert out.text == "own" and out.providers == ["self-hosted"] and own.wakes == 1


def test_with_no_managed_provider_the_request_goes_to_the_sleeping_model():
    own = Sleeping("self-hosted", ["own"])
    out = asyncio.run(_answer(router([own])))
    assert out.text == "own" and own.wakes == 0  # its request is the demand that starts a replica


class Stranded(Sleeping):
    """Takes the request, then its only replica is lost before the first token: nothing ever comes."""

    def __init__(self, name, words):
        super().__init__(name, words, replicas=1)

    async def stream(self, model, messages, params, request_id, affinity=None):
        self.requests.append(messages)
        self.replicas = 0  # the node under the replica died; Serve stops listing it
        await asyncio.sleep(3600)
        yield []


def test_a_request_waiting_on_a_replica_that_is_lost_fails_over_at_once_not_after_the_first_token_timeout():
    own, managed = Stranded("self-hosted", ["own"]), Managed("managed", ["managed"])
    r = router([own, managed])
    r._first_token_timeout_s = {"self-hosted": 30.0, "managed": 5.0}
    r._breaker = breaker = Breaker()
    started = time.monotonic()
    out = asyncio.run(_answer(r))
    took = time.monotonic() - started
    assert out.text == "managed" and out.providers == ["managed"]
    assert took < 3, took  # seen within 1.5 s, not after 30 s (nor after four such attempts)
    assert own.requests and out.attempts[0] == ("self-hosted", False)
    # Not the model's fault: its breaker is not charged, so it takes traffic again once a replica runs.
    assert breaker.failures == [] and breaker.successes == ["managed"]


class Breaker:
    def __init__(self):
        self.failures, self.successes = [], []

    async def allow(self, name):
        return "closed"

    async def failure(self, name):
        self.failures.append(name)

    async def success(self, name):
        self.successes.append(name)
