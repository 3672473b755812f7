"""The SSE body of a chat stream: an answer's usage chunk is its last event, so `data: [DONE]` goes with it and
ends the HTTP body in the same write; a client that did not ask for usage gets the same end without the chunk."""

import asyncio

from core.models import ChatChunk, ChunkChoice, Delta, Usage
from deployments.frames import Frame
from deployments.sse import SSEResponse, sse_frames

TEXT = ChatChunk(id="c1", created=1, model="m", choices=[ChunkChoice(index=0, delta=Delta(content="Hi"))])
FINISH = ChatChunk(id="c1", created=1, model="m", choices=[ChunkChoice(index=0, delta=Delta(), finish_reason="stop")])
USAGE = ChatChunk(id="c1", created=1, model="m", usage=Usage(prompt_tokens=3, completion_tokens=1, total_tokens=4))


def frames(*batches, usage=True, fail_after=False) -> list[str]:
    async def source():
        for batch in batches:
            yield [(seq, Frame.of(chunk)) for seq, chunk in batch]
        if fail_after:
            raise RuntimeError("the ticket's bookkeeping failed")

    async def read():
        return [f async for f in sse_frames(source(), "r", usage=usage)]

    return asyncio.run(read())


def test_the_usage_chunk_and_done_are_one_frame_and_nothing_follows_them():
    out = frames([], [(1, TEXT)], [(2, FINISH)], [(3, USAGE)])
    assert len(out) == 3 and out[0].startswith("id: 1\n") and out[-1].startswith("id: 3\n")
    assert out[-1].endswith('"total_tokens":4}}\n\ndata: [DONE]\n\n')
    quiet = frames([(1, TEXT)], [(2, FINISH), (3, USAGE)], usage=False)  # no usage asked: the same end, without it
    assert quiet[-1] == "id: 2\ndata: " + FINISH.model_dump_json(exclude_none=True) + "\n\ndata: [DONE]\n\n"
    assert "total_tokens" not in "".join(quiet)
    after = frames([(1, TEXT)], [(2, USAGE)], fail_after=True)  # the client has the whole answer: no error event
    assert after[-1].endswith("data: [DONE]\n\n") and "error" not in "".join(after)


def test_a_stream_without_its_usage_chunk_still_ends_with_done_and_an_error_is_an_event():
    assert frames([(1, TEXT)], [(2, FINISH)])[-1] == "data: [DONE]\n\n"
    failed = frames([(1, TEXT)], fail_after=True)
    assert '"error"' in failed[-2] and failed[-1] == "data: [DONE]\n\n"


def test_the_body_ends_in_the_write_that_carries_done_once_the_body_was_read_to_its_end():
    read_to_end = []

    async def body():
        yield "id: 1\ndata: {}\n\n"
        yield "id: 2\ndata: {}\n\ndata: [DONE]\n\n"
        await asyncio.sleep(0.05)  # what follows an answer's last event (its bookkeeping) still runs
        read_to_end.append(1)

    sent: list[dict] = []
    complete = asyncio.Event()

    async def send(message):
        sent.append(message)
        if message["type"] == "http.response.body" and not message["more_body"]:
            complete.set()

    async def receive():  # as uvicorn does: a request whose response is complete is disconnected
        await complete.wait()
        return {"type": "http.disconnect"}

    scope = {"type": "http", "asgi": {"spec_version": "2.3"}}  # uvicorn's: Starlette listens for the disconnect
    closed = []

    async def main():
        complete.clear()
        await SSEResponse(body(), on_close=lambda: closed.append(1), headers={})(scope, receive, send)

    asyncio.run(main())
    bodies = [(m["body"], m["more_body"]) for m in sent if m["type"] == "http.response.body"]
    assert bodies == [(b"id: 1\ndata: {}\n\n", True), (b"id: 2\ndata: {}\n\ndata: [DONE]\n\n", False)]
    assert read_to_end == [1] and closed == [1]
