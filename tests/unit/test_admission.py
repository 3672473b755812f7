"""Admission at the door: the per-model capacity gate, a request's ticket (slot + reservation given back exactly
once, whatever ends the request), and the body limit for bodies sent without a Content-Length."""

import asyncio

import pytest

from core.errors import PayloadTooLarge, RateLimited, ServiceUnavailable
from core.keys import key_hash
from core.models import ChatRequest
from core.pricing import Price
from core.setting_groups import EngineSettings, LimitsSettings
from deployments.admission import AdmissionGate, model_capacity
from deployments.gateway import Gateway, Principal
from deployments.middleware import _bounded_body
from state.api_keys import Limits
from tests.conftest import redis_client

REQUEST = ChatRequest(model="m", messages=[{"role": "user", "content": "hello there"}], max_tokens=10)


def test_the_gate_rejects_beyond_capacity_per_model_and_reopens_on_release():
    gate = AdmissionGate(capacity=2, retry_after_s=0.2)
    first, second = gate.enter("a"), gate.enter("a")
    other = gate.enter("b")  # models are bounded separately
    with pytest.raises(ServiceUnavailable) as info:
        gate.enter("a")
    assert info.value.status == 503 and info.value.code == "overloaded"
    assert info.value.retry_after_s == 1  # whole seconds, as Retry-After needs
    first.release()
    first.release()  # idempotent: a double release must not open a second place
    third = gate.enter("a")
    with pytest.raises(ServiceUnavailable):
        gate.enter("a")
    for slot in (second, third, other):
        slot.release()
    assert gate.inflight("a") == 0 and gate.inflight("b") == 0


def test_capacity_defaults_to_what_the_engine_replicas_hold():
    engine = EngineSettings(max_replicas=3, max_ongoing_requests=10, max_queued_requests=6)
    assert model_capacity(LimitsSettings(), engine, ingress_replicas=2) == 18  # (3 * 10 + 6) / 2 ingress replicas
    assert model_capacity(LimitsSettings(max_inflight_per_model=5), engine, ingress_replicas=2) == 5


def _gateway(client, prefix, capacity=10):
    return Gateway(
        client,
        master_key_hash=key_hash("sk-master"),
        redis_prefix=prefix,
        limits=LimitsSettings(),
        price=Price(0.1, 0.2),
        capacity=capacity,
    )


async def _settled(gateway):
    await asyncio.gather(*list(gateway._pending))


def test_a_ticket_that_never_began_settles_once_and_frees_its_place(redis_prefix):
    async def main():
        async with redis_client() as client:
            gateway = _gateway(client, redis_prefix, capacity=1)
            principal = Principal("k1", "team", "t1", False, Limits(max_parallel=1), Limits())
            ticket = await gateway.open(principal, REQUEST)
            with pytest.raises(ServiceUnavailable):  # the model's one place is taken
                await gateway.open(principal, REQUEST)
            ticket.finish()
            ticket.finish()  # the stream's own finally and the response's close both call it
            await _settled(gateway)
            usage = await gateway.limiter.usage("t1", "k1")
            assert (usage["requests"], usage["prompt_tokens"], usage["completion_tokens"]) == (1, 0, 0)
            assert await gateway.limiter.inflight("t1", "k1") == 0
            assert gateway.admission.inflight("m") == 0

    asyncio.run(main())


def test_a_client_gone_before_the_first_token_leaves_the_reservation_to_the_run_that_began(redis_prefix):
    """The client left while its answer was queued: the run (detached, it goes on) settles the exact usage, so the
    ticket must not settle it as nothing first; when no answer began, the ticket gives it back."""

    async def main():
        async with redis_client() as client:
            gateway = _gateway(client, redis_prefix)
            principal = Principal("k3", "team", "t1", False, Limits(), Limits())
            began = await gateway.open(principal, REQUEST)
            began.answer_started = lambda: _true()
            never = await gateway.open(principal, REQUEST)
            never.answer_started = lambda: _false()
            began.finish()
            never.finish()
            assert gateway.admission.inflight("m") == 0  # both places are free at once
            await _settled(gateway)
            assert await gateway.limiter.inflight("t1", "k3") == 1  # the run's, until it settles
            assert await gateway.limiter.settle("t1", "k3", began.reservation_id, 10, 5, 0.0)  # the run's settle counts

    asyncio.run(main())


async def _true() -> bool:
    return True


async def _false() -> bool:
    return False


def test_a_request_refused_by_its_key_limits_keeps_no_place(redis_prefix):
    async def main():
        async with redis_client() as client:
            gateway = _gateway(client, redis_prefix)
            principal = Principal("k2", "team", "t1", False, Limits(rpm=1), Limits())
            (await gateway.open(principal, REQUEST)).finish()
            with pytest.raises(RateLimited):
                await gateway.open(principal, REQUEST)
            await _settled(gateway)
            assert gateway.admission.inflight("m") == 0

    asyncio.run(main())


def test_an_answer_that_began_is_settled_by_its_run_and_one_that_never_did_settles_nothing(redis_prefix):
    from core.models import ChatChunk, ChunkChoice, Delta

    def chunk(text):
        return ChatChunk(id="c", created=0, model="m", choices=[ChunkChoice(delta=Delta(content=text))])

    async def answer():
        yield [(1, chunk("The capital"))]
        raise ConnectionError("the client went away")

    async def main():
        async with redis_client() as client:
            gateway = _gateway(client, redis_prefix)
            principal = Principal("k3", "team", "t1", False, Limits(max_parallel=2), Limits())
            began = await gateway.open(principal, REQUEST)
            with pytest.raises(ConnectionError):
                async for _ in began.stream(answer()):
                    pass
            never = await gateway.open(principal, REQUEST)
            never.finish()  # refused by the orchestrator before any output, say
            await _settled(gateway)
            assert gateway.admission.inflight("m") == 0  # both places given back
            # The one that began is still reserved: its run settles it with the exact usage (answer_run.py).
            assert await gateway.limiter.inflight("t1", "k3") == 1
            assert (await gateway.limiter.usage("t1", "k3"))["requests"] == 1  # the other: settled, as nothing
            assert (await gateway.limiter.usage("t1", "k3"))["completion_tokens"] == 0

    asyncio.run(main())


def _receiver(parts):
    messages = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return receive


def test_a_chunked_body_over_the_limit_is_refused_and_one_under_it_is_replayed_whole():
    chunked = {"transfer-encoding": "chunked"}

    async def main():
        with pytest.raises(PayloadTooLarge):
            await _bounded_body(chunked, _receiver([b"x" * 600, b"x" * 600]), limit=1000)
        receive = await _bounded_body(chunked, _receiver([b"ab", b"cd", b""]), limit=1000)
        assert await receive() == {"type": "http.request", "body": b"abcd", "more_body": False}
        assert (await receive())["type"] == "http.disconnect"
        with pytest.raises(PayloadTooLarge):
            await _bounded_body({"content-length": "1001"}, _receiver([b""]), limit=1000)

    asyncio.run(main())


def test_an_adapters_requests_count_against_its_base_models_deployment_and_each_model_has_its_capacity():
    gate = AdmissionGate(4, 0.2, capacities={"base": 2, "other": 1}, deployments={"base:a": "base", "a": "base"})
    slots = [gate.enter("base"), gate.enter("a")]
    with pytest.raises(ServiceUnavailable, match="'base' is at capacity \\(2"):
        gate.enter("base:a")
    slots.append(gate.enter("other"))
    with pytest.raises(ServiceUnavailable):
        gate.enter("other")
    assert gate.inflight("a") == 2 and gate.capacity_of("base:a") == 2 and gate.capacity_of("managed") == 4
    for slot in slots:
        slot.release()
    assert gate.total() == 0
