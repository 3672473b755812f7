"""Where our CPU goes per streamed token: py-spy samples the ingress and orchestrator replicas while the fake
engine streams to many clients, and each sample is put in one bucket by its innermost frame that matches one
(pydantic, JSON, SSE, Ray's transport, Redis, metrics and tracing, the event loop, HTTP, our own code).

    sudo .venv/bin/python -m benchmarks.token_profile --concurrency 64 --tokens-per-s 100 --seconds 20

Prints CPU microseconds per delivered token for each process and bucket; from the kernel's CPU times over the
same window (benchmarks/cpu_share.py), every process's CPU per token and the tokens/s one core of each light
deployment carries at that cost: the sizing of ingress and orchestrator replicas for a GPU node; and the Redis
commands per answer (INFO commandstats over the same window). The samples
(py-spy's raw format) are kept in the printed folder, for flame graphs (`flamegraph.pl` or speedscope).
"""

from __future__ import annotations

import asyncio
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from benchmarks.cpu_share import sample
from benchmarks.gateway_overhead import body, free_port, start_ours
from benchmarks.loadgen import run_level

RATE_HZ = 200
# The first rule that matches a frame, from the innermost frame out, names the sample's bucket.
BUCKETS = [
    ("pydantic", ("pydantic",)),
    ("JSON", ("/json/", "orjson", "json.py")),
    ("SSE framing", ("deployments/sse.py",)),
    ("Ray transport", ("ray/serve/_private", "ray/_private/serialization", "_raylet", "ray/cloudpickle", "grpc")),
    ("Redis", ("redis/",)),
    ("metrics and tracing", ("opentelemetry", "prometheus", "observability/", "ray/util/metrics")),
    ("HTTP server", ("uvicorn", "starlette", "h11", "httptools", "fastapi")),
    ("event loop", ("asyncio/",)),
    # (py-spy names a file under the working directory by its relative path: "(deployments/...")
    ("our code", ("/deployments/", "/core/", "/state/", "(deployments/", "(core/", "(state/")),
]


NATIVE = ("run (threading.py", "main_loop (ray/_private/worker.py")


def bucket(stack: list[str]) -> str:
    # A thread whose innermost Python frame starts native code (Ray's core worker loop, its gRPC and io threads).
    if not stack[-1] or stack[-1].startswith(NATIVE):
        return "Ray core (native)"
    for frame in reversed(stack):
        for name, marks in BUCKETS:
            if any(mark in frame for mark in marks):
                return name
    return "other"


def replica_pids(app: str = "gateway-bench") -> dict[str, int]:
    """The process of each light replica (Ingress, Orchestrator), by its Ray process title."""
    import psutil

    pids = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        title = " ".join(proc.info["cmdline"] or [])
        for role in ("Ingress", "Orchestrator"):
            if f"ServeReplica:{app}:{role}" in title:
                pids[role] = proc.info["pid"]
    return pids


def record(pid: int, seconds: float, out: Path) -> None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    args = [spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", str(RATE_HZ), "-f", "raw", "-o", str(out)]
    subprocess.run([*args, "--nonblocking"], check=True, capture_output=True)


def breakdown(raw: Path) -> collections.Counter:
    samples: collections.Counter = collections.Counter()
    for line in raw.read_text(errors="replace").splitlines():  # (a frame may hold bytes that are not UTF-8)
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            samples[bucket(stack.split(";"))] += int(count)
    return samples


def main(
    concurrency: int = 64,
    tokens_per_s: float = 100.0,
    tokens: int = 64,
    ttft_ms: float = 20.0,
    seconds: Annotated[float, typer.Option(help="How long py-spy samples, while the load runs.")] = 20.0,
    redis_url: str = "redis://127.0.0.1:6379/0",
    orchestrator_in_ingress: Annotated[
        bool, typer.Option(help="Our stack with server.orchestrator_in_ingress (answers run in the ingress).")
    ] = False,
) -> None:
    console = Console()
    workdir = Path(tempfile.mkdtemp(prefix="token-profile-"))
    stack, key = start_ours(free_port(), ttft_ms, tokens_per_s, redis_url, workdir, in_ingress=orchestrator_in_ingress)
    try:
        headers = {"Authorization": f"Bearer {key}"}
        asyncio.run(run_level(stack.url, headers, [body(tokens)] * 64, 8))  # warm-up
        pids = replica_pids()
        result: dict = {}  # the load outlasts the samples by a few seconds, whatever each answer takes
        load = threading.Thread(
            target=lambda: result.update(
                records=asyncio.run(run_level(stack.url, headers, [body(tokens)], concurrency, seconds + 5))
            )
        )
        load.start()
        spies = [
            threading.Thread(target=record, args=(pid, seconds, workdir / f"{role}.txt")) for role, pid in pids.items()
        ]
        shares: dict[str, float] = {}
        spies.append(threading.Thread(target=lambda: shares.update(sample(seconds))))
        redis_before, redis_from = redis_commands(redis_url), time.monotonic()
        for spy in spies:
            spy.start()
        for spy in spies:
            spy.join()
        redis_calls, redis_s = redis_commands(redis_url) - redis_before, time.monotonic() - redis_from
        load.join()
        records, wall = result["records"]
    finally:
        stack.shutdown()
    delivered = sum(r.completion_tokens for r in records)
    tok_per_s = delivered / wall
    answers_per_s = len(records) / wall
    console.print(
        f"{len(records)} answers, {delivered} tokens in {wall:.1f} s: {tok_per_s:.0f} tokens/s, "
        f"{answers_per_s:.1f} answers/s; samples in {workdir}"
    )
    table = Table("process", "bucket", "share", "CPU µs per token", "CPU µs per answer")
    for role in pids:
        samples = breakdown(workdir / f"{role}.txt")
        total = sum(samples.values())
        for name, count in samples.most_common():
            cpu_s = count / RATE_HZ
            per_token, per_answer = cpu_s / (tok_per_s * seconds), cpu_s / (answers_per_s * seconds)
            table.add_row(role, name, f"{count / total:.0%}", f"{per_token * 1e6:.0f}", f"{per_answer * 1e6:.0f}")
        cpu_s = total / RATE_HZ
        per_token, per_answer = cpu_s / (tok_per_s * seconds), cpu_s / (answers_per_s * seconds)
        table.add_row(role, "all", "100%", f"{per_token * 1e6:.0f}", f"{per_answer * 1e6:.0f}", end_section=True)
    console.print(table)
    console.print(by_process(shares, tok_per_s))
    console.print(redis_per_answer(redis_calls, answers_per_s * redis_s))


def redis_commands(url: str) -> collections.Counter:
    """The commands Redis has executed so far, by name (INFO commandstats: a script's own calls count too)."""
    import redis

    with redis.Redis.from_url(url) as client:
        stats = client.info("commandstats")
    return collections.Counter({name.removeprefix("cmdstat_"): row["calls"] for name, row in stats.items()})


def redis_per_answer(calls: collections.Counter, answers: float) -> Table:
    """Redis commands per answer over the sampled window, the most frequent first (the load generator sends
    nothing to Redis; W&B's and Serve's background writes are in it, spread over the answers)."""
    table = Table("Redis command", "per answer")
    for name, count in calls.most_common(15):
        table.add_row(name, f"{count / answers:.2f}")
    table.add_row("all", f"{sum(calls.values()) / answers:.1f}", end_section=True)
    return table


def by_process(shares: dict[str, float], tok_per_s: float) -> Table:
    """Each process's CPU (kernel times, py-spy itself under `other`) per delivered token; for the light
    deployments, the tokens/s one core of them carries at that cost."""
    table = Table("process", "CPU % of a core", "CPU µs per token", "tokens/s per core")
    for name, pct in shares.items():
        if pct < 0.5:
            continue
        us = pct / 100 / tok_per_s * 1e6
        table.add_row(
            name, f"{pct:.0f}", f"{us:.0f}", f"{1e6 / us:,.0f}" if name in ("Ingress", "Orchestrator") else ""
        )
    table.add_row("total", f"{sum(shares.values()):.0f}", f"{sum(shares.values()) / 100 / tok_per_s * 1e6:.0f}", "")
    return table


if __name__ == "__main__":
    typer.run(main)
