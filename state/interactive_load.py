"""How many interactive requests are in flight cluster-wide, for the batch workers to yield to them.

Each ingress replica publishes its count (requests inside its admission gate) into one Redis hash,
`<p>:load:interactive` (field: replica, value: "<count> <unix time>"), when it changes and at least every
`heartbeat_s`. Readers sum the fields younger than `fresh_s`, so a dead replica stops counting by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError


class InteractiveLoad:
    def __init__(self, client: aioredis.Redis, prefix: str, replica: str | None = None):
        self._redis = client
        self.key = f"{prefix}:load:interactive"
        self._replica = replica or uuid.uuid4().hex[:12]

    async def publish(self, count: int) -> None:
        await self._redis.hset(self.key, self._replica, f"{count} {time.time():.3f}")

    async def total(self, fresh_s: float = 5.0) -> int:
        now = time.time()
        total = 0
        for value in (await self._redis.hgetall(self.key)).values():
            count, _, at = value.partition(" ")
            if now - float(at or 0) <= fresh_s:
                total += int(count)
        return total

    async def run_publisher(self, count: Callable[[], int], interval_s: float = 0.05, heartbeat_s: float = 1.0):
        """Publish `count()` whenever it changes (checked every `interval_s`) and every `heartbeat_s`."""
        last, last_at = None, 0.0
        while True:
            current = count()
            if current != last or time.monotonic() - last_at >= heartbeat_s:
                with contextlib.suppress(RedisError):  # Redis briefly away: the next round publishes
                    await self.publish(current)
                    last, last_at = current, time.monotonic()
            await asyncio.sleep(interval_s)
