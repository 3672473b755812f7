"""The response cache on a repeated-questions workload, against the real stack, in one run: the same shuffled
sequence of questions (each asked several times, greedy, with RAG) once by a key that caches and once by a key
that does not, interleaved in rounds so that noise hits both alike. Reports the hit rate, latency of hits,
misses and the uncached baseline (p50/p90), and the ratio of the cached run's median latency to the baseline's.

    .venv/bin/python -m benchmarks.response_cache --questions 12 --repeats 4 --concurrency 4
"""

from __future__ import annotations

import asyncio
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.table import Table

from benchmarks.targets import RAG_DOCS
from core.settings import Settings

console = Console()
TOPICS = [
    "river",
    "mountain",
    "city",
    "water",
    "bridge",
    "harbour",
    "valley",
    "forest",
    "road",
    "tower",
    "lake",
    "mill",
]


def questions(count: int) -> list[str]:
    return [f"In one sentence, what does section {i} say about the {TOPICS[i % len(TOPICS)]}?" for i in range(count)]


async def run_sequence(url: str, key: str, model: str, asks: list[str], concurrency: int, max_tokens: int) -> list:
    """Each question's (latency s, cache status), `concurrency` at a time, in the given order."""
    headers = {"Authorization": f"Bearer {key}"}
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300) as client:

        async def one(question: str) -> tuple[float, str]:
            async with gate:
                body = {"model": model, "messages": [{"role": "user", "content": question}], "temperature": 0,
                        "max_tokens": max_tokens, "rag": {"collection": "bench"}}  # fmt: skip
                started = time.perf_counter()
                r = await client.post("/v1/chat/completions", json=body)
                r.raise_for_status()
                return time.perf_counter() - started, r.headers.get("x-llmserve-cache", "")

        return await asyncio.gather(*(one(q) for q in asks))


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main(
    questions_n: Annotated[int, typer.Option("--questions", help="Distinct questions.")] = 12,
    repeats: Annotated[int, typer.Option(help="Times each question is asked.")] = 4,
    concurrency: Annotated[int, typer.Option(help="Requests in flight.")] = 4,
    max_tokens: Annotated[int, typer.Option(help="Tokens per answer.")] = 32,
    seed: int = 7,
) -> None:
    from serve_app.runtime import start_local

    settings = Settings(
        data_dir=Path(tempfile.mkdtemp(prefix="cache-bench-")),
        metrics={"wandb_mode": "disabled"},
        state={"response_cache": False},  # the keys below decide
    )
    stack = start_local(settings, say=console.log)
    try:
        admin = {"Authorization": f"Bearer {stack.settings.master_key.get_secret_value()}"}
        tenant = f"bench-{uuid.uuid4().hex[:6]}"
        keys = {}
        for name, caching in (("cached", True), ("baseline", False)):
            made = httpx.post(f"{stack.url}/admin/keys", headers=admin, timeout=30,
                              json={"name": name, "tenant": tenant, "response_cache": caching})  # fmt: skip
            made.raise_for_status()
            keys[name] = made.json()["key"]
        httpx.post(f"{stack.url}/v1/rag/documents", headers={"Authorization": f"Bearer {keys['cached']}"},
                   json={"collection": "bench", "documents": RAG_DOCS}, timeout=300).raise_for_status()  # fmt: skip
        model = stack.settings.model_name
        asks = questions(questions_n) * repeats
        random.Random(seed).shuffle(asks)
        results: dict[str, list] = {"cached": [], "baseline": []}
        for part in range(repeats):  # rounds: cached then baseline on the same slice of the sequence
            chunk = asks[part * questions_n : (part + 1) * questions_n]
            for name in ("cached", "baseline"):
                results[name] += asyncio.run(run_sequence(stack.url, keys[name], model, chunk, concurrency, max_tokens))
    finally:
        stack.shutdown()
    hits = [s for s, status in results["cached"] if status == "hit"]
    misses = [s for s, status in results["cached"] if status != "hit"]
    baseline = [s for s, _ in results["baseline"]]
    table = Table(
        "", "requests", "p50 ms", "p90 ms", title=f"{questions_n} questions x {repeats}, {concurrency} at a time"
    )
    for name, values in (("hits", hits), ("misses", misses), ("cached run (all)", hits + misses),
                         ("baseline (no cache)", baseline)):  # fmt: skip
        table.add_row(name, str(len(values)), f"{_p(values, 0.5) * 1000:.0f}", f"{_p(values, 0.9) * 1000:.0f}")
    console.print(table)
    rate = len(hits) / max(1, len(results["cached"]))
    ideal = 1 - 1 / repeats
    ratio = statistics.median(hits + misses) / statistics.median(baseline)
    console.print(f"hit rate {rate:.2f} (at most {ideal:.2f}: every question's first ask is a miss); "
                  f"median latency cached/baseline {ratio:.3f}")  # fmt: skip


if __name__ == "__main__":
    typer.run(main)
