"""What embedding concurrent RAG queries costs: the Retriever's old way (one `encode` per query, each in its own
thread, torch on all cores) against its way now (the queries that arrived together in one `encode`, one torch
thread). Same process, same model (all-MiniLM-L6-v2), CPU time and wall time per round of N queries.

    .venv/bin/python -m benchmarks.retrieval_cpu --queries 8 --rounds 20

Each variant runs in a subprocess of its own (torch's thread count is per process).
"""

from __future__ import annotations

import concurrent.futures
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

VARIANTS = {"per-query threads, torch default threads": "threads", "one batch, 1 torch thread": "batched"}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_variant(mode: str, queries: int, rounds: int) -> dict[str, float]:
    from rag.embedder import Embedder

    embedder = Embedder(torch_threads=1 if mode == "batched" else None)
    texts = [f"How do network requests and tokens flow through the cluster, question {i}?" for i in range(queries)]
    embedder.embed(texts[:1])  # warm-up
    walls, cpus = [], []
    with concurrent.futures.ThreadPoolExecutor(queries) as pool:
        for _ in range(rounds):
            cpu0, t0 = _cpu_s(), time.perf_counter()
            if mode == "threads":
                list(pool.map(lambda text: embedder.embed([text]), texts))
            else:
                embedder.embed(texts)
            walls.append(time.perf_counter() - t0)
            cpus.append(_cpu_s() - cpu0)
    return {"wall_ms": statistics.median(walls) * 1000, "cpu_ms": statistics.median(cpus) * 1000}


def main(
    queries: Annotated[int, typer.Option(help="Concurrent queries per round.")] = 8,
    rounds: Annotated[int, typer.Option(help="Rounds; medians are reported.")] = 20,
    variant: Annotated[str, typer.Option(hidden=True)] = "",
) -> None:
    if variant:  # in the subprocess
        print(json.dumps(run_variant(variant, queries, rounds)))
        return
    table = Table(title=f"Embedding {queries} concurrent queries (medians of {rounds} rounds)")
    for column in ("variant", "wall ms", "CPU ms"):
        table.add_column(column)
    for label, mode in VARIANTS.items():
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.retrieval_cpu", "--queries", str(queries), "--rounds", str(rounds),
             "--variant", mode],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        result = json.loads(out.stdout.strip().splitlines()[-1])
        table.add_row(label, f"{result['wall_ms']:.1f}", f"{result['cpu_ms']:.1f}")
    Console().print(table)


if __name__ == "__main__":
    typer.run(main)
