"""Recent per-request numbers for the console's live charts (TTFT, throughput, failovers), shared by every
replica through Redis: the orchestrator that finishes an answer writes one sample, any ingress replica reads them.

  <p>:t:{T}:samples   STREAM per tenant, capped at about MAX_SAMPLES entries (XADD MAXLEN ~) and dropped after
                      IDLE_TTL_S without a request: one entry per finished answer, `ts` and the SAMPLE_FIELDS of
                      the answer's metrics record (deployments/run_metrics.py's `wandb_record`), each as a string;
                      a field the record lacks or holds None for is absent

Under the tenant's prefix, so deleting the tenant (state/tenant_purge.py) deletes its samples too, and a tenant
key's view reads its own stream alone; an admin's view merges the streams of the tenants it shows. A rolling
window, not a metrics store: Prometheus keeps the history (README, "Observe and measure").
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from state.keyspace import tenant_base

logger = logging.getLogger("llmserve.console")

MAX_SAMPLES = 2000
IDLE_TTL_S = 86400
# The names `wandb_record` gives them, so the finish stage hands its record over as it is.
NUMBER_FIELDS = (
    "ttft_s",
    "e2e_latency_s",
    "prompt_tokens",
    "completion_tokens",
    "tokens_per_s",
    "failovers",
    "cost_usd",
)
# `failed_over_from`: the providers the answer moved off after a failure, comma-separated (not in the W&B record:
# `record_request_sample` makes it from the failovers it is given).
TEXT_FIELDS = ("tenant", "model", "provider", "providers", "status", "failed_over_from")
SAMPLE_FIELDS = NUMBER_FIELDS + TEXT_FIELDS


def samples_key(prefix: str, tenant: str) -> str:
    return f"{tenant_base(prefix, tenant)}:samples"


async def record_request_sample(
    redis: aioredis.Redis, prefix: str, sample: dict[str, Any], failovers: Sequence[tuple[str, str]] = ()
) -> None:
    """Add one finished request's numbers (`ts` defaults to now); `failovers`: its (from, to) provider pairs
    (RoutedStream.failovers()), kept as `failed_over_from`. Best effort: the answer is already given, so a Redis
    failure is logged, never raised."""
    if failovers:
        sample = {**sample, "failed_over_from": ",".join(before for before, _ in failovers)}
    tenant = sample.get("tenant")
    if not tenant:  # nobody's to show it to
        return
    fields = {name: str(sample[name]) for name in SAMPLE_FIELDS if sample.get(name) is not None}
    fields["ts"] = repr(float(sample.get("ts") or time.time()))
    key = samples_key(prefix, tenant)
    try:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.xadd(key, fields, maxlen=MAX_SAMPLES, approximate=True)
            pipe.expire(key, IDLE_TTL_S)
            await pipe.execute()
    except RedisError as exc:
        logger.warning("console sample not recorded: %r", exc)


async def read_samples(
    redis: aioredis.Redis,
    prefix: str,
    tenants: Sequence[str],
    *,
    window_s: float = 300.0,
    now: float | None = None,
    limit: int = MAX_SAMPLES,
) -> list[dict[str, Any]]:
    """The samples of `tenants` in the last `window_s` seconds (by when they were written), oldest first: at
    most `limit`, the newest. Numbers come back as floats, text as str."""
    now = time.time() if now is None else now
    since = f"{max(0, int((now - window_s) * 1000))}-0"
    each = max(50, limit // max(1, len(tenants)))  # an admin's view of many tenants reads about `limit` in all
    async with redis.pipeline(transaction=False) as pipe:
        for tenant in tenants:
            pipe.xrevrange(samples_key(prefix, tenant), max="+", min=since, count=each)
        streams = await pipe.execute()
    samples = sorted((_decode(fields) for rows in streams for _, fields in rows), key=lambda s: s["ts"])
    return samples[-limit:]


def _decode(fields: dict[str, str]) -> dict[str, Any]:
    sample: dict[str, Any] = {"ts": float(fields.get("ts", 0.0))}
    for name in NUMBER_FIELDS:
        if name in fields:
            try:
                sample[name] = float(fields[name])
            except ValueError:  # written by something else: leave it out rather than fail the page
                continue
    for name in TEXT_FIELDS:
        if name in fields:
            sample[name] = fields[name]
    return sample


def percentile(values: list[float], q: float) -> float | None:
    """The `q` quantile (0..1) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def summarize(samples: list[dict[str, Any]], window_s: float) -> dict[str, Any]:
    """Headline numbers over the window: requests, errors, TTFT p50/p95, output tokens/s, failovers, cost."""
    ttfts = [s["ttft_s"] for s in samples if "ttft_s" in s]
    tokens = sum(s.get("completion_tokens", 0.0) for s in samples)
    return {
        "requests": len(samples),
        "errors": sum(1 for s in samples if s.get("status", "ok") != "ok"),
        "ttft_p50_s": percentile(ttfts, 0.5),
        "ttft_p95_s": percentile(ttfts, 0.95),
        "output_tokens": int(tokens),
        "output_tokens_per_s": tokens / window_s if window_s > 0 else 0.0,
        "failovers": int(sum(s.get("failovers", 0.0) for s in samples)),
        "cost_usd": sum(s.get("cost_usd", 0.0) for s in samples),
    }


def throughput_series(
    samples: list[dict[str, Any]], *, now: float, window_s: float, bucket_s: float
) -> list[tuple[float, float]]:
    """Output tokens per second in buckets of `bucket_s` over the window, each at its bucket's end (seconds
    before `now`, as a negative x), empty buckets included as zero so the line shows idle time."""
    buckets = max(1, math.ceil(window_s / bucket_s))
    start = now - buckets * bucket_s
    totals = [0.0] * buckets
    for s in samples:
        index = int((s["ts"] - start) // bucket_s)
        if 0 <= index < buckets:
            totals[index] += s.get("completion_tokens", 0.0)
    return [(start + (i + 1) * bucket_s - now, total / bucket_s) for i, total in enumerate(totals)]


def ttft_series(samples: list[dict[str, Any]], *, now: float) -> list[tuple[float, float]]:
    """One point per request that had a first token: (seconds before `now`, TTFT in ms)."""
    return [(s["ts"] - now, s["ttft_s"] * 1000) for s in samples if "ttft_s" in s]


def failovers_by_provider(samples: list[dict[str, Any]]) -> dict[str, int]:
    """Answers moved off each provider after a failure, in the window."""
    counts: dict[str, int] = {}
    for s in samples:
        for name in filter(None, s.get("failed_over_from", "").split(",")):
            counts[name] = counts.get(name, 0) + 1
    return counts
