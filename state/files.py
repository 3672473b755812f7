"""Files of the OpenAI Files API (purpose `batch` in, `batch_output` out), in Redis, owned by one API key.

Keys (prefix `<p>:file:`):
  <p>:file:<id>            HASH  the file object's fields + owner
  <p>:file:<id>:content    STRING the bytes
  <p>:files:<owner>        ZSET  file id -> created_at, the owner's listing
"""

from __future__ import annotations

import time
import uuid

import redis.asyncio as aioredis

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

    def _key(self, file_id: str) -> str:
        return f"{self._prefix}:file:{file_id}"

    def _index(self, owner: str) -> str:
        return f"{self._prefix}:files:{owner}"

    async def create(self, owner: str, filename: str, purpose: str, content: bytes, file_id: str | None = None) -> dict:
        """Store a file; with `file_id` (batch outputs: derived from the batch id) storing again is a no-op
        that returns the first one, so a finalisation that runs twice makes one file."""
        file_id = file_id or f"file-{uuid.uuid4().hex[:24]}"
        now = int(time.time())
        fields = {
            "id": file_id,
            "bytes": str(len(content)),
            "created_at": str(now),
            "filename": filename,
            "purpose": purpose,
            "owner": owner,
        }
        created = await self._redis.hsetnx(self._key(file_id), "id", file_id)
        if created:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(f"{self._key(file_id)}:content", content)
                pipe.hset(self._key(file_id), mapping=fields)
                pipe.zadd(self._index(owner), {file_id: now})
                await pipe.execute()
        return file_object(await self._redis.hgetall(self._key(file_id)))

    async def get(self, owner: str, file_id: str, admin: bool = False) -> dict | None:
        """The file object, or None when it does not exist or belongs to another key (indistinguishable)."""
        fields = await self._redis.hgetall(self._key(file_id))
        if not fields or "owner" not in fields or (fields["owner"] != owner and not admin):
            return None
        return file_object(fields)

    async def owner_of(self, file_id: str) -> str | None:
        return await self._redis.hget(self._key(file_id), "owner")

    async def content(self, owner: str, file_id: str, admin: bool = False) -> bytes | None:
        if await self.get(owner, file_id, admin) is None:
            return None
        raw = await self._redis.execute_command("GET", f"{self._key(file_id)}:content", NEVER_DECODE=True)
        return raw or b""

    async def list(self, owner: str, purpose: str | None = None, limit: int = 100) -> list[dict]:
        ids = await self._redis.zrevrange(self._index(owner), 0, max(limit * 4, limit) - 1)
        files = []
        for file_id in ids:
            fields = await self._redis.hgetall(self._key(file_id))
            if fields and "owner" in fields and (purpose is None or fields["purpose"] == purpose):
                files.append(file_object(fields))
            if len(files) >= limit:
                break
        return files

    async def delete(self, owner: str, file_id: str, admin: bool = False) -> bool:
        fields = await self._redis.hgetall(self._key(file_id))
        if not fields or (fields.get("owner") != owner and not admin):
            return False
        await self._redis.delete(self._key(file_id), f"{self._key(file_id)}:content")
        await self._redis.zrem(self._index(fields["owner"]), file_id)
        return True
