"""What the scale-or-spill controller shares through Redis: the orchestrators record each finished answer's
output tokens (wherever it was served) and self-hosted TTFT per model in 10-second buckets; the Serve autoscaling
policy (deployments/scale_or_spill_policy.py, in Serve's controller) reads the last minute of them, decides, and
stores the decision, which the orchestrators' routers follow (routing.strategy: scale_or_spill) and
`llmserve cost` shows. Keys: `<p>:sos:{<model>}:<bucket>` (hashes, 10 min), `<p>:sos:{<model>}:decision`
(JSON), `<p>:sos:decisions` (a capped stream of every decision)."""

from __future__ import annotations

import json
import time
from typing import Any

import redis
import redis.asyncio as aioredis

BUCKET_S = 10
WINDOW_S = 60
BUCKETS_KEPT_S = 600
DECISIONS_KEPT = 1000
DECISION_TTL_S = 60  # the policy decides every 10 s


def _bucket_key(prefix: str, model: str, bucket: int) -> str:
    return f"{prefix}:sos:{{{model}}}:{bucket}"


def decision_key(prefix: str, model: str) -> str:
    return f"{prefix}:sos:{{{model}}}:decision"


def decisions_stream(prefix: str) -> str:
    return f"{prefix}:sos:decisions"


class ScalingSignals:
    """The orchestrators' side (asyncio)."""

    def __init__(self, client: aioredis.Redis, prefix: str):
        self._redis = client
        self._p = prefix

    async def record(self, model: str, completion_tokens: int, self_hosted_ttft_s: float | None) -> None:
        key = _bucket_key(self._p, model, int(time.time()) // BUCKET_S)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hincrby(key, "tokens", completion_tokens)
        if self_hosted_ttft_s is not None:
            pipe.hincrby(key, "ttft_ms", round(self_hosted_ttft_s * 1000))
            pipe.hincrby(key, "ttft_n", 1)
        pipe.expire(key, BUCKETS_KEPT_S)
        await pipe.execute()

    async def spill_fraction(self, model: str) -> float:
        raw = await self._redis.get(decision_key(self._p, model))
        return float(json.loads(raw)["spill_fraction"]) if raw else 0.0

    async def decisions(self) -> dict[str, dict[str, Any]]:
        """The latest decision per model (for /admin/providers and `llmserve cost`)."""
        latest: dict[str, dict[str, Any]] = {}
        for _, fields in await self._redis.xrevrange(decisions_stream(self._p), count=200):
            if fields["model"] not in latest:
                latest[fields["model"]] = json.loads(fields["decision"])
        return latest


def read_load(client: redis.Redis, prefix: str, model: str, now: float) -> tuple[float, float | None]:
    """(output tokens/s asked of `model` over the last minute's complete buckets, its self-hosted TTFT mean).
    `client` decodes replies (state/redis_client.py sync_redis)."""
    last = int(now) // BUCKET_S - 1  # the current bucket is still filling
    buckets = range(last - WINDOW_S // BUCKET_S + 1, last + 1)
    pipe = client.pipeline(transaction=False)
    for bucket in buckets:
        pipe.hgetall(_bucket_key(prefix, model, bucket))
    rows = pipe.execute()
    tokens = sum(int(row.get("tokens", 0)) for row in rows)
    ttft_ms = sum(int(row.get("ttft_ms", 0)) for row in rows)
    ttft_n = sum(int(row.get("ttft_n", 0)) for row in rows)
    return tokens / WINDOW_S, (ttft_ms / ttft_n / 1000 if ttft_n else None)


def store_decision(client: redis.Redis, prefix: str, model: str, decision: dict[str, Any]) -> None:
    body = json.dumps(decision)
    pipe = client.pipeline(transaction=False)
    pipe.set(decision_key(prefix, model), body, ex=DECISION_TTL_S)  # a controller that stopped: no spill
    pipe.xadd(decisions_stream(prefix), {"model": model, "decision": body}, maxlen=DECISIONS_KEPT, approximate=True)
    pipe.execute()
