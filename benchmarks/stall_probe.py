"""Where long gaps between streamed tokens come from: one stack, sequential streams, and a watchdog process.

    python -m benchmarks.stall_probe --target ours --requests 12
    python -m benchmarks.stall_probe --target rayllm

Starts a target of benchmarks/targets.py (`ours`, `rayllm`), sends `--requests` streaming chat requests one after
another (the workload of `llmserve bench`), and notes every gap between two content chunks longer than
`--gap-ms` (a chunk may hold several tokens: ray.serve.llm batches its stream every 50 ms). Beside it runs a
watchdog: a process at the highest priority it may take (nice -20 needs root; the result says which it got)
that sleeps 5 ms at a time and notes each wake-up that came more than `--late-ms` late. A watchdog that does
nothing but sleep wakes late only when the machine itself did not run it: neither CPU was given to it, whatever
our processes were doing. A stall that late wake-ups cover for at least half its length is the machine's; the
others are the stack's own.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.table import Table

from benchmarks.bench import Workload
from benchmarks.compare import spawn_ray_target, stop_process
from benchmarks.gateway_overhead import free_port
from benchmarks.loadgen import Record, one_request

WATCHDOG = """
import os, sys, time
try:
    os.setpriority(os.PRIO_PROCESS, 0, -20)
except OSError:
    pass
print(os.getpriority(os.PRIO_PROCESS, 0), flush=True)
late_s, end = float(sys.argv[1]), time.time() + float(sys.argv[2])
while time.time() < end:
    t = time.perf_counter()
    time.sleep(0.005)
    late = time.perf_counter() - t - 0.005
    if late > late_s:
        print(f"{time.time():.3f} {late:.3f}", flush=True)
"""


@dataclass
class Stall:
    end: float  # wall clock, when the chunk after the gap came
    gap_s: float

    def overlaps(self, freezes: list[tuple[float, float]]) -> bool:
        """At least half of this gap fell inside the machine's freezes (each: its end and length)."""
        start = self.end - self.gap_s
        frozen = sum(max(0.0, min(self.end, e) - max(start, e - d)) for e, d in freezes)
        return frozen >= self.gap_s / 2


async def run_probe(url: str, key: str, bodies: list[dict]) -> list[Record]:
    headers = {} if key == "none" else {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as client:
        records = [await one_request(client, body) for body in bodies]
    if failed := [r.status for r in records if r.status != 200]:
        raise RuntimeError(f"requests failed with {failed}")
    return records


def main(
    target: Annotated[str, typer.Option(help="ours or rayllm (benchmarks/targets.py).")] = "ours",
    requests: Annotated[int, typer.Option(help="Sequential streaming requests.")] = 12,
    max_tokens: Annotated[int, typer.Option(help="Tokens per answer.")] = 48,
    gap_ms: Annotated[float, typer.Option(help="A gap between content chunks longer than this is a stall.")] = 120,
    late_ms: Annotated[float, typer.Option(help="A watchdog wake-up this late is a freeze of the machine.")] = 30,
    out: Annotated[Path | None, typer.Option(help="Write the results as JSON here.")] = None,
) -> None:
    from benchmarks.targets import engine_settings

    console = Console()
    settings = engine_settings(8000)
    log = Path(f"stall_probe_{target}.log")
    proc, url, key = spawn_ray_target(target, free_port(), log)
    try:
        bodies = Workload(model=settings.engine.model_name, requests=requests, max_tokens=max_tokens).bodies()
        asyncio.run(run_probe(url, key, bodies[:1]))  # a first request: warm-up, not counted
        watchdog = subprocess.Popen(
            [sys.executable, "-c", WATCHDOG, str(late_ms / 1000), "3600"], stdout=subprocess.PIPE, text=True
        )
        try:
            records = asyncio.run(run_probe(url, key, bodies))
            alive = watchdog.poll() is None
        finally:
            watchdog.terminate()
            try:
                output = watchdog.communicate(timeout=10)[0]
            except subprocess.TimeoutExpired:
                watchdog.kill()
                output = watchdog.communicate()[0]
        if not alive:  # a watchdog that stopped early would read as "the machine never froze"
            raise RuntimeError(f"the watchdog exited early ({watchdog.returncode}): {output[-500:]}")
        nice, *lines = [line for line in output.split("\n") if line.strip()]
        freezes = [(float(e), float(d)) for e, d in (line.split() for line in lines)]
    finally:
        stop_process(proc)
    gaps_s = [g for r in records for g in r.itl_s]
    stalls = [Stall(end, g) for r in records for g, end in zip(r.itl_s, r.itl_end, strict=True) if g > gap_ms / 1000]
    machine = [s for s in stalls if s.overlaps(freezes)]
    quantiles = statistics.quantiles(gaps_s, n=100) if len(gaps_s) > 1 else [math.nan] * 99
    result = {
        "target": target,
        "requests": requests,
        "watchdog_nice": int(nice),
        "chunk_gaps": len(gaps_s),
        "gap_p50_ms": round(quantiles[49] * 1000, 1),
        "gap_p99_ms": round(quantiles[98] * 1000, 1),
        "stalls": len(stalls),
        "stall_ms": round(sum(s.gap_s for s in stalls) * 1000),
        "stalls_in_machine_freezes": len(machine),
        "machine_freezes": len(freezes),
        "machine_frozen_ms": round(sum(d for _, d in freezes) * 1000),
        "longest_freeze_ms": round(max((d for _, d in freezes), default=0.0) * 1000),
    }
    title = f"Stalls over {gap_ms:g} ms between streamed content chunks, {target}, {requests} sequential streams"
    table = Table(title=title)
    for name in result:
        table.add_column(name.replace("_", " "))
    table.add_row(*(str(v) for v in result.values()))
    console.print(table)
    if out is not None:
        out.write_text(json.dumps({**result, "stall_list": [s.__dict__ for s in stalls], "freezes": freezes}))


if __name__ == "__main__":
    typer.run(main)
