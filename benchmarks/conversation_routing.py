"""Cache-aware routing on two vLLM replicas, in one run: the same multi-turn conversations (with and without RAG)
under `engine.request_router: affinity` (deployments/llm_router.py) and under Serve's default (`power_of_two`).
Per policy: TTFT p50/p99 per turn index, and vLLM's own prefix-cache hit rate (its
`prefix_cache_hits/queries` counters, read from Ray's Prometheus endpoint, the policy's delta). No response
cache: every turn is generated.

    .venv/bin/python -m benchmarks.conversation_routing --conversations 6 --turns 4 --repeats 3

Each policy's stack serves one warm-up round first (not counted), then `--repeats` rounds of new conversations.
"""

from __future__ import annotations

import asyncio
import json
import re
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

from benchmarks.gateway_overhead import free_port
from benchmarks.targets import RAG_DOCS
from core.settings import Settings

console = Console()
QUESTIONS = [
    "Tell me about the river in section {i}.",
    "And what about the mountain?",
    "How does the city use that water?",
    "Summarise what you said so far in one sentence.",
    "What would change if the river dried up?",
    "Name one more detail from the text.",
]
_METRIC = re.compile(r"^ray_vllm_prefix_cache_(hits|queries)_total\{[^}]*\}\s+([0-9.eE+-]+)$", re.M)


def prefix_cache_counts(metrics_url: str) -> tuple[float, float]:
    """(hits, queries) summed over every replica, as vLLM counts them (tokens)."""
    text = httpx.get(metrics_url, timeout=10).text
    totals = {"hits": 0.0, "queries": 0.0}
    for kind, value in _METRIC.findall(text):
        totals[kind] += float(value)
    return totals["hits"], totals["queries"]


async def conversation(client: httpx.AsyncClient, model: str, n: int, turns: int, rag: bool, ttfts: dict) -> None:
    conversation_id = f"bench-{uuid.uuid4().hex[:8]}"
    for turn in range(turns):
        body = {
            "model": model, "messages": [{"role": "user", "content": QUESTIONS[turn % len(QUESTIONS)].format(i=n)}],
            "max_tokens": 24, "temperature": 0, "stream": True, "conversation_id": conversation_id,
            "rag": {"collection": "bench"} if rag else False,
        }  # fmt: skip
        started = time.perf_counter()
        first = None
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if first is None and line.startswith("data: {") and json.loads(line[6:]).get("choices"):
                    first = time.perf_counter() - started
        ttfts.setdefault((rag, turn), []).append(first or float("nan"))


def run_policy(policy: str, conversations: int, turns: int, repeats: int = 3) -> dict:
    from serve_app.runtime import start_local

    settings = Settings(
        data_dir=Path(tempfile.mkdtemp(prefix="routing-bench-")),
        metrics={"wandb_mode": "disabled", "export_port": free_port()},
        engine={"min_replicas": 2, "max_replicas": 2, "request_router": policy},
        state={"response_cache": False},
    )
    stack = start_local(settings, say=console.log)
    try:
        key = stack.settings.master_key.get_secret_value()
        headers = {"Authorization": f"Bearer {key}"}
        httpx.post(f"{stack.url}/v1/rag/documents", headers=headers, timeout=300,
                   json={"collection": "bench", "documents": RAG_DOCS}).raise_for_status()  # fmt: skip
        metrics_url = f"http://127.0.0.1:{settings.metrics.export_port}/metrics"
        ttfts: dict = {}

        async def all_conversations(into: dict) -> None:
            async with httpx.AsyncClient(base_url=stack.url, headers=headers, timeout=300) as client:
                await asyncio.gather(*(
                    conversation(client, stack.settings.model_name, n, turns, rag, into)
                    for n in range(conversations) for rag in (False, True)
                ))  # fmt: skip

        asyncio.run(all_conversations({}))  # warm-up: both engines and the retriever, not counted
        rates, queried = [], 0.0
        for _ in range(repeats):  # new conversations each time; TTFTs pooled, hit rates per repeat
            time.sleep(12)  # Ray's metrics agent exports every few seconds
            before = prefix_cache_counts(metrics_url)
            asyncio.run(all_conversations(ttfts))
            time.sleep(12)
            after = prefix_cache_counts(metrics_url)
            hits, queries = after[0] - before[0], after[1] - before[1]
            rates.append(hits / queries if queries else float("nan"))
            queried += queries
    finally:
        stack.shutdown()
    return {"ttfts": ttfts, "hit_rate": statistics.median(rates), "hit_rates": rates, "queried_tokens": queried}


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(
    conversations: Annotated[int, typer.Option(help="Conversations of each kind (with and without RAG).")] = 6,
    turns: Annotated[int, typer.Option(help="Turns per conversation.")] = 4,
    repeats: Annotated[int, typer.Option(help="Measured rounds per policy, after one warm-up round.")] = 3,
    out: Annotated[Path | None, typer.Option(help="Write the numbers as JSON here.")] = None,
) -> None:
    results = {policy: run_policy(policy, conversations, turns, repeats) for policy in ("affinity", "power_of_two")}
    table = Table("RAG", "turn", "affinity p50 ms", "p99", "power of two p50 ms", "p99", "p50 ratio")
    for rag in (False, True):
        for turn in range(turns):
            a, d = results["affinity"]["ttfts"][(rag, turn)], results["power_of_two"]["ttfts"][(rag, turn)]
            cells = [_p(a, 0.5), _p(a, 0.99), _p(d, 0.5), _p(d, 0.99)]
            ratio = f"{cells[0] / cells[2]:.2f}"
            table.add_row("yes" if rag else "no", str(turn + 1), *(f"{c * 1000:.0f}" for c in cells), ratio)
    console.print(table)
    for policy, result in results.items():
        rate, looked_up = result["hit_rate"], result["queried_tokens"]
        each = ", ".join(f"{r:.3f}" for r in result["hit_rates"])
        console.print(
            f"{policy}: vLLM prefix-cache hit rate {rate:.3f}, median of {len(result['hit_rates'])} rounds ({each}); "
            f"{looked_up:.0f} prompt tokens looked up"
        )
    if out is not None:
        named = {
            p: {f"{'rag' if k[0] else 'plain'}-{k[1] + 1}": v for k, v in r["ttfts"].items()}
            for p, r in results.items()
        }
        out.write_text(json.dumps({p: {**r, "ttfts": named[p]} for p, r in results.items()}, indent=2))


if __name__ == "__main__":
    typer.run(main)
