"""Answers kept for deterministic requests, keyed by what made them, and dropped when a document they cited
changes.

The key is the tenant (its keyspace) and a digest of the model, the sampling parameters, the prompt as the
engine gets it (the normalised history and messages, with the retrieved chunks' text in it) and the ids and
content hashes of the chunks retrieval chose: a document that changes gives other chunks, hence another key.
Ingesting or deleting a document also drops, through an index per source, every answer that cited it. Entries
live under the tenant's keyspace (a tenant's purge removes them) and expire after `ttl_s`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import redis.asyncio as aioredis

from core.models import Citation
from state.keyspace import tenant_base


def cacheable(params: dict[str, Any]) -> bool:
    """Only answers that come out the same every time: greedy (temperature 0) or seeded."""
    return params.get("temperature") == 0 or params.get("seed") is not None


def cache_key(model: str, params: dict[str, Any], prompt: Any, citations: list[Citation]) -> str:
    chunks = [[c.chunk_id, hashlib.sha256(c.text.encode()).hexdigest()] for c in citations]
    material = {"model": model, "params": params, "prompt": prompt, "chunks": chunks}
    return hashlib.sha256(json.dumps(material, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class ResponseCache:
    def __init__(self, client: aioredis.Redis, prefix: str, ttl_s: int, max_bytes: int = 1_000_000):
        self._r = client
        self._prefix = prefix
        self._ttl_s = ttl_s
        self._max_bytes = max_bytes

    def _key(self, tenant: str, digest: str) -> str:
        return f"{tenant_base(self._prefix, tenant)}:rcache:{digest}"

    def _source_index(self, tenant: str, source: str) -> str:
        return f"{tenant_base(self._prefix, tenant)}:rcache-src:{hashlib.sha256(source.encode()).hexdigest()[:32]}"

    async def get(self, tenant: str, digest: str) -> list[dict[str, Any]] | None:
        """The stored answer's chunks, or None."""
        raw = await self._r.get(self._key(tenant, digest))
        return json.loads(raw) if raw else None

    async def put(self, tenant: str, digest: str, chunks: list[dict[str, Any]], sources: list[str]) -> bool:
        """Keep an answer (its chunks as journaled) and index it by the sources it cited; False when too big."""
        raw = json.dumps(chunks, separators=(",", ":"))
        if len(raw) > self._max_bytes:
            return False
        key = self._key(tenant, digest)
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.set(key, raw, ex=self._ttl_s)
            for source in set(sources):
                index = self._source_index(tenant, source)
                pipe.sadd(index, key)
                pipe.expire(index, self._ttl_s)
            await pipe.execute()
        return True

    async def invalidate(self, tenant: str, sources: list[str]) -> int:
        """Drop every answer that cited one of `sources` (ingested again, or deleted); how many were dropped."""
        dropped = 0
        for source in set(sources):
            index = self._source_index(tenant, source)
            keys = await self._r.smembers(index)
            if keys:
                dropped += await self._r.delete(*keys)
            await self._r.delete(index)
        return dropped
