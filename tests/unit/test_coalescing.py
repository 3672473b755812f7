"""Adaptive coalescing (deployments/coalescing.py), and the orchestrator -> ingress frames (deployments/frames.py):
one item per token while the consumer keeps up, everything that piled up as one item when it falls behind, no
token held back, the source's error after the items before it, and each chunk's JSON made once and passed on
as it is."""

import asyncio
import json

import pytest

from core.models import ChatChunk
from deployments.coalescing import ready_batches
from deployments.frames import from_wire, to_wire
from deployments.sse import sse_frames
from state.journal import Event


async def _tokens(n: int, gap_s: float, fail: bool = False):
    for i in range(n):
        await asyncio.sleep(gap_s)
        yield i
    if fail:
        raise RuntimeError("engine died")


def test_a_consumer_that_keeps_up_gets_one_item_per_token():
    async def go():
        return [batch async for batch in ready_batches(_tokens(5, 0.01))]

    assert asyncio.run(go()) == [[0], [1], [2], [3], [4]]


def test_a_consumer_that_falls_behind_gets_what_piled_up_in_one_item_and_nothing_is_lost():
    async def go():
        got = []
        async for batch in ready_batches(_tokens(20, 0.002)):
            got.append(batch)
            await asyncio.sleep(0.02)  # a busy consumer: ~10 tokens arrive per ask
        return got

    got = asyncio.run(go())
    assert [t for batch in got for t in batch] == list(range(20))  # all of them, in order
    assert len(got) <= 6 and max(len(b) for b in got) >= 5


def test_the_first_token_does_not_wait():
    async def go():
        start = asyncio.get_running_loop().time()
        stream = ready_batches(_tokens(3, 0.0))
        first = await anext(stream)
        await stream.aclose()
        return first, asyncio.get_running_loop().time() - start

    first, took = asyncio.run(go())
    assert first[0] == 0 and took < 0.05


def test_the_sources_error_comes_after_the_items_before_it():
    async def go():
        got = []
        with pytest.raises(RuntimeError, match="engine died"):
            async for batch in ready_batches(_tokens(3, 0.001, fail=True)):
                got.extend(batch)
        return got

    assert asyncio.run(go()) == [0, 1, 2]


def test_closing_the_stream_closes_the_source():
    async def go():
        done = asyncio.Event()

        async def source():
            try:
                while True:
                    await asyncio.sleep(0.001)
                    yield 1
            finally:
                done.set()

        stream = ready_batches(source())
        await anext(stream)
        await stream.aclose()
        return done.is_set()

    assert asyncio.run(go())


def test_a_chunk_is_serialised_once_and_written_to_sse_as_journaled():
    chunk = ChatChunk.model_validate(
        {"id": "chatcmpl-1", "created": 1, "model": "m", "choices": [{"index": 0, "delta": {"content": 'é "x"'}}]}
    )
    usage = ChatChunk.model_validate(
        {"id": "chatcmpl-1", "created": 1, "model": "m", "usage": {"prompt_tokens": 1, "completion_tokens": 2,
                                                                   "total_tokens": 3}}
    )  # fmt: skip
    events = [Event.of(i, c) for i, c in enumerate((chunk, usage), 1)]
    wire = to_wire(events)
    assert wire[0][1] is events[0].text  # made once: the journal and the hop share it
    assert wire[0][1] == chunk.model_dump_json(exclude_none=True)  # what the SSE frame carried before, byte for byte
    assert json.loads(Event(1, events[0].chunk).text) == events[0].chunk  # one read back from the journal
    assert [w[2] for w in wire] == [False, True]  # the usage chunk is known without parsing
    batch = from_wire(wire, after_seq=0)
    assert batch[0][1].chunk == chunk and batch[1][1].chunk == usage  # parsed where a field is needed
    assert from_wire(wire, after_seq=1)[0][0] == 2  # a resumed stream gets only what it missed

    async def frames():
        async def batches():
            yield batch

        return "".join([f async for f in sse_frames(batches(), "r")])

    text = asyncio.run(frames())
    data = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    assert data == [c.model_dump(mode="json", exclude_none=True) for c in (chunk, usage)]
    assert text.startswith("id: 1\ndata: ") and text.endswith("data: [DONE]\n\n")


def test_streams_from_replicas_are_paced_by_a_small_window(monkeypatch):
    """pace_streams wraps the function Serve's replica stubs build their channels with (replicas on this node
    only), and its options really hold a gRPC sender to a few messages ahead of a reader that pauses (the default
    window let it run 2,000 ahead in the same test), so what the sender produces meanwhile waits to go as one
    item."""
    import inspect

    import grpc
    from ray.serve._private.request_router import replica_wrapper

    from deployments.handles import pace_streams

    assert "init_grpc_channel(" in inspect.getsource(replica_wrapper.RunningReplica.stub.fget)
    seen = {}
    monkeypatch.setattr(replica_wrapper, "init_grpc_channel", lambda address, options=None, **kw: seen.update(options))
    pace_streams(1024, local_hosts=frozenset({"10.0.0.1"}))
    replica_wrapper.init_grpc_channel("10.0.0.2:1", [("grpc.max_receive_message_length", 4 << 20)], asynchronous=True)
    assert "grpc.http2.lookahead_bytes" not in seen  # another node's replica: gRPC's own window
    replica_wrapper.init_grpc_channel("10.0.0.1:1", [("grpc.max_receive_message_length", 4 << 20)], asynchronous=True)
    assert seen["grpc.http2.lookahead_bytes"] == 1024 and seen["grpc.max_receive_message_length"] == 4 << 20
    pace_streams(0)
    assert not hasattr(replica_wrapper.init_grpc_channel, "__wrapped__")  # gRPC's own window again

    def raw(b):
        return b

    async def ahead_after_a_pause(options) -> int:
        written = 0

        async def stream(request, context):
            nonlocal written
            for _ in range(500):
                yield b"x" * 250
                written += 1

        handler = grpc.unary_stream_rpc_method_handler(stream, request_deserializer=raw, response_serializer=raw)
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.S", {"s": handler}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
                call = channel.unary_stream("/t.S/s", request_serializer=raw, response_deserializer=raw)(b"")
                await anext(aiter(call))
                await asyncio.sleep(0.3)  # the reader is busy
                call.cancel()
                return written - 1
        finally:
            await server.stop(None)

    assert asyncio.run(ahead_after_a_pause(list(seen.items()))) <= 20
    assert asyncio.run(ahead_after_a_pause([])) >= 200
