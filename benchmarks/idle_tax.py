"""What the stack costs in CPU while it serves nothing: the tax Ray and our deployments take from the engine
on a small machine. Starts the whole graph with the fake engine (benchmarks/fake_engine.py), waits for it to
settle, then reads the CPU time of every process of that Ray instance over a window.

    .venv/bin/python -m benchmarks.idle_tax                       # default Serve settings vs our tuned ones
    .venv/bin/python -m benchmarks.idle_tax --window 30 --repeats 3

Each variant runs in a process of its own (Serve reads its environment at start).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import psutil
import typer
from rich.console import Console
from rich.table import Table

console = Console()
VARIANTS = {
    "Serve's default control loop (0.1 s)": {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.1"},
    "ours (0.5 s, llmserve up's default)": {},
}


def _group(proc: psutil.Process) -> str:
    try:
        title = " ".join(proc.cmdline())[:120]
    except psutil.Error:
        return "?"
    for key in ("ServeController", "ProxyActor", "Ingress", "Orchestrator", "Retriever", "BatchWorker", "LLM",
                "DashboardAgent", "raylet", "gcs_server", "Telemetry", "log_monitor", "IDLE"):  # fmt: skip
        if key in title:
            return key
    return "other"


def measure_self(window_s: float, settle_s: float) -> dict:
    """In the child: start the fake-engine stack, settle, sample the CPU of this process tree."""
    from benchmarks.gateway_overhead import free_port, start_ours

    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    stack, _ = start_ours(free_port(), 0.0, 0.0, redis_url, Path(tempfile.mkdtemp()))
    try:
        time.sleep(settle_s)
        me = psutil.Process()
        procs = [me, *me.children(recursive=True)]
        before = {}
        for p in procs:
            try:
                t = p.cpu_times()
                before[p.pid] = (p, t.user + t.system)
            except psutil.Error:
                pass
        time.sleep(window_s)
        groups: dict[str, float] = {}
        for p, start in before.values():
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            name = _group(p) if p.pid != me.pid else "driver"
            groups[name] = groups.get(name, 0.0) + (t.user + t.system - start) / window_s
        return {"total": sum(groups.values()), "groups": groups}
    finally:
        stack.shutdown()


def main(
    window: Annotated[float, typer.Option(help="Seconds of CPU sampling per run.")] = 30.0,
    settle: Annotated[float, typer.Option(help="Seconds to wait after the app is ready.")] = 15.0,
    repeats: int = 1,
    child: Annotated[bool, typer.Option(hidden=True)] = False,
    out: Path = Path("idle-tax.json"),
) -> None:
    if child:
        print("RESULT " + json.dumps(measure_self(window, settle)), flush=True)
        return
    results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for _ in range(repeats):
        for name, env in VARIANTS.items():
            console.print(f"{name} ...")
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.idle_tax",
                "--child",
                "--window",
                str(window),
                "--settle",
                str(settle),
            ]
            run = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=900)
            line = next((x for x in run.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                raise RuntimeError(f"{name} failed:\n{run.stderr[-3000:]}")
            results[name].append(json.loads(line.removeprefix("RESULT ")))
    out.write_text(json.dumps(results, indent=2))
    groups = sorted({g for runs in results.values() for r in runs for g in r["groups"]})
    table = Table("process", *VARIANTS)
    for group in [*groups, "total"]:
        cells = []
        for name in VARIANTS:
            values = [r["total"] if group == "total" else r["groups"].get(group, 0.0) for r in results[name]]
            cells.append(f"{statistics.median(values) * 100:.1f} %")
        table.add_row(group, *cells)
    console.print(table)
    console.print(f"CPU while idle, % of one core, median of {repeats}; JSON in {out}")


if __name__ == "__main__":
    typer.run(main)
