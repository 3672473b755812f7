"""Conversation turns in Redis.

Keys (prefix `<p>:conv:`):
  <p>:conv:<id>           LIST of JSON messages, oldest first
  <p>:conv:<id>:commits   SET of request ids whose turn was committed (idempotent commits)

A turn (the request's new messages plus the assistant answer) is appended in one Lua script, and only once
per request id, so a retried commit or a replayed request never duplicates it.
"""

from __future__ import annotations

import json

import redis.asyncio as aioredis

from core.models import ChatMessage

_COMMIT_TURN = """
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then
  return 0
end
for i = 3, #ARGV do
  redis.call('RPUSH', KEYS[1], ARGV[i])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""


class ConversationStore:
    def __init__(self, client: aioredis.Redis, prefix: str, ttl_s: int):
        self._redis = client
        self._prefix = prefix
        self._ttl_s = ttl_s
        self._commit = client.register_script(_COMMIT_TURN)

    def _key(self, conversation_id: str) -> str:
        return f"{self._prefix}:conv:{conversation_id}"

    async def history(self, conversation_id: str, max_messages: int | None = None) -> list[ChatMessage]:
        """Stored messages, oldest first; the last `max_messages` when given."""
        if max_messages == 0:
            return []
        start = -max_messages if max_messages else 0
        raw = await self._redis.lrange(self._key(conversation_id), start, -1)
        return [ChatMessage.model_validate_json(item) for item in raw]

    async def exists(self, conversation_id: str) -> bool:
        return bool(await self._redis.exists(self._key(conversation_id)))

    async def commit_turn(self, conversation_id: str, request_id: str, messages: list[ChatMessage]) -> bool:
        """Append a whole turn atomically. Returns False when this request id was already committed."""
        key = self._key(conversation_id)
        payload = [json.dumps(m.model_dump(exclude_none=True)) for m in messages]
        added = await self._commit(keys=[key, f"{key}:commits"], args=[request_id, self._ttl_s, *payload])
        return bool(added)

    async def delete(self, conversation_id: str) -> bool:
        key = self._key(conversation_id)
        return bool(await self._redis.delete(key, f"{key}:commits"))
