"""A closed-loop load generator for OpenAI-compatible streaming chat endpoints.

`run_level` keeps `concurrency` streams in flight until `requests` have finished and returns one record per
request: TTFT (first content token), inter-token gaps, end-to-end latency, completion tokens and status.
`summarize` turns records into percentiles and throughput. Other benchmarks build on these two.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import statistics
import time
from dataclasses import dataclass, field

import httpx

# One INFO line per request (a process that started Ray logs at INFO) costs the load generator CPU it needs.
logging.getLogger("httpx").setLevel(logging.WARNING)


@dataclass
class Record:
    status: int
    ttft_s: float | None = None
    e2e_s: float = 0.0
    completion_tokens: int = 0
    itl_s: list[float] = field(default_factory=list)
    itl_end: list[float] = field(default_factory=list)  # wall clock (time.time) at the end of each gap


async def one_request(client: httpx.AsyncClient, body: dict) -> Record:
    start = time.perf_counter()
    record = Record(status=0)
    last = None
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        record.status = response.status_code
        if response.status_code != 200:
            await response.aread()
            record.e2e_s = time.perf_counter() - start
            return record
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            payload = json.loads(line[6:])
            if any((c.get("delta") or {}).get("content") for c in payload.get("choices") or []):
                now = time.perf_counter()
                if record.ttft_s is None:
                    record.ttft_s = now - start
                else:
                    record.itl_s.append(now - last)
                    record.itl_end.append(time.time())
                last = now
            if payload.get("usage"):
                record.completion_tokens = payload["usage"]["completion_tokens"]
    record.e2e_s = time.perf_counter() - start
    return record


async def run_poisson(
    url: str, headers: dict[str, str], bodies: list[dict], rate: float, seed: int
) -> tuple[list[Record], float]:
    """Open loop: requests start at Poisson arrival times (`rate` per second, seeded), whatever the server does."""
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600, limits=limits) as client:
        start = time.perf_counter()
        tasks, at = [], 0.0
        for body in bodies:
            at += rng.expovariate(rate)
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one_request(client, body)))
        records = list(await asyncio.gather(*tasks))
        return records, time.perf_counter() - start


async def run_level(
    url: str | list[str],
    headers: dict[str, str],
    bodies: list[dict],
    concurrency: int,
    duration_s: float | None = None,
) -> tuple[list[Record], float]:
    """Send every body, `concurrency` at a time; with `duration_s`, cycle through the bodies and start no new
    request after that long (those in flight finish). Several URLs (the ports of direct-ingress replicas): the
    workers take them in turn, as a load balancer would spread connections. Returns the records and the wall time."""
    urls = [url] if isinstance(url, str) else url
    per_url = -(-concurrency // len(urls)) + 4
    limits = httpx.Limits(max_connections=per_url, max_keepalive_connections=per_url)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(base_url=u, headers=headers, timeout=600, limits=limits))
            for u in urls
        ]
        source = itertools.cycle(bodies) if duration_s else iter(bodies)
        records: list[Record] = []
        start = time.perf_counter()
        stop_at = start + duration_s if duration_s else float("inf")

        async def worker(client: httpx.AsyncClient) -> None:
            for body in source:
                records.append(await one_request(client, body))
                if time.perf_counter() >= stop_at:
                    return

        await asyncio.gather(*(worker(clients[i % len(clients)]) for i in range(concurrency)))
        return records, time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def tpot_s(record: Record) -> float | None:
    """Time per output token after the first (vLLM's TPOT)."""
    if record.ttft_s is None or record.completion_tokens < 2:
        return None
    return (record.e2e_s - record.ttft_s) / (record.completion_tokens - 1)


def summarize(
    records: list[Record], wall_s: float, ttft_slo_s: float | None = None, tpot_slo_s: float | None = None
) -> dict[str, float]:
    """Percentiles (mean, p50, p90, p99) of TTFT, TPOT, ITL and e2e; request and token throughput; goodput =
    requests/s that met both SLOs (when given)."""
    ok = [r for r in records if r.status == 200 and r.ttft_s is not None]
    ttft = [r.ttft_s for r in ok]
    e2e = [r.e2e_s for r in ok]
    itl = [g for r in ok for g in r.itl_s]
    tpot = [t for t in (tpot_s(r) for r in ok) if t is not None]
    good = [
        r
        for r in ok
        if (ttft_slo_s is None or r.ttft_s <= ttft_slo_s) and (tpot_slo_s is None or (tpot_s(r) or 0) <= tpot_slo_s)
    ]
    spread = {}
    for name, values in (("ttft", ttft), ("tpot", tpot), ("itl", itl), ("e2e", e2e)):
        spread[f"{name}_mean_ms"] = statistics.fmean(values) * 1000 if values else float("nan")
        for q in (50, 90, 99):
            spread[f"{name}_p{q}_ms"] = percentile(values, q) * 1000
    return {
        "requests": len(records),
        "errors": len(records) - len(ok),
        "req_per_s": len(ok) / wall_s if wall_s else 0.0,
        "output_tok_per_s": sum(r.completion_tokens for r in ok) / wall_s if wall_s else 0.0,
        "goodput_req_per_s": len(good) / wall_s if wall_s else 0.0,
        **spread,
    }


def samples_ms(records: list[Record]) -> dict[str, list[float]]:
    """The raw latencies of successful requests (ms), for CDF plots."""
    ok = [r for r in records if r.status == 200 and r.ttft_s is not None]
    return {
        "ttft": [round(r.ttft_s * 1000, 2) for r in ok],
        "itl": [round(g * 1000, 2) for r in ok for g in r.itl_s],
        "e2e": [round(r.e2e_s * 1000, 2) for r in ok],
    }


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}
