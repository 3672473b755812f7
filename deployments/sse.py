"""Server-sent events: built in exactly this one function, which always ends with `data: [DONE]`. Each chunk's
event carries its sequence number as `id:`, what a client resumes after (`starting_after`, `Last-Event-ID`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from core.models import ChatChunk
from deployments.frames import Batch
from deployments.http_errors import sse_error_frame

logger = logging.getLogger("llmserve.ingress")


DONE = "data: [DONE]\n\n"


async def sse_frames(
    batches: AsyncIterator[Batch],
    request_id: str | None,
    shape: Callable[[ChatChunk], BaseModel] | None = None,
    usage: bool = True,
) -> AsyncIterator[str]:
    """`id: N` and `data: {json}` per chunk: its JSON as the orchestrator made it, or, given a `shape`, the chunk
    in that shape (completions). Frames that arrived together are written together. An answer's last event is its
    usage chunk (left out when the client did not ask for `usage`): `data: [DONE]` goes with it, and ends the
    body in the same write (SSEResponse). An error after the first chunk becomes an error event (the status line
    was already sent)."""
    done = False
    try:
        async for batch in batches:
            if not batch or done:  # (an answer that has begun, before its first chunk; nothing after its last)
                continue
            done = batch[-1][1].usage
            kept = batch if usage else [(seq, f) for seq, f in batch if not f.usage]
            if shape is None:
                text = "".join(f"id: {seq}\ndata: {f.json}\n\n" for seq, f in kept)
            else:
                text = "".join(
                    f"id: {seq}\ndata: {shape(f.chunk).model_dump_json(exclude_none=True)}\n\n" for seq, f in kept
                )
            yield text + DONE if done else text
    except Exception as exc:
        if done:  # the client has the whole answer: nothing more may be written
            logger.warning("stream %s failed after its last event: %r", request_id, exc)
            return
        logger.warning("stream %s failed after the first chunk: %r", request_id, exc)
        yield sse_error_frame(exc, request_id)
    if not done:
        yield DONE


async def prepend(first: Batch, rest: AsyncIterator[Batch]) -> AsyncIterator[Batch]:
    yield first
    async for batch in rest:
        yield batch


DONE_BYTES = DONE.encode()


class SSEResponse(StreamingResponse):
    """A text/event-stream response that calls `on_close` however it ends: completed, failed, the client gone,
    a client that stopped reading for `write_timeout_s`, or never started (a disconnect before the first byte
    leaves the body generator unstarted, so its own `finally` would never run). The answer itself goes on: the
    client can resume it."""

    media_type = "text/event-stream"

    def __init__(
        self,
        content: AsyncIterator[str],
        on_close: Callable[[], None],
        headers: dict[str, str],
        write_timeout_s: float = 30.0,
    ):
        super().__init__(content, headers=headers, media_type=self.media_type)
        self._on_close = on_close
        self._write_timeout_s = write_timeout_s

    async def stream_response(self, send: Send) -> None:
        """Starlette's, but the frame that ends with `data: [DONE]` ends the body too: one write (with chunked
        encoding's last chunk) instead of two. That frame is written once the body has been read to its end (what
        follows an answer's last event comes right after it): ending the body first would end the request, and
        Starlette would cancel the rest of the read."""
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        last = b""
        async for chunk in self.body_iterator:
            body = chunk.encode(self.charset) if isinstance(chunk, str) else bytes(chunk)
            if last or not body:
                continue
            if body.endswith(DONE_BYTES):
                last = body
            else:
                await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": last, "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def bounded_send(message: Message) -> None:
            try:
                async with asyncio.timeout(self._write_timeout_s):  # (wait_for: a task per write)
                    await send(message)
            except TimeoutError as exc:  # the client stopped reading: give its place back
                raise OSError(f"client stopped reading for {self._write_timeout_s:g} s") from exc

        try:
            await super().__call__(scope, receive, bounded_send)
        except OSError as exc:
            logger.warning("stream closed: %s", exc)
        finally:
            self._on_close()
