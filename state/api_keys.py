"""API keys. Redis only ever holds SHA-256 hex digests of keys, never the keys.

Keys (prefix `<p>:apikey`):
  <p>:apikey:<sha256>   HASH: key_id, name, rpm, tpm, max_parallel, budget_usd, models (JSON), created, revoked
  <p>:apikeys           SET of the digests (for listing)
  <p>:apikey-id:<id>    STRING -> digest (key_id = first 12 hex digits of the digest: safe to show and log)

Every request reads its key's record (one HGETALL), so a revocation takes effect at once on every replica.
"""

from __future__ import annotations

import json
import time

import redis.asyncio as aioredis
from pydantic import BaseModel, Field

from core.keys import key_hash, new_key


class KeyLimits(BaseModel):
    """Per-key limits; None means unlimited."""

    rpm: int | None = Field(None, ge=1, description="Requests per minute.")
    tpm: int | None = Field(None, ge=1, description="Tokens (prompt + completion) per minute.")
    max_parallel: int | None = Field(None, ge=1, description="Requests in flight at once.")
    budget_usd: float | None = Field(None, ge=0, description="Total spend allowed.")
    models: list[str] | None = Field(None, description="Models this key may use; None = all.")


class KeyRecord(KeyLimits):
    key_id: str
    name: str
    created: float
    revoked: bool = False


def _encode(record: KeyRecord) -> dict[str, str]:
    return {k: json.dumps(v) for k, v in record.model_dump().items()}


def _decode(raw: dict[str, str]) -> KeyRecord:
    return KeyRecord(**{k: json.loads(v) for k, v in raw.items()})


class KeyStore:
    def __init__(self, client: aioredis.Redis, prefix: str):
        self._redis = client
        self._p = prefix

    def _key(self, digest: str) -> str:
        return f"{self._p}:apikey:{digest}"

    async def create(self, name: str, limits: KeyLimits) -> tuple[str, KeyRecord]:
        """A new random key, returned once in plaintext together with its record."""
        key = new_key()
        digest = key_hash(key)
        record = KeyRecord(key_id=digest[:12], name=name, created=time.time(), **limits.model_dump())
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key(digest), mapping=_encode(record))
            pipe.sadd(f"{self._p}:apikeys", digest)
            pipe.set(f"{self._p}:apikey-id:{record.key_id}", digest)
            await pipe.execute()
        return key, record

    async def lookup(self, digest: str) -> KeyRecord | None:
        raw = await self._redis.hgetall(self._key(digest))
        return _decode(raw) if raw else None

    async def list(self) -> list[KeyRecord]:
        digests = sorted(await self._redis.smembers(f"{self._p}:apikeys"))
        async with self._redis.pipeline(transaction=False) as pipe:
            for digest in digests:
                pipe.hgetall(self._key(digest))
            rows = await pipe.execute()
        return sorted((_decode(r) for r in rows if r), key=lambda r: r.created)

    async def revoke(self, key_id_or_name: str) -> list[str]:
        """Revoke by key id, or every key with that name. Returns the revoked key ids."""
        if await self._redis.exists(f"{self._p}:apikey-id:{key_id_or_name}"):
            key_ids = [key_id_or_name]
        else:
            key_ids = [r.key_id for r in await self.list() if r.name == key_id_or_name]
        for key_id in key_ids:
            digest = await self._redis.get(f"{self._p}:apikey-id:{key_id}")
            await self._redis.hset(self._key(digest), "revoked", "true")
        return key_ids
