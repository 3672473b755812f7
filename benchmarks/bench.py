"""`python -m benchmarks bench`: load against one OpenAI-compatible endpoint, with the metrics of `vllm bench serve`.

Prompts are random word sequences of seeded random lengths, or lines of a text file. Each level (a fixed
concurrency, or a Poisson arrival rate) runs after a warm-up, `repeats` times; the medians are reported.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from benchmarks.loadgen import Record, median_of, run_level, run_poisson, samples_ms, summarize

_WORDS = [
    "the",
    "a",
    "river",
    "mountain",
    "system",
    "request",
    "token",
    "model",
    "cluster",
    "memory",
    "answer",
    "question",
    "light",
    "city",
    "data",
    "window",
    "engine",
    "garden",
    "history",
    "network",
    "music",
    "paper",
    "signal",
    "story",
    "market",
    "water",
    "time",
    "number",
    "place",
]


@dataclass(frozen=True)
class Workload:
    model: str
    requests: int = 32
    max_tokens: int = 48
    input_words_min: int = 8
    input_words_max: int = 64
    prompt_file: Path | None = None
    seed: int = 0
    extra_body: dict | None = None  # e.g. {"rag": False} for our server

    def prompts(self) -> list[str]:
        rng = random.Random(self.seed)
        if self.prompt_file is not None:
            lines = [line.strip() for line in self.prompt_file.read_text().splitlines() if line.strip()]
            if not lines:
                raise ValueError(f"{self.prompt_file} has no prompts")
            return [lines[i % len(lines)] for i in range(self.requests)]
        return [
            " ".join(rng.choice(_WORDS) for _ in range(rng.randint(self.input_words_min, self.input_words_max)))
            for _ in range(self.requests)
        ]

    def bodies(self) -> list[dict]:
        return [
            {
                "model": self.model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": self.max_tokens,
                "temperature": 0,  # same model, same prompts, greedy: every target generates the same tokens
                "stream": True,
                "stream_options": {"include_usage": True},
                **(self.extra_body or {}),
            }
            for prompt in self.prompts()
        ]


def measure(
    url: str,
    key: str | None,
    workload: Workload,
    concurrency: list[int] | None = None,
    rates: list[float] | None = None,
    repeats: int = 1,
    ttft_slo_s: float | None = None,
    tpot_slo_s: float | None = None,
    duration_s: float | None = None,
    on_level: Callable[[str, dict], None] | None = None,
) -> dict[str, dict]:
    """{level label: median metrics}. Labels: 'c=<n>' for concurrency levels, 'rate=<r>' for Poisson rates.
    With `duration_s`, each concurrency level runs that long (cycling through the prompts) instead of once
    through them. `on_level(label, metrics)` hears of each level as soon as it is measured."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    bodies = workload.bodies()
    asyncio.run(run_level(url, headers, bodies[:4], 2))  # warm-up
    results: dict[str, dict] = {}
    for c in concurrency or ([] if rates else [1]):
        level = bodies[: max(workload.requests // 2, 2 * c)] if c == 1 and not duration_s else bodies
        runs = [asyncio.run(run_level(url, headers, level, c, duration_s)) for _ in range(repeats)]
        results[f"c={c}"] = {"concurrency": c, **_combine(runs, ttft_slo_s, tpot_slo_s)}
        if on_level is not None:
            on_level(f"c={c}", results[f"c={c}"])
    for rate in rates or []:
        runs = [asyncio.run(run_poisson(url, headers, bodies, rate, workload.seed + i)) for i in range(repeats)]
        results[f"rate={rate:g}"] = {"rate": rate, **_combine(runs, ttft_slo_s, tpot_slo_s)}
        if on_level is not None:
            on_level(f"rate={rate:g}", results[f"rate={rate:g}"])
    return results


def _combine(runs: list[tuple[list[Record], float]], ttft_slo_s: float | None, tpot_slo_s: float | None) -> dict:
    """Medians over repeats of each metric, and every repeat's raw latencies under "samples" (for CDFs)."""
    medians = median_of([summarize(records, wall, ttft_slo_s, tpot_slo_s) for records, wall in runs])
    return {**medians, "samples": samples_ms([r for records, _ in runs for r in records])}


TABLE_COLUMNS = {
    "req/s": "req_per_s",
    "goodput": "goodput_req_per_s",
    "out tok/s": "output_tok_per_s",
    "TTFT p50": "ttft_p50_ms",
    "TTFT p99": "ttft_p99_ms",
    "TPOT p50": "tpot_p50_ms",
    "ITL p99": "itl_p99_ms",
    "e2e p50": "e2e_p50_ms",
}


def results_table(results: dict[str, dict]) -> Table:
    """The rich table `python -m benchmarks bench` and the GPU smoke script print (latencies in ms)."""
    table = Table("level", *TABLE_COLUMNS)
    for level, metrics in results.items():
        table.add_row(level, *(f"{metrics[key]:.1f}" for key in TABLE_COLUMNS.values()))
    return table
