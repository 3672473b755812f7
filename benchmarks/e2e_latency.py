"""Streaming latency and throughput of an OpenAI-compatible endpoint at fixed concurrency levels.

    python -m benchmarks.e2e_latency --url http://127.0.0.1:8000 --key $LLMSERVE_MASTER_KEY \
        --concurrency 1 8 --requests 8 --repeats 3 --max-tokens 48

Per request: TTFT (first content token), end-to-end latency, completion tokens (from usage). Per level:
medians over repeats of TTFT p50, e2e p50, per-stream tokens/s and aggregate output tokens/s. Pass several
--url/--key pairs with --name to measure targets side by side in one run (ratios against the first).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.table import Table

PROMPTS = [
    "Write a short paragraph about the ocean.",
    "Explain what a database index is.",
    "Describe a sunrise over the mountains.",
    "Give three tips for learning a new language.",
    "What is the capital of France? Answer in one sentence, then say something about it.",
    "Tell me a short story about a robot.",
    "Why is the sky blue?",
    "List some uses of copper.",
]


@dataclass
class Result:
    ttft_s: float
    e2e_s: float
    completion_tokens: int


async def one_request(client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int, extra: dict) -> Result:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }
    start = time.perf_counter()
    ttft = None
    tokens = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            payload = json.loads(line[6:])
            if ttft is None and any((c.get("delta") or {}).get("content") for c in payload.get("choices") or []):
                ttft = time.perf_counter() - start
            if payload.get("usage"):
                tokens = payload["usage"]["completion_tokens"]
    end = time.perf_counter() - start
    return Result(ttft_s=ttft if ttft is not None else end, e2e_s=end, completion_tokens=tokens)


async def run_level(url: str, key: str, model: str, concurrency: int, n: int, max_tokens: int, extra: dict) -> dict:
    limits = httpx.Limits(max_connections=concurrency + 4)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600, limits=limits) as client:
        queue: asyncio.Queue[str] = asyncio.Queue()
        for i in range(n):
            queue.put_nowait(PROMPTS[i % len(PROMPTS)])
        results: list[Result] = []

        async def worker() -> None:
            while not queue.empty():
                prompt = queue.get_nowait()
                results.append(await one_request(client, model, prompt, max_tokens, extra))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return {
        "ttft_p50_s": statistics.median(r.ttft_s for r in results),
        "e2e_p50_s": statistics.median(r.e2e_s for r in results),
        "stream_tok_s": statistics.median(r.completion_tokens / r.e2e_s for r in results),
        "output_tok_s": sum(r.completion_tokens for r in results) / wall,
        "completion_tokens": sum(r.completion_tokens for r in results),
    }


def main(
    url: Annotated[list[str] | None, typer.Option(help="Base URL(s); repeat to compare targets.")] = None,
    key: Annotated[list[str] | None, typer.Option(help="API key per URL (or one for all).")] = None,
    name: Annotated[list[str] | None, typer.Option(help="Label per URL.")] = None,
    model: str = "SmolLM2-135M-Instruct",
    concurrency: Annotated[list[int] | None, typer.Option(help="Concurrency levels (default 1 and 8).")] = None,
    requests: Annotated[int, typer.Option(help="Requests per level and repeat.")] = 8,
    repeats: int = 3,
    max_tokens: int = 48,
    rag_off: Annotated[bool, typer.Option(help="Send rag=false (our extension; others ignore it).")] = True,
    out: Annotated[str, typer.Option(help="Write the results as JSON here.")] = "",
) -> None:
    console = Console()
    url = url or ["http://127.0.0.1:8000"]
    key = key or ["sk-none"]
    name = name or []
    concurrency = concurrency or [1, 8]
    keys = key if len(key) == len(url) else key[:1] * len(url)
    names = name if len(name) == len(url) else [f"target{i}" for i in range(len(url))]
    extra = {"rag": False} if rag_off else {}
    summary: dict[str, dict[int, dict]] = {}
    for label, target, secret in zip(names, url, keys, strict=True):
        asyncio.run(run_level(target, secret, model, 1, 2, max_tokens, extra))  # warm-up
        summary[label] = {}
        for level in concurrency:
            runs = [
                asyncio.run(run_level(target, secret, model, level, requests, max_tokens, extra))
                for _ in range(repeats)
            ]
            summary[label][level] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    table = Table(
        "target",
        "concurrency",
        "TTFT p50 ms",
        "e2e p50 ms",
        "tok/s per stream",
        "output tok/s",
        "vs first target (output tok/s)",
    )
    base = summary[names[0]]
    for label in names:
        for level, m in summary[label].items():
            ratio = m["output_tok_s"] / base[level]["output_tok_s"] if base[level]["output_tok_s"] else 0
            table.add_row(
                label,
                str(level),
                f"{m['ttft_p50_s'] * 1000:.0f}",
                f"{m['e2e_p50_s'] * 1000:.0f}",
                f"{m['stream_tok_s']:.1f}",
                f"{m['output_tok_s']:.1f}",
                f"{ratio:.2f}",
            )
    console.print(table)
    if out:
        with open(out, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    typer.run(main)
