"""What each provider did, counted in Redis by every orchestrator replica: requests, tokens, cost, failures,
and for the self-hosted engine the seconds it had work (at least one request in flight), from which its
throughput while busy, its cost per token and the utilisation at which self-hosting breaks even follow.

  <p>:prov:{name}   HASH requests, prompt_tokens, completion_tokens, cost_usd, failures, busy_s
"""

from __future__ import annotations

import redis.asyncio as aioredis

_INT_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "failures")


class ProviderUsage:
    def __init__(self, client: aioredis.Redis, prefix: str):
        self._redis = client
        self._p = prefix

    def _key(self, name: str) -> str:
        return f"{self._p}:prov:{{{name}}}"

    async def add(
        self,
        name: str,
        *,
        requests: int = 0,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cost_usd: float = 0.0,
        failures: int = 0,
        busy_s: float = 0.0,
    ) -> None:
        pipe = self._redis.pipeline(transaction=True)
        key = self._key(name)
        for field, value in (
            ("requests", requests),
            ("prompt_tokens", prompt_tokens),
            ("completion_tokens", completion_tokens),
            ("failures", failures),
        ):
            if value:
                pipe.hincrby(key, field, value)
        if cost_usd:
            pipe.hincrbyfloat(key, "cost_usd", cost_usd)
        if busy_s:
            pipe.hincrbyfloat(key, "busy_s", busy_s)
        await pipe.execute()

    async def get(self, name: str) -> dict[str, float]:
        raw = await self._redis.hgetall(self._key(name))
        row: dict[str, float] = {f: int(raw.get(f, 0)) for f in _INT_FIELDS}
        row["cost_usd"] = float(raw.get("cost_usd", 0.0))
        row["busy_s"] = float(raw.get("busy_s", 0.0))
        return row


def self_hosted_economics(
    usage: dict[str, float], gpu_hour_usd: float, gpus: int, managed_usd_per_mtok: float | None
) -> dict[str, float | None]:
    """From measured numbers: tokens/s while busy, $/1M tokens at full use (every replica-hour fully busy), and the
    utilisation below which a managed provider at `managed_usd_per_mtok` would be cheaper."""
    tokens = usage["prompt_tokens"] + usage["completion_tokens"]
    busy = usage["busy_s"]
    if not tokens or not busy:
        return {"tokens_per_s_busy": None, "usd_per_mtok_full_use": None, "break_even_utilisation": None}
    throughput = tokens / busy
    full_use = gpu_hour_usd * gpus / 3600 / throughput * 1e6
    break_even = full_use / managed_usd_per_mtok if managed_usd_per_mtok else None
    return {"tokens_per_s_busy": throughput, "usd_per_mtok_full_use": full_use, "break_even_utilisation": break_even}
