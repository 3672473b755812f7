"""Tenants: the unit that owns data. Every API key belongs to one; its limits apply beside each key's.

Keys (prefix `<p>`):
  <p>:tenants           SET of tenant ids
  <p>:t:{T}:meta        HASH: id, name, created, and the tenant's limits (JSON)
"""

from __future__ import annotations

import json
import time

import redis.asyncio as aioredis
from pydantic import BaseModel, Field

from state.api_keys import Limits
from state.keyspace import tenant_base


class TenantRecord(BaseModel):
    id: str
    name: str
    created: float
    limits: Limits = Field(default_factory=Limits)


class TenantStore:
    def __init__(self, client: aioredis.Redis, prefix: str):
        self._redis = client
        self._p = prefix

    def meta_key(self, tenant: str) -> str:
        """The tenant's record (a HASH): for a caller that reads it in a pipeline with other keys."""
        return f"{tenant_base(self._p, tenant)}:meta"

    async def ensure(self, tenant: str, name: str | None = None) -> TenantRecord:
        """The tenant, made (unlimited) when it does not exist yet."""
        fields = {
            "id": tenant,
            "name": name or tenant,
            "created": repr(time.time()),
            "limits": Limits().model_dump_json(),
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            for field, value in fields.items():
                pipe.hsetnx(self.meta_key(tenant), field, value)
            pipe.sadd(f"{self._p}:tenants", tenant)
            await pipe.execute()
        found = await self.get(tenant)
        assert found is not None
        return found

    async def get(self, tenant: str) -> TenantRecord | None:
        return decode_tenant(await self._redis.hgetall(self.meta_key(tenant)))

    async def set_limits(self, tenant: str, limits: Limits, name: str | None = None) -> TenantRecord:
        await self.ensure(tenant)
        fields = {"limits": limits.model_dump_json(), **({"name": name} if name else {})}
        await self._redis.hset(self.meta_key(tenant), mapping=fields)
        found = await self.get(tenant)
        assert found is not None
        return found

    async def list(self) -> list[TenantRecord]:
        tenants = sorted(await self._redis.smembers(f"{self._p}:tenants"))
        found = [await self.get(t) for t in tenants]
        return [t for t in found if t is not None]

    async def forget(self, tenant: str) -> None:
        """Drop the tenant from the index (its keys are deleted with the rest of its data)."""
        await self._redis.srem(f"{self._p}:tenants", tenant)


def decode_tenant(raw: dict[str, str]) -> TenantRecord | None:
    """A tenant's record from its HASH (None: no such tenant)."""
    if not raw:
        return None
    return TenantRecord(
        id=raw["id"], name=raw["name"], created=float(raw["created"]), limits=Limits(**json.loads(raw["limits"]))
    )
