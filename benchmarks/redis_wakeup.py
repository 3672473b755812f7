"""What a Redis round trip costs after the process and Redis sat idle: at one stream, every request finds them
both asleep, and each sequential round trip before its first token pays for waking them.

    python -m benchmarks.redis_wakeup --samples 300

With our client (state/redis_client.py) and our gateway (deployments/gateway.py) against a real Redis, after
each idle gap (0 ms: back to back, the baseline): one HGETALL; `authenticate` of a key this replica has seen (its
record and its tenant's in one pipelined round trip); and right after it, `open` (the admission Lua script;
settled again, untimed). Medians of `--samples` calls per gap, and each as a ratio of its back-to-back median.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from core.keys import key_hash
from core.models import ChatRequest
from core.pricing import Price
from core.setting_groups import LimitsSettings
from deployments.gateway import Gateway
from state.api_keys import Limits
from state.redis_client import async_redis

REQUEST = ChatRequest.model_validate(
    {"model": "m", "messages": [{"role": "user", "content": "Say something."}], "max_tokens": 100, "stream": True}
)


async def measure(redis_url: str, gaps_ms: list[float], samples: int) -> dict[float, dict[str, float]]:
    """Median µs of each call after each idle gap."""
    client = async_redis(redis_url)
    prefix = f"llmserve-wakeup-{uuid.uuid4().hex[:8]}"
    gateway = Gateway(
        client, master_key_hash=key_hash("-"), redis_prefix=prefix, limits=LimitsSettings(), price=Price(), capacity=8
    )
    try:
        await gateway.tenants.ensure("bench")
        key, _ = await gateway.keys.create("bench", "bench", Limits(rpm=10**7, tpm=10**10, max_parallel=10**4))
        bearer = f"Bearer {key}"
        await gateway.authenticate(bearer)  # the key's tenant is remembered from here on
        probe = f"{prefix}:probe"
        await client.hset(probe, mapping={"a": "1", "b": "2"})
        results: dict[float, dict[str, float]] = {}
        for gap_ms in gaps_ms:
            took: dict[str, list[float]] = {"HGETALL": [], "authenticate": [], "then open (admission)": []}
            for _ in range(samples):
                await asyncio.sleep(gap_ms / 1000)
                start = time.perf_counter()
                await client.hgetall(probe)
                took["HGETALL"].append(time.perf_counter() - start)
                await asyncio.sleep(gap_ms / 1000)
                start = time.perf_counter()
                who = await gateway.authenticate(bearer)
                authenticated = time.perf_counter()
                ticket = await gateway.open(who, REQUEST)
                took["authenticate"].append(authenticated - start)
                took["then open (admission)"].append(time.perf_counter() - authenticated)
                ticket.begun()  # settled here, out of the timings, as an answer's run would
                ticket.finish()
                await gateway.limiter.settle(who.tenant, who.kid, ticket.reservation_id, 0, 0, 0.0)
            results[gap_ms] = {name: statistics.median(values) * 1e6 for name, values in took.items()}
        return results
    finally:
        keys = [k async for k in client.scan_iter(f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def main(
    samples: Annotated[int, typer.Option(help="Calls per idle gap.")] = 300,
    gap_ms: Annotated[list[float] | None, typer.Option(help="Idle gaps in ms (repeat; default 0 1 5 20 100).")] = None,
    redis_url: str = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
) -> None:
    gaps = gap_ms or [0.0, 1.0, 5.0, 20.0, 100.0]
    if 0.0 not in gaps:
        gaps = [0.0, *gaps]
    results = asyncio.run(measure(redis_url, gaps, samples))
    table = Table("idle before (ms)", *[f"{name}: µs (x back to back)" for name in results[0.0]])
    for gap, row in results.items():
        table.add_row(f"{gap:g}", *[f"{us:.0f} (x{us / results[0.0][name]:.1f})" for name, us in row.items()])
    Console().print(table)


if __name__ == "__main__":
    typer.run(main)
