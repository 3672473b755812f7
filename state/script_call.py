"""Lua script calls that go to Redis together: one round trip for several writes, run in the order given.

A pipeline of EVALs with each script's source, not EVALSHA: a Redis that restarted has no script cached, and
redis-py's own check for that (SCRIPT EXISTS before a pipeline's scripts) would cost the round trip this saves.
Redis caches a script by its digest either way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis


@dataclass(frozen=True)
class ScriptCall:
    source: str
    keys: list[str]
    args: list[Any]


async def run_together(client: aioredis.Redis, calls: list[ScriptCall]) -> list[Any]:
    """Every call's reply, in order, from one round trip (not a transaction: a reply that is an error raises it,
    after the calls before it ran)."""
    async with client.pipeline(transaction=False) as pipe:
        for call in calls:
            pipe.eval(call.source, len(call.keys), *call.keys, *call.args)
        return await pipe.execute()
