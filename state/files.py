"""Files of the OpenAI Files API (purpose `batch` in, `batch_output` out), in Redis, owned by a tenant (and made
by one of its keys). A file id is looked up within the caller's tenant only: another tenant's file does not exist
for it.

Keys (prefix `<p>:t:{T}`, state/keyspace.py):
  <p>:t:{T}:file:<id>            HASH  the file object's fields + tenant, owner (the key that made it)
  <p>:t:{T}:file:<id>:content    STRING the bytes
  <p>:t:{T}:files                ZSET  file id -> created_at, the tenant's listing
"""

from __future__ import annotations

import time
import uuid

import redis.asyncio as aioredis

from core.names import OBJECT_ID_RE
from state.keyspace import tenant_base

PURPOSES = ("batch", "batch_output", "user_data")


def file_object(fields: dict[str, str]) -> dict:
    """The OpenAI file object (what the SDK's FileObject parses)."""
    return {
        "id": fields["id"],
        "object": "file",
        "bytes": int(fields["bytes"]),
        "created_at": int(fields["created_at"]),
        "filename": fields["filename"],
        "purpose": fields["purpose"],
        "status": "processed",
        "expires_at": int(fields["expires_at"]) if fields.get("expires_at") else None,
    }


class FileStore:
    def __init__(self, client: aioredis.Redis, prefix: str):
        self._redis = client
        self._prefix = prefix

    def _key(self, tenant: str, file_id: str) -> str:
        return f"{tenant_base(self._prefix, tenant)}:file:{file_id}"

    def _index(self, tenant: str) -> str:
        return f"{tenant_base(self._prefix, tenant)}:files"

    async def create(
        self, tenant: str, owner: str, filename: str, purpose: str, content: bytes, file_id: str | None = None
    ) -> dict:
        """Store a file; with `file_id` (batch outputs: derived from the batch id) storing again is a no-op
        that returns the first one, so a finalisation that runs twice makes one file."""
        file_id = file_id or f"file-{uuid.uuid4().hex[:24]}"
        key = self._key(tenant, file_id)
        now = int(time.time())
        fields = {
            "id": file_id,
            "bytes": str(len(content)),
            "created_at": str(now),
            "filename": filename,
            "purpose": purpose,
            "tenant": tenant,
            "owner": owner,
        }
        if await self._redis.hsetnx(key, "id", file_id):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(f"{key}:content", content)
                pipe.hset(key, mapping=fields)
                pipe.zadd(self._index(tenant), {file_id: now})
                await pipe.execute()
        return file_object(await self._redis.hgetall(key))

    async def get(self, tenant: str, file_id: str) -> dict | None:
        """The file object, or None when the tenant has no such file."""
        if not OBJECT_ID_RE.match(file_id):
            return None
        fields = await self._redis.hgetall(self._key(tenant, file_id))
        return file_object(fields) if fields and "owner" in fields else None

    async def content(self, tenant: str, file_id: str) -> bytes | None:
        if await self.get(tenant, file_id) is None:
            return None
        raw = await self._redis.execute_command("GET", f"{self._key(tenant, file_id)}:content", NEVER_DECODE=True)
        return raw or b""

    async def list(self, tenant: str, purpose: str | None = None, limit: int = 100) -> list[dict]:
        ids = await self._redis.zrevrange(self._index(tenant), 0, max(limit * 4, limit) - 1)
        files = []
        for file_id in ids:
            fields = await self._redis.hgetall(self._key(tenant, file_id))
            if fields and "owner" in fields and (purpose is None or fields["purpose"] == purpose):
                files.append(file_object(fields))
            if len(files) >= limit:
                break
        return files

    async def count(self, tenant: str) -> int:
        return int(await self._redis.zcard(self._index(tenant)))

    async def delete(self, tenant: str, file_id: str) -> bool:
        if await self.get(tenant, file_id) is None:
            return False
        key = self._key(tenant, file_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(key, f"{key}:content")
            pipe.zrem(self._index(tenant), file_id)
            await pipe.execute()
        return True
