"""Conversation turns in Redis, owned by a tenant: two tenants may use the same conversation id and get two
conversations.

Keys (prefix `<p>:t:{T}`, state/keyspace.py):
  <p>:t:{T}:conv:<id>           LIST of JSON messages, oldest first
  <p>:t:{T}:convrun:<id>        ZSET request ids whose turn was committed -> time (the newest 64: idempotent commits)
  <p>:t:{T}:convs               ZSET conversation id -> time of its last turn (the tenant's listing)

A turn (the request's new messages plus the assistant answer) is appended in one Lua script, and only once per
request id, so a retried commit never duplicates it. Storage is bounded: after each turn the oldest messages are
dropped until at most `max_messages` remain and their JSON is at most `max_bytes` (the newest turn always stays);
an idle conversation expires after `ttl_s` (the retention).
"""

from __future__ import annotations

import json
import time

import redis.asyncio as aioredis

from core.models import ChatMessage, ConversationSummary
from state.keyspace import tenant_base

KEPT_COMMIT_IDS = 64

_COMMIT_TURN = """
local messages, runs, index = KEYS[1], KEYS[2], KEYS[3]
local run, ttl, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local max_messages, max_bytes = tonumber(ARGV[4]), tonumber(ARGV[5])
local conversation, keep_runs = ARGV[6], tonumber(ARGV[7])
local turn = #ARGV - 7  -- the turn's messages are ARGV[8..]
if redis.call('ZSCORE', runs, run) then return 0 end
redis.call('ZADD', runs, now, run)
redis.call('ZREMRANGEBYRANK', runs, 0, -keep_runs - 1)
for i = 8, #ARGV do redis.call('RPUSH', messages, ARGV[i]) end
-- retention caps: the oldest go first, never the turn just stored
local keep = math.max(max_messages, turn)
if redis.call('LLEN', messages) > keep then redis.call('LTRIM', messages, -keep, -1) end
local sizes, total = {}, 0
for i, m in ipairs(redis.call('LRANGE', messages, 0, -1)) do sizes[i] = #m; total = total + #m end
local drop, n = 0, #sizes
while total > max_bytes and n - drop > turn do drop = drop + 1; total = total - sizes[drop] end
if drop > 0 then redis.call('LTRIM', messages, drop, -1) end
redis.call('EXPIRE', messages, ttl)
redis.call('EXPIRE', runs, ttl)
redis.call('ZADD', index, now, conversation)
redis.call('ZREMRANGEBYSCORE', index, '-inf', now - ttl)
redis.call('EXPIRE', index, ttl)
return 1
"""


class ConversationStore:
    def __init__(
        self, client: aioredis.Redis, prefix: str, ttl_s: int, max_messages: int = 200, max_bytes: int = 512 * 1024
    ):
        self._redis = client
        self._prefix = prefix
        self._ttl_s = ttl_s
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._commit = client.register_script(_COMMIT_TURN)

    def _keys(self, tenant: str, conversation_id: str) -> tuple[str, str, str]:
        base = tenant_base(self._prefix, tenant)
        return f"{base}:conv:{conversation_id}", f"{base}:convrun:{conversation_id}", f"{base}:convs"

    async def history(self, tenant: str, conversation_id: str, max_messages: int | None = None) -> list[ChatMessage]:
        """Stored messages, oldest first; the last `max_messages` when given."""
        if max_messages == 0:
            return []
        start = -max_messages if max_messages else 0
        raw = await self._redis.lrange(self._keys(tenant, conversation_id)[0], start, -1)
        return [ChatMessage.model_validate_json(item) for item in raw]

    async def exists(self, tenant: str, conversation_id: str) -> bool:
        return bool(await self._redis.exists(self._keys(tenant, conversation_id)[0]))

    async def commit_turn(
        self, tenant: str, conversation_id: str, request_id: str, messages: list[ChatMessage]
    ) -> bool:
        """Append a whole turn atomically. Returns False when this request id was already committed."""
        payload = [json.dumps(m.model_dump(exclude_none=True)) for m in messages]
        args = [request_id, self._ttl_s, repr(time.time()), self._max_messages, self._max_bytes, conversation_id]
        args.append(KEPT_COMMIT_IDS)
        added = await self._commit(keys=list(self._keys(tenant, conversation_id)), args=[*args, *payload])
        return bool(added)

    async def list(
        self, tenant: str, after: str | None = None, limit: int = 20
    ) -> tuple[list[ConversationSummary], bool]:
        """The tenant's conversations, most recently used first, `limit` after the id `after`."""
        _, _, index = self._keys(tenant, "-")
        await self._redis.zremrangebyscore(index, "-inf", time.time() - self._ttl_s)
        ids = await self._redis.zrevrange(index, 0, -1, withscores=True)
        if after is not None:
            position = next((i for i, (cid, _) in enumerate(ids) if cid == after), None)
            ids = ids[position + 1 :] if position is not None else []
        page = []
        for conversation_id, updated in ids:
            if len(page) > limit:
                break
            count = await self._redis.llen(self._keys(tenant, conversation_id)[0])
            if count:
                page.append(ConversationSummary(id=conversation_id, updated_at=int(updated), messages=count))
            else:  # expired between the index and now
                await self._redis.zrem(index, conversation_id)
        return page[:limit], len(page) > limit

    async def count(self, tenant: str) -> int:
        """Conversations the tenant holds (the expired ones dropped from the index first)."""
        _, _, index = self._keys(tenant, "-")
        await self._redis.zremrangebyscore(index, "-inf", time.time() - self._ttl_s)
        return int(await self._redis.zcard(index))

    async def delete(self, tenant: str, conversation_id: str) -> bool:
        messages, runs, index = self._keys(tenant, conversation_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(messages, runs)
            pipe.zrem(index, conversation_id)
            deleted, _ = await pipe.execute()
        return bool(deleted)
