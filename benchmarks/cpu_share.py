"""Who uses the CPU while a stack serves: every process on this machine, grouped by role (the engine's
worker and scheduler, our deployments, Ray's own processes, the load generator), over a window.

    .venv/bin/python -m benchmarks.cpu_share --window 20            # run beside `python -m benchmarks bench`
    .venv/bin/python -m benchmarks.cpu_share --window 20 --json out.json

On a 2-core machine every percent our layers take is a percent the engine may miss; this shows which layer
takes it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import psutil
import typer
from rich.console import Console
from rich.table import Table

console = Console()

# First match wins: the engine's processes before the replica that owns them.
GROUPS = (
    ("VLLM::Worker", "engine worker"),
    ("VLLM::EngineCore", "engine scheduler"),
    ("EngineCore", "engine scheduler"),
    ("vllm.entrypoints", "vLLM API server"),
    ("ServeController", "Serve controller"),
    ("ProxyActor", "Serve proxy"),
    ("raylet", "raylet"),
    ("gcs_server", "gcs_server"),
    ("wandb", "wandb"),
    ("redis", "redis"),
    ("benchmarks", "load generator"),
)


def role(proc: psutil.Process) -> str:
    try:
        title = " ".join(proc.cmdline()) or proc.name()
    except psutil.Error:
        return "gone"
    if "ServeReplica:" in title:  # ray::ServeReplica:<app>:<deployment>: the deployment
        name = title.split("ServeReplica:", 1)[1].split()[0].split(":")[1].split(".")[0]
        return "LLMServer replica" if name.startswith("LLM") else name
    for key, name in GROUPS:
        if key in title:
            return name
    return "other"


def sample(window_s: float) -> dict[str, float]:
    """CPU used by each role over the window, in percent of one core."""

    def times() -> dict[int, tuple[str, float]]:
        out = {}
        for p in psutil.process_iter():
            try:
                t = p.cpu_times()
                out[p.pid] = (role(p), t.user + t.system)
            except psutil.Error:
                continue
        return out

    before = times()
    t0 = time.monotonic()
    time.sleep(window_s)
    after = times()
    elapsed = time.monotonic() - t0
    shares: dict[str, float] = {}
    for pid, (name, cpu) in after.items():
        used = cpu - before[pid][1] if pid in before else cpu
        shares[name] = shares.get(name, 0.0) + 100.0 * used / elapsed
    return dict(sorted(shares.items(), key=lambda kv: -kv[1]))


def main(
    window: Annotated[float, typer.Option(help="Seconds to sample.")] = 20.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the shares here.")] = None,
) -> None:
    shares = sample(window)
    table = Table(title=f"CPU by role over {window:.0f} s (% of one core; {psutil.cpu_count()} cores)")
    table.add_column("role")
    table.add_column("CPU %", justify="right")
    for name, pct in shares.items():
        if pct >= 0.5:
            table.add_row(name, f"{pct:.1f}")
    table.add_row("total", f"{sum(shares.values()):.1f}")
    console.print(table)
    if json_out:
        json_out.write_text(json.dumps(shares, indent=2))


if __name__ == "__main__":
    typer.run(main)
