"""Deleting a tenant from Redis: its keys, everything under its prefix (conversations, files, batches, limits,
usage), its queued batch requests and its read grants; then the tenant itself. (Its RAG collections live in
Chroma: the Retriever deletes those.)"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from state.api_keys import KeyStore
from state.batches import BatchStore
from state.keyspace import tenant_base
from state.rag_grants import SharedGrants
from state.tenants import TenantStore

SETTLE_S = 2.0  # longer than a batch finalisation (a few Redis round trips) takes


async def purge_tenant(client: aioredis.Redis, prefix: str, tenant: str, settle_s: float = SETTLE_S) -> dict[str, int]:
    """Remove every Redis key of `tenant`; returns what was removed, by kind. Sweeps twice, `settle_s` apart: a
    worker that read a batch just before it was deleted (finalising it, writing its output files) writes after
    the first sweep; its commits are refused once the batch is gone, so the second sweep finds the last of it."""
    keys = await KeyStore(client, prefix).delete_tenant_keys(tenant)
    queued = await BatchStore(client, prefix).drop_tenant(tenant)
    await SharedGrants(client, prefix).forget_tenant(tenant)
    removed = await _sweep(client, f"{tenant_base(prefix, tenant)}:*")
    await asyncio.sleep(settle_s)
    removed += await _sweep(client, f"{tenant_base(prefix, tenant)}:*")
    await TenantStore(client, prefix).forget(tenant)
    return {"api_keys": keys, "redis_keys": removed, "queued_batch_requests": queued}


async def _sweep(client: aioredis.Redis, match: str) -> int:
    removed = 0
    batch: list[str] = []
    async for key in client.scan_iter(match=match, count=1000):
        batch.append(key)
        if len(batch) >= 500:
            removed += await client.unlink(*batch)
            batch = []
    if batch:
        removed += await client.unlink(*batch)
    return removed
