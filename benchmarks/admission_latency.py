"""How fast a full model says no: with every admission place held by slow streams, how long a further request
takes to get its 503 + Retry-After, against a cheap authenticated request (GET /v1/models) in the same run.

    python -m benchmarks.admission_latency --capacity 8 --probes 100

Our stack (ingress + orchestrator) runs in front of the fake engine (benchmarks/fake_engine.py) at 2 tokens/s,
so the holders stay in flight for the whole measurement.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

import httpx
import typer
from rich.console import Console

from benchmarks.gateway_overhead import MODEL, free_port, start_ours
from benchmarks.loadgen import percentile


async def measure(url: str, key: str, capacity: int, probes: int) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 400, "stream": True}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
        holders = [client.stream("POST", "/v1/chat/completions", json=body) for _ in range(capacity)]
        responses = await asyncio.gather(*(h.__aenter__() for h in holders))
        assert all(r.status_code == 200 for r in responses)
        refused, cheap, statuses = [], [], set()
        for _ in range(probes):
            start = time.perf_counter()
            response = await client.post("/v1/chat/completions", json={**body, "stream": False})
            refused.append(time.perf_counter() - start)
            statuses.add((response.status_code, response.headers.get("retry-after")))
            start = time.perf_counter()
            await client.get("/v1/models")
            cheap.append(time.perf_counter() - start)
        for holder in holders:
            await holder.__aexit__(None, None, None)
    assert statuses == {(503, "1")}, statuses
    return {
        "refusal_p50_ms": percentile(refused, 50) * 1000,
        "refusal_p99_ms": percentile(refused, 99) * 1000,
        "models_p50_ms": percentile(cheap, 50) * 1000,
        "models_p99_ms": percentile(cheap, 99) * 1000,
    }


def main(
    capacity: int = 8, probes: int = 100, redis_url: str = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
):
    workdir = Path(tempfile.mkdtemp(prefix="admission-bench-"))
    stack, key = start_ours(free_port(), 0.0, 2.0, redis_url, workdir, capacity=capacity)
    try:
        result = asyncio.run(measure(stack.url, key, capacity, probes))
    finally:
        stack.shutdown()
    Console().print(
        f"{capacity} places held, {probes} probes: 503 p50 {result['refusal_p50_ms']:.1f} ms, "
        f"p99 {result['refusal_p99_ms']:.1f} ms; GET /v1/models p50 {result['models_p50_ms']:.1f} ms, "
        f"p99 {result['models_p99_ms']:.1f} ms"
    )


if __name__ == "__main__":
    typer.run(main)
