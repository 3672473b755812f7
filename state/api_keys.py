"""API keys. Redis only ever holds SHA-256 hex digests of keys, never the keys. Every key belongs to a tenant.

Keys (prefix `<p>`):
  <p>:apikey:<sha256>   HASH: key_id, name, tenant, admin, created, expires_at, revoked, and the key's limits
                        (rpm, tpm, max_parallel, budget_usd, budget_window, models), each JSON
  <p>:apikeys           SET of the digests (for listing)
  <p>:apikey-id:<id>    STRING -> digest (key_id = first 12 hex digits of the digest: safe to show and log)
  <p>:t:{T}:keys        SET of the key ids of tenant T

Every request reads its key's record (one HGETALL), so a revocation or an expiry takes effect at once on every
replica.
"""

from __future__ import annotations

import json
import time
from typing import Literal

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field

from core.keys import key_hash, new_key
from state.keyspace import tenant_base

BudgetWindow = Literal["total", "daily", "monthly"]


class Limits(BaseModel):
    """Limits of a key or of a tenant (both apply to every request); None means unlimited."""

    model_config = ConfigDict(extra="forbid")

    rpm: int | None = Field(None, ge=1, description="Requests per minute.")
    tpm: int | None = Field(None, ge=1, description="Tokens (prompt + completion) per minute.")
    max_parallel: int | None = Field(None, ge=1, description="Requests in flight at once.")
    budget_usd: float | None = Field(None, ge=0, description="Spend allowed per budget window.")
    budget_window: BudgetWindow = Field(
        "total", description="When the budget starts again: never (total), each UTC day, or each UTC month."
    )
    models: list[str] | None = Field(None, description="Models it may use; None = all.")


class KeyRecord(Limits):
    key_id: str
    name: str
    tenant: str
    admin: bool = False
    created: float
    expires_at: float | None = None
    revoked: bool = False
    response_cache: bool | None = None  # answers from the response cache: None follows state.response_cache

    def limits(self) -> Limits:
        return Limits(**self.model_dump(include=set(Limits.model_fields)))

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (time.time() if now is None else now) >= self.expires_at


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

    def _tenant_keys(self, tenant: str) -> str:
        return f"{tenant_base(self._p, tenant)}:keys"

    async def create(
        self,
        name: str,
        tenant: str,
        limits: Limits,
        *,
        admin: bool = False,
        expires_at: float | None = None,
        own_tenant: bool = False,
        response_cache: bool | None = None,
    ) -> tuple[str, KeyRecord]:
        """A new random key, returned once in plaintext together with its record. `own_tenant`: the key is its
        own tenant, named by its key id."""
        key = new_key()
        digest = key_hash(key)
        record = KeyRecord(
            key_id=digest[:12],
            name=name,
            tenant=digest[:12] if own_tenant else tenant,
            admin=admin,
            created=time.time(),
            expires_at=expires_at,
            response_cache=response_cache,
            **limits.model_dump(),
        )
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key(digest), mapping=_encode(record))
            pipe.sadd(f"{self._p}:apikeys", digest)
            pipe.set(f"{self._p}:apikey-id:{record.key_id}", digest)
            pipe.sadd(self._tenant_keys(record.tenant), record.key_id)
            await pipe.execute()
        return key, record

    async def lookup(self, digest: str) -> KeyRecord | None:
        raw = await self._redis.hgetall(self._key(digest))
        return _decode(raw) if raw else None

    async def lookup_with(self, digest: str, other: str) -> tuple[KeyRecord | None, dict[str, str]]:
        """The key's record and the HASH at `other` (its tenant's record, for a caller that knows the key's
        tenant), in one round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._key(digest))
            pipe.hgetall(other)
            raw, other_raw = await pipe.execute()
        return (_decode(raw) if raw else None), other_raw

    async def by_id(self, key_id: str) -> KeyRecord | None:
        digest = await self._redis.get(f"{self._p}:apikey-id:{key_id}")
        return await self.lookup(digest) if digest else None

    async def list(self, tenant: str | None = None) -> list[KeyRecord]:
        """Every key, or a tenant's keys, oldest first."""
        if tenant is None:
            digests = sorted(await self._redis.smembers(f"{self._p}:apikeys"))
        else:
            ids = sorted(await self._redis.smembers(self._tenant_keys(tenant)))
            found = await self._redis.mget(*[f"{self._p}:apikey-id:{i}" for i in ids]) if ids else []
            digests = [d for d in found if d]
        async with self._redis.pipeline(transaction=False) as pipe:
            for digest in digests:
                pipe.hgetall(self._key(digest))
            rows = await pipe.execute()
        return sorted((_decode(r) for r in rows if r), key=lambda r: r.created)

    async def revoke(self, key_id_or_name: str, tenant: str | None = None) -> list[str]:
        """Revoke by key id, or every key with that name (within `tenant` when given). Returns the key ids."""
        record = await self.by_id(key_id_or_name)
        if record is not None and (tenant is None or record.tenant == tenant):
            key_ids = [record.key_id]
        else:
            key_ids = [r.key_id for r in await self.list(tenant) if r.name == key_id_or_name]
        for key_id in key_ids:
            digest = await self._redis.get(f"{self._p}:apikey-id:{key_id}")
            await self._redis.hset(self._key(digest), "revoked", "true")
        return key_ids

    async def delete_tenant_keys(self, tenant: str) -> int:
        """Remove every key of a tenant, records and indexes (deleting a tenant)."""
        ids = sorted(await self._redis.smembers(self._tenant_keys(tenant)))
        digests = await self._redis.mget(*[f"{self._p}:apikey-id:{i}" for i in ids]) if ids else []
        async with self._redis.pipeline(transaction=True) as pipe:
            for key_id, digest in zip(ids, digests, strict=True):
                pipe.delete(f"{self._p}:apikey-id:{key_id}")
                if digest:
                    pipe.delete(self._key(digest))
                    pipe.srem(f"{self._p}:apikeys", digest)
            pipe.delete(self._tenant_keys(tenant))
            await pipe.execute()
        return len(ids)
