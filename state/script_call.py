"""Lua script calls that go to Redis together: one round trip for several writes.

`run_together`: one caller's writes, run in the order given. A pipeline of EVALs with each script's source, not
EVALSHA: a Redis that restarted has no script cached, and redis-py's own check for that (SCRIPT EXISTS before a
pipeline's scripts) would cost the round trip this saves; were one EVALSHA of several refused, the writes after
it would run out of order. `Batcher`: many callers' independent writes (EVALSHA, loading a script Redis lost and
sending its calls again)."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError


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


class Batcher:
    """Independent script calls of many callers (each answer's journal appends), sent in one round trip: while
    one round trip is in flight the calls that come meanwhile gather, and go together in the next. No timer: a
    call that finds nothing in flight goes at once (on the event loop's next turn, with whatever else was ready
    in this one). Each caller gets its own reply, or the error of its own call; a lost connection fails every
    call of that round trip (the callers retry theirs). Only for calls whose order among callers does not matter:
    one caller has one call in flight at a time, so its own calls keep their order."""

    def __init__(self, client: aioredis.Redis, most: int = 128) -> None:
        self._client = client
        self._most = most
        self._pending: list[tuple[ScriptCall, asyncio.Future]] = []
        self._task: asyncio.Task | None = None
        self._shas: dict[str, str] = {}

    async def run(self, call: ScriptCall) -> Any:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._pending = [p for p in self._pending if p[1].get_loop() is loop]  # (another loop's: gone)
            self._task = loop.create_task(self._flush())
        reply = loop.create_future()
        self._pending.append((call, reply))
        return await reply

    def _sha(self, source: str) -> str:
        sha = self._shas.get(source)
        if sha is None:
            sha = self._shas[source] = hashlib.sha1(source.encode()).hexdigest()
        return sha

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self._most], self._pending[self._most :]
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for call, _ in batch:
                        pipe.evalsha(self._sha(call.source), len(call.keys), *call.keys, *call.args)
                    replies = await pipe.execute(raise_on_error=False)
            except asyncio.CancelledError:  # the loop is going away: so are its callers
                for _, reply in batch + self._pending:
                    reply.cancel()
                raise
            except Exception as exc:
                for _, reply in batch:
                    if not reply.done():
                        reply.set_exception(exc)
                continue
            missing = [(call, reply) for (call, reply), r in zip(batch, replies, strict=True) if _no_script(r)]
            for source in {call.source for call, _ in missing}:  # a Redis that restarted: load, then send again
                await self._client.script_load(source)
            self._pending[:0] = missing
            for (_, reply), r in zip(batch, replies, strict=True):
                if reply.done() or _no_script(r):  # (a caller that was cancelled)
                    continue
                if isinstance(r, Exception):
                    reply.set_exception(r)
                else:
                    reply.set_result(r)


def _no_script(reply: Any) -> bool:
    return isinstance(reply, NoScriptError)
