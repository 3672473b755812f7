"""Lua script calls that go to Redis together: one round trip for several writes.

`run_together`: one caller's writes, run in the order given. A pipeline of EVALs with each script's source, not
EVALSHA: a Redis that restarted has no script cached, and redis-py's own check for that (SCRIPT EXISTS before a
pipeline's scripts) would cost the round trip this saves; were one EVALSHA of several refused, the writes after
it would run out of order. `Batcher`: many callers' independent writes (EVALSHA; a call whose script Redis lost
goes again as EVAL)."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as rx


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
    in this one). Each caller gets its own reply, or the error of its own call. A round trip that fails, or takes
    longer than `timeout_s` (a stuck connection must not stall every answer), fails each of its calls with
    redis-py's error, which their callers retry. A call Redis has no script for (it restarted) goes again at once
    with the script's source (EVAL, which also caches it). Only for calls whose order among callers does not
    matter: one caller has one call in flight at a time, so its own calls keep their order."""

    def __init__(self, client: aioredis.Redis, timeout_s: float = 1.0, most: int = 128) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._most = most
        self._pending: list[tuple[ScriptCall, asyncio.Future, bool]] = []  # (call, its reply, send its source)
        self._task: asyncio.Task | None = None
        self._shas: dict[str, str] = {}

    async def run(self, call: ScriptCall) -> Any:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._pending = [p for p in self._pending if p[1].get_loop() is loop]  # (another loop's: gone)
            self._task = loop.create_task(self._flush())
        reply = loop.create_future()
        self._pending.append((call, reply, False))
        return await reply

    def _sha(self, source: str) -> str:
        sha = self._shas.get(source)
        if sha is None:
            sha = self._shas[source] = hashlib.sha1(source.encode()).hexdigest()
        return sha

    async def _flush(self) -> None:
        batch: list[tuple[ScriptCall, asyncio.Future, bool]] = []
        try:
            while self._pending:
                batch, self._pending = self._pending[: self._most], self._pending[self._most :]
                try:
                    replies = await self._send(batch)
                except Exception as exc:
                    _fail(batch, exc)
                    continue
                again = []  # sent by digest, which Redis no longer had: again at once, with the source
                for (call, reply, source), r in zip(batch, replies, strict=True):
                    if reply.done():  # (a caller that was cancelled)
                        continue
                    if isinstance(r, rx.NoScriptError) and not source:
                        again.append((call, reply, True))
                    elif isinstance(r, Exception):
                        reply.set_exception(r)
                    else:
                        reply.set_result(r)
                self._pending[:0] = again
        except BaseException as exc:  # the loop is going away (cancelled), or a bug: no caller waits forever
            stopped = exc if isinstance(exc, Exception) else rx.ConnectionError("the event loop stopped")
            _fail(batch + self._pending, stopped)
            self._pending = []
            raise

    async def _send(self, batch: list[tuple[ScriptCall, asyncio.Future, bool]]) -> list[Any]:
        try:
            async with asyncio.timeout(self._timeout_s), self._client.pipeline(transaction=False) as pipe:
                for call, _, source in batch:
                    if source:
                        pipe.eval(call.source, len(call.keys), *call.keys, *call.args)
                    else:
                        pipe.evalsha(self._sha(call.source), len(call.keys), *call.keys, *call.args)
                return await pipe.execute(raise_on_error=False)
        except TimeoutError as exc:  # (asyncio's: Redis did not answer in time; redis-py's error, which is retried)
            raise rx.TimeoutError(f"{len(batch)} journal writes got no reply in {self._timeout_s:g} s") from exc


def _fail(batch: list[tuple[ScriptCall, asyncio.Future, bool]], exc: Exception) -> None:
    for _, reply, _ in batch:
        if not reply.done():
            reply.set_exception(exc)
