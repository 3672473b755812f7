"""Server-sent events: built in exactly this one function, which always ends with `data: [DONE]`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable

from deployments.http_errors import sse_error_frame
from serve_app.models import ChatChunk

logger = logging.getLogger("llmserve.ingress")


async def sse_frames(
    first: Iterable[ChatChunk], rest: AsyncIterator[list[ChatChunk]], request_id: str | None
) -> AsyncIterator[str]:
    """`data: {json}\\n\\n` per chunk. Frames that arrived together are written together.
    An error after the first chunk becomes an error event (the status line was already sent)."""
    yield "".join(f"data: {c.model_dump_json(exclude_none=True)}\n\n" for c in first)
    try:
        async for chunks in rest:
            yield "".join(f"data: {c.model_dump_json(exclude_none=True)}\n\n" for c in chunks)
    except Exception as exc:
        logger.warning("stream %s failed after the first chunk: %r", request_id, exc)
        yield sse_error_frame(exc, request_id)
    yield "data: [DONE]\n\n"
