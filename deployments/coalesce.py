"""Fewer stream items per Ray hop, without a timer: a pump task reads the source as fast as it produces, and
each item sent downstream carries everything that arrived since the last one. An idle stream sends every
chunk at once (no added latency); a burst (many tokens ready, a busy replica) crosses the hop as one item.
The number of items per hop, not their size, is what a Serve hop costs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TypeVar

T = TypeVar("T")
_END = object()


async def coalesce(source: AsyncIterator[list[T]]) -> AsyncIterator[list[T]]:
    queue: asyncio.Queue = asyncio.Queue()

    async def pump() -> None:
        try:
            async for item in source:
                queue.put_nowait(item)
            queue.put_nowait(_END)
        except BaseException as exc:  # handed to the consumer, which raises it in its own task
            queue.put_nowait(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise

    task = asyncio.ensure_future(pump())
    try:
        while True:
            batch: list[T] = []
            item = await queue.get()
            while True:
                if item is _END:
                    if batch:
                        yield batch
                    return
                if isinstance(item, BaseException):
                    if batch:
                        yield batch
                    raise item
                batch.extend(item)
                if queue.empty():
                    break
                item = queue.get_nowait()
            yield batch
    finally:
        if not task.done():
            task.cancel()  # the consumer went away: stop the source (aborts the engine request)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
