"""Response journals: every answer's chunks, in order, in a Redis Stream per response, written before any of
them leaves the orchestrator. A client whose connection broke resumes from the last event it saw, on any ingress
replica; a retried request (same Idempotency-Key) replays a finished answer or follows a running one; another
orchestrator replica takes over a run whose writer died and continues it from the journaled text.

One writer at a time: the writer holds an `epoch` (a fencing token) and a lease it renews while it runs. Taking
over bumps the epoch, and every append checks it (one Lua script), so a writer that was only slow, not dead, can
never add to an answer someone else is continuing.

Keys (prefix `<p>:t:{T}`, the answer's tenant; state/keyspace.py):
  <p>:t:{T}:resp:<id>            STREAM entries {seq: sequence number of its first chunk, chunks: JSON list}
  <p>:t:{T}:resp:<id>:meta       HASH   status (running | completed | failed | cancelled), cancel (1: asked for),
                                        epoch, lease_until (unix ms, Redis's clock), last_seq, request and caller
                                        (JSON: what a takeover needs), body_sha256 (for Idempotency-Key reuse),
                                        created, error (JSON), followed_at (unix ms: a follower on another replica
                                        last read it)
  <p>:t:{T}:idem:<kid>:<key>     STRING the response id an API key's Idempotency-Key made
All of them expire `ttl_s` after the answer's last write.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from pydantic import BaseModel

from state.keyspace import tenant_base
from state.script_call import Batcher, ScriptCall, run_together

FINAL = ("completed", "failed", "cancelled")
FOLLOWED_EVERY_S = 2.0  # how often a follower of the journal says it is reading

_APPEND = """
local meta, stream = KEYS[1], KEYS[2]
if redis.call('HGET', meta, 'epoch') ~= ARGV[1] then return 0 end
-- Its cancellation was asked for: nothing more is added; only the final write (with a status) goes through.
if ARGV[6] == '' and redis.call('HGET', meta, 'cancel') == '1' then return 2 end
-- A retry of an append that did run (its reply was lost to a timeout) must not add the events twice.
local applied = tonumber(redis.call('HGET', meta, 'last_seq') or '0') >= tonumber(ARGV[4])
if ARGV[3] ~= '[]' and not applied then redis.call('XADD', stream, '*', 'seq', ARGV[2], 'chunks', ARGV[3]) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', meta, 'last_seq', ARGV[4], 'lease_until', now + tonumber(ARGV[5]))
if ARGV[6] ~= '' then redis.call('HSET', meta, 'status', ARGV[6], 'error', ARGV[7]) end
if ARGV[6] ~= '' or ARGV[9] == '1' then  -- the first write of an epoch, and the last: ttl after the last write
  redis.call('EXPIRE', meta, ARGV[8])
  redis.call('EXPIRE', stream, ARGV[8])
end
return 1
"""

_OPEN = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'status', 'running', 'epoch', '1', 'last_seq', '0', 'lease_until', now + tonumber(ARGV[1]),
  'request', ARGV[2], 'caller', ARGV[3], 'body_sha256', ARGV[4], 'created', t[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""

_TAKE_OVER = """
local meta = KEYS[1]
local status = redis.call('HGET', meta, 'status')
if not status then return {'missing', 0} end
if status ~= 'running' then return {status, 0} end
local t = redis.call('TIME')
local now, force = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), ARGV[2] == '1'
if not force and tonumber(redis.call('HGET', meta, 'lease_until') or '0') > now then return {'held', 0} end
local epoch = redis.call('HINCRBY', meta, 'epoch', 1)
redis.call('HSET', meta, 'lease_until', now + tonumber(ARGV[1]))
return {'taken', epoch}
"""

# A follower on another replica says it is reading (the writer cancels an answer nobody reads); never recreates
# an expired journal.
_FOLLOWED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'followed_at', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
return 1
"""

_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'running' then redis.call('HSET', KEYS[1], 'cancel', '1') end
return status or ''
"""

_FOLLOWED_WITHIN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return now - tonumber(redis.call('HGET', KEYS[1], 'followed_at') or '0') < tonumber(ARGV[1]) and 1 or 0
"""

# Whether the writer's lease ran out, by Redis's clock (leases are compared on one clock, whatever the hosts').
_LEASE_LAPSED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local status, lease_until = unpack(redis.call('HMGET', KEYS[1], 'status', 'lease_until'))
if not status then return {'', 0} end
return {status, tonumber(lease_until or '0') < now and 1 or 0}
"""


# A chunk built as its dict and its JSON at once (no model on the token path).
Built = tuple[dict[str, Any], str]


@dataclass(frozen=True)
class Event:
    """One chunk of an answer with its sequence number (the SSE event id)."""

    seq: int
    chunk: dict[str, Any]
    text: str = field(default="", compare=False, repr=False)  # the chunk's JSON, for the journal and the ingress

    def __post_init__(self) -> None:
        if not self.text:  # (read back from the journal)
            object.__setattr__(self, "text", json.dumps(self.chunk, ensure_ascii=False, separators=(",", ":")))

    @classmethod
    def of(cls, seq: int, chunk: BaseModel | Built) -> Event:
        """A new chunk's event: a model's JSON is pydantic's own; a chunk built as its dict and JSON already (a
        token's text, `Turn.delta_chunk`) goes as it is. The JSON is what the SSE frame carries byte for byte."""
        if isinstance(chunk, tuple):
            return cls(seq, *chunk)
        return cls(seq, chunk.model_dump(mode="json", exclude_none=True), chunk.model_dump_json(exclude_none=True))


class Journal:
    def __init__(self, client: aioredis.Redis, prefix: str, ttl_s: int, lease_s: float = 3.0):
        self._redis = client
        self._p = prefix
        self.ttl_s = ttl_s
        self.lease_ms = int(lease_s * 1000)
        # Every answer's appends, many per round trip under load; one stuck round trip fails (and its appends are
        # retried) well within the third of a lease a writer renews at.
        self._appends = Batcher(client, timeout_s=lease_s / 3)
        self._take_over = client.register_script(_TAKE_OVER)
        self._open = client.register_script(_OPEN)
        self._lease_lapsed = client.register_script(_LEASE_LAPSED)
        self._followed = client.register_script(_FOLLOWED)
        self._followed_within = client.register_script(_FOLLOWED_WITHIN)
        self._cancel = client.register_script(_CANCEL)

    def _keys(self, tenant: str, response_id: str) -> tuple[str, str]:
        base = f"{tenant_base(self._p, tenant)}:resp:{response_id}"
        return f"{base}:meta", base

    # --- the writer ---------------------------------------------------------------------------------
    async def open(self, tenant: str, response_id: str, request: dict, caller: dict, body_sha256: str = "") -> int:
        """Start the journal of a new answer; returns the writer's epoch (1), or 0 when the answer has a journal
        already (another call opened it first: follow that one, or take it over)."""
        meta, _ = self._keys(tenant, response_id)
        args = [self.lease_ms, json.dumps(request), json.dumps(caller), body_sha256, self.ttl_s]
        return 1 if await self._open(keys=[meta], args=args) else 0

    async def append(
        self,
        tenant: str,
        response_id: str,
        epoch: int,
        events: list[Event],
        last_seq: int,
        status: str = "",
        error: dict | None = None,
        refresh_ttl: bool = False,
    ) -> int:
        """Add events (and renew the lease); with `status`, end the answer. 1: done; 0: another writer took over;
        2: its cancellation was asked for (nothing added; end it with status cancelled). The keys' TTL is set on
        the writer's first write (`refresh_ttl`) and on the last (with `status`), not on every append."""
        call = self._append_call(tenant, response_id, epoch, events, last_seq, status, error, refresh_ttl)
        return int(await self._appends.run(call))

    async def append_after(
        self, first: ScriptCall, tenant: str, response_id: str, epoch: int, events: list[Event], last_seq: int,
        status: str = "",
    ) -> tuple[Any, int]:  # fmt: skip
        """`first` (another write: a settle), then `append`, in one round trip and in that order; both replies.
        `first` runs only while `epoch` still writes the answer (a writer taken over leaves it to the new one),
        else its reply is None."""
        meta, _ = self._keys(tenant, response_id)
        n, m = len(first.keys) + 1, len(first.args) + 1
        guard = f"if redis.call('HGET', KEYS[{n}], 'epoch') ~= ARGV[{m}] then return false end\n"
        guarded = ScriptCall(guard + first.source, [*first.keys, meta], [*first.args, epoch])
        append = self._append_call(tenant, response_id, epoch, events, last_seq, status, None, False)
        first_reply, appended = await run_together(self._redis, [guarded, append])
        return first_reply, int(appended)

    def _append_call(
        self,
        tenant: str,
        response_id: str,
        epoch: int,
        events: list[Event],
        last_seq: int,
        status: str,
        error: dict | None,
        refresh_ttl: bool,
    ) -> ScriptCall:
        meta, stream = self._keys(tenant, response_id)
        chunks = "[" + ",".join(e.text for e in events) + "]"
        first = events[0].seq if events else last_seq
        args = [
            epoch,
            first,
            chunks,
            last_seq,
            self.lease_ms,
            status,
            json.dumps(error or {}),
            self.ttl_s,
            int(refresh_ttl),
        ]
        return ScriptCall(_APPEND, [meta, stream], args)

    async def take_over(self, tenant: str, response_id: str, force: bool = False) -> tuple[str, int]:
        """('taken', new epoch) when the run is ours now: its writer's lease ran out, or `force` (the caller saw
        the writer die). Else ('held', 0) while a live writer holds it, or its final status, or ('missing', 0)."""
        meta, _ = self._keys(tenant, response_id)
        status, epoch = await self._take_over(keys=[meta], args=[self.lease_ms, 1 if force else 0])
        return status, int(epoch)

    async def cancel(self, tenant: str, response_id: str) -> str:
        """Ask the writer of a running answer to stop (it sees it at its next write, within a third of a lease);
        the answer's status now ('' when there is none)."""
        meta, _ = self._keys(tenant, response_id)
        return str(await self._cancel(keys=[meta]))

    async def lease_lapsed(self, tenant: str, response_id: str) -> tuple[str, bool]:
        """The answer's status, and whether its writer's lease ran out (nobody is writing it)."""
        meta, _ = self._keys(tenant, response_id)
        status, lapsed = await self._lease_lapsed(keys=[meta])
        return str(status), bool(lapsed)

    async def followed_within(self, tenant: str, response_id: str, seconds: float) -> bool:
        """Whether a follower on another replica read the answer in the last `seconds`."""
        meta, _ = self._keys(tenant, response_id)
        return bool(await self._followed_within(keys=[meta], args=[int(seconds * 1000)]))

    # --- readers ------------------------------------------------------------------------------------
    async def meta(self, tenant: str, response_id: str) -> dict[str, Any] | None:
        raw = await self._redis.hgetall(self._keys(tenant, response_id)[0])
        if not raw:
            return None
        return {
            **raw,
            "epoch": int(raw.get("epoch", 0)),
            "last_seq": int(raw.get("last_seq", 0)),
            "lease_until": int(raw.get("lease_until", 0)),
            "request": json.loads(raw.get("request") or "{}"),
            "caller": json.loads(raw.get("caller") or "{}"),
            "error": json.loads(raw.get("error") or "{}"),
        }

    async def events(self, tenant: str, response_id: str, after_seq: int = 0) -> list[Event]:
        """Every journaled event after `after_seq`."""
        _, stream = self._keys(tenant, response_id)
        return _fresh((e for _, fields in await self._redis.xrange(stream) for e in _decode(fields)), after_seq)

    async def follow(
        self, tenant: str, response_id: str, after_seq: int = 0, idle_s: float = 1.0
    ) -> AsyncIterator[list[Event]]:
        """The events after `after_seq`, then the live ones as the writer appends them, until the answer ends.
        Stops early (returns) when nothing comes for `idle_s` while no live writer holds the lease: the caller
        decides whether to take the run over."""
        meta_key, stream = self._keys(tenant, response_id)
        cursor, quiet_since, said_at = "0-0", time.monotonic(), 0.0
        while True:
            if time.monotonic() - said_at > FOLLOWED_EVERY_S:  # the writer (elsewhere) sees someone reads it
                said_at = time.monotonic()
                await self._followed(keys=[meta_key])
            reply = await self._redis.xread({stream: cursor}, count=100, block=500)
            entries = [entry for _, stream_entries in reply or [] for entry in stream_entries]
            if entries:
                cursor = entries[-1][0]
            batch = _fresh((e for _, fields in entries for e in _decode(fields)), after_seq)
            if batch:
                after_seq = batch[-1].seq
                quiet_since = time.monotonic()
                yield batch
                continue
            status, lapsed = await self._lease_lapsed(keys=[meta_key])
            if not status or status in FINAL:
                rest = await self.events(tenant, response_id, after_seq)
                if rest:
                    yield rest
                return
            if lapsed and time.monotonic() - quiet_since > idle_s:
                return  # running, but nobody is writing it: the caller may take it over

    # --- Idempotency-Key ----------------------------------------------------------------------------
    async def claim_idempotency(self, tenant: str, key_id: str, key: str, response_id: str) -> str | None:
        """Bind an Idempotency-Key to a new response; the response id it already has, if any."""
        name = f"{tenant_base(self._p, tenant)}:idem:{key_id}:{key}"
        if await self._redis.set(name, response_id, nx=True, ex=self.ttl_s):
            return None
        return await self._redis.get(name)

    async def release_idempotency(self, tenant: str, key_id: str, key: str) -> None:
        """Forget a key whose request never began (refused, or failed before its answer): a retry runs anew."""
        await self._redis.delete(f"{tenant_base(self._p, tenant)}:idem:{key_id}:{key}")


def _decode(fields: dict[str, str]) -> list[Event]:
    first = int(fields["seq"])
    return [Event(first + i, chunk) for i, chunk in enumerate(json.loads(fields["chunks"]))]


def _fresh(events, after_seq: int) -> list[Event]:
    """The events after `after_seq`, each sequence number once, in order."""
    out: list[Event] = []
    for event in events:
        if event.seq > after_seq:
            out.append(event)
            after_seq = event.seq
    return out
