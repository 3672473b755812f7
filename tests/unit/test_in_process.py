"""The orchestrator in the ingress's own process (server.orchestrator_in_ingress): `InProcess` gives it the
handle's shape, so the ingress calls it as it calls the Orchestrator deployment."""

import asyncio
from types import SimpleNamespace

from core.models import Caller
from deployments.answer_stream import answer_events
from deployments.handles import InProcess


class Target:
    def __init__(self) -> None:
        self.closed = False

    async def stream(self, n: int):
        for i in range(n):
            yield i

    async def one(self, x: int) -> int:
        return x * 2

    async def chat_stream(self, request, caller, after_seq, take_over):
        try:
            yield []  # the answer has begun
            yield []
        finally:
            self.closed = True


def test_an_object_in_this_process_answers_through_the_handle_shape():
    here = InProcess(Target())
    streamed = here.options(stream=True)

    async def run() -> tuple[list[int], int]:
        return [i async for i in streamed.stream.remote(3)], await here.one.remote(21)

    assert asyncio.run(run()) == ([0, 1, 2], 42)


def test_a_reader_that_stops_early_closes_the_answer_stream_at_once():
    target = Target()
    ingress = SimpleNamespace(orchestrator_stream=InProcess(target))

    async def run() -> bool:
        events = answer_events(ingress, None, Caller(tenant="t"))
        assert await anext(events) == []
        await events.aclose()
        return target.closed  # now: not when the garbage collector gets to it

    assert asyncio.run(run())
