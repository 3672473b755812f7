"""Server-sent events: built in exactly this one function, which always ends with `data: [DONE]`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from core.models import ChatChunk
from deployments.http_errors import sse_error_frame

logger = logging.getLogger("llmserve.ingress")


async def sse_frames(chunks: AsyncIterator[list[ChatChunk]], request_id: str | None) -> AsyncIterator[str]:
    """`data: {json}\\n\\n` per chunk; frames that arrived together are written together.
    An error after the first chunk becomes an error event (the status line was already sent)."""
    try:
        async for batch in chunks:
            yield "".join(f"data: {c.model_dump_json(exclude_none=True)}\n\n" for c in batch)
    except Exception as exc:
        logger.warning("stream %s failed after the first chunk: %r", request_id, exc)
        yield sse_error_frame(exc, request_id)
    yield "data: [DONE]\n\n"


async def prepend(first: list[ChatChunk], rest: AsyncIterator[list[ChatChunk]]) -> AsyncIterator[list[ChatChunk]]:
    yield first
    async for batch in rest:
        yield batch


class SSEResponse(StreamingResponse):
    """A text/event-stream response that calls `on_close` however it ends: completed, failed, the client gone,
    or never started (a disconnect before the first byte leaves the body generator unstarted, so its own
    `finally` would never run)."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None], headers: dict[str, str]):
        super().__init__(content, headers=headers, media_type=self.media_type)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
