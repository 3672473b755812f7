"""Where a tenant's data lives in Redis: every key of tenant T starts with `<p>:t:{T}:` (conversations, files,
batches, limits, usage, key index), so the hash tag keeps one tenant in one Redis Cluster slot (its Lua scripts
may touch several of its keys) and deleting a tenant is one prefix."""

from __future__ import annotations


def tenant_base(prefix: str, tenant: str) -> str:
    return f"{prefix}:t:{{{tenant}}}"
