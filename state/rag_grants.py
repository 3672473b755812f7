"""Which tenants may read which shared RAG collection (`shared.<name>`; only admin keys write them).

Keys (prefix `<p>`):
  <p>:rag:shared            SET of shared collection names that have grants
  <p>:rag:shared:<name>     SET of the tenant ids that may read it
"""

from __future__ import annotations

import redis.asyncio as aioredis


class SharedGrants:
    def __init__(self, client: aioredis.Redis, prefix: str):
        self._redis = client
        self._p = prefix

    def _key(self, name: str) -> str:
        return f"{self._p}:rag:shared:{name}"

    async def grant(self, name: str, tenants: list[str]) -> list[str]:
        """Replace who may read `name` (an empty list: nobody but the admins)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._key(name))
            if tenants:
                pipe.sadd(self._key(name), *tenants)
                pipe.sadd(f"{self._p}:rag:shared", name)
            else:
                pipe.srem(f"{self._p}:rag:shared", name)
            await pipe.execute()
        return sorted(tenants)

    async def may_read(self, tenant: str, name: str) -> bool:
        return bool(await self._redis.sismember(self._key(name), tenant))

    async def readable(self, tenant: str) -> list[str]:
        """The shared collections `tenant` may read."""
        names = sorted(await self._redis.smembers(f"{self._p}:rag:shared"))
        return [n for n in names if await self._redis.sismember(self._key(n), tenant)]

    async def all(self) -> dict[str, list[str]]:
        names = sorted(await self._redis.smembers(f"{self._p}:rag:shared"))
        return {n: sorted(await self._redis.smembers(self._key(n))) for n in names}

    async def forget_tenant(self, tenant: str) -> None:
        for name in await self._redis.smembers(f"{self._p}:rag:shared"):
            await self._redis.srem(self._key(name), tenant)
