"""What a Responses API request asked, per tenant, beside its answer's journal (which holds the output): its own
input items (as chat messages), instructions, the response it continues and whether it is stored. A chain of
responses is read back through `previous_response_id`, so a chain may fork.

    <p>:t:{T}:responses:<id>    STRING JSON record, expiring with the journal (state.journal_ttl_s)
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from state.keyspace import tenant_base


class ResponseStore:
    def __init__(self, client: aioredis.Redis, prefix: str, ttl_s: int):
        self._redis = client
        self._prefix = prefix
        self._ttl_s = ttl_s

    def _key(self, tenant: str, response_id: str) -> str:
        return f"{tenant_base(self._prefix, tenant)}:responses:{response_id}"

    async def put(self, tenant: str, response_id: str, record: dict[str, Any]) -> None:
        await self._redis.set(self._key(tenant, response_id), json.dumps(record), ex=self._ttl_s)

    async def get(self, tenant: str, response_id: str) -> dict[str, Any] | None:
        raw = await self._redis.get(self._key(tenant, response_id))
        return json.loads(raw) if raw else None

    async def delete(self, tenant: str, response_id: str) -> bool:
        return bool(await self._redis.delete(self._key(tenant, response_id)))
