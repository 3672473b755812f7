"""Deleting a tenant from Redis: its keys, everything under its prefix (conversations, files, batches, limits,
usage), its queued batch requests and its read grants; then the tenant itself. (Its RAG collections live in
Chroma: the Retriever deletes those.)"""

from __future__ import annotations

import redis.asyncio as aioredis

from state.api_keys import KeyStore
from state.batches import BatchStore
from state.keyspace import tenant_base
from state.rag_grants import SharedGrants
from state.tenants import TenantStore


async def purge_tenant(client: aioredis.Redis, prefix: str, tenant: str) -> dict[str, int]:
    """Remove every Redis key of `tenant`; returns what was removed, by kind."""
    keys = await KeyStore(client, prefix).delete_tenant_keys(tenant)
    queued = await BatchStore(client, prefix).drop_tenant(tenant)
    await SharedGrants(client, prefix).forget_tenant(tenant)
    removed = 0
    batch: list[str] = []
    async for key in client.scan_iter(match=f"{tenant_base(prefix, tenant)}:*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            removed += await client.unlink(*batch)
            batch = []
    if batch:
        removed += await client.unlink(*batch)
    await TenantStore(client, prefix).forget(tenant)
    return {"api_keys": keys, "redis_keys": removed, "queued_batch_requests": queued}
