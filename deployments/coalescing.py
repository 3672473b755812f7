"""Adaptive coalescing with no timer: whatever piled up while the consumer was busy goes on as one item.

A stream hop costs per item, not per byte (a Serve handle item, a gRPC message, an HTTP write). When the consumer
keeps up, items go one by one, so nothing waits; when it falls behind, the items that arrived meanwhile go
together at its next ask, so the number of items falls as the load rises, and no token ever waits for a window.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

T = TypeVar("T")
_END = object()


async def ready_batches(source: AsyncIterator[T]) -> AsyncIterator[list[T]]:
    """`source`'s items in lists: at each ask, every item that is ready (at least one, waited for). A reader task
    pulls `source` as fast as it yields; its exception is raised here after the items before it. Closing this
    generator cancels the reader (and so closes `source`)."""
    queue: asyncio.Queue = asyncio.Queue()

    async def read() -> None:
        try:
            async for item in source:
                queue.put_nowait(item)
        except BaseException as exc:
            queue.put_nowait(_Raised(exc))
            return
        queue.put_nowait(_END)

    reader = asyncio.ensure_future(read())
    try:
        while True:
            items = [queue.get_nowait() if not queue.empty() else await queue.get()]
            while not queue.empty():
                items.append(queue.get_nowait())
            end = items[-1]
            if end is _END or isinstance(end, _Raised):
                items.pop()
            if items:
                yield items
            if end is _END:
                return
            if isinstance(end, _Raised):
                raise end.exc
    finally:
        if not reader.done():
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


class _Raised:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
