"""What structured outputs cost on the engine: TTFT and time per output token of a plain answer vs a
`response_format` JSON schema (one the engine compiled before, and a new one each request) vs a forced tool
call, against one llmserve stack, interleaved so that noise hits every kind alike. Medians over repeats; ratios
against the plain answer measured in the same run.

    python -m benchmarks.structured_latency --repeats 7            # starts `benchmarks.targets ours` itself
    python -m benchmarks.structured_latency --url http://127.0.0.1:8000 --key $LLMSERVE_MASTER_KEY
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from openai import OpenAI
from rich.console import Console
from rich.table import Table

console = Console()
QUESTION = [{"role": "user", "content": "Describe a person who lives in Paris: their name, age and job."}]
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "job": {"type": "string"}},
    "required": ["name", "age", "job"],
    "additionalProperties": False,
}
TOOL = {"type": "function", "function": {"name": "record_person", "parameters": PERSON}}


def _kinds(i: int) -> dict[str, dict[str, Any]]:
    fresh = {**PERSON, "properties": {**PERSON["properties"], f"note_{i}": {"type": "string"}}}
    return {
        "plain": {},
        "json_schema": {"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}},
        "json_schema, new schema": {
            "response_format": {"type": "json_schema", "json_schema": {"name": f"p{i}", "schema": fresh}}
        },
        "tool_choice required": {"tools": [TOOL], "tool_choice": "required"},
    }


def _one(client: OpenAI, model: str, max_tokens: int, extra: dict[str, Any]) -> dict[str, float]:
    started = time.perf_counter()
    first, tokens, finish = None, 0, None
    stream = client.chat.completions.create(
        model=model, messages=QUESTION, max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"rag": False}, **extra,
    )  # fmt: skip
    for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        delta = chunk.choices[0].delta if chunk.choices else None
        finish = (chunk.choices[0].finish_reason if chunk.choices else None) or finish
        if first is None and delta is not None and (delta.content or delta.tool_calls):
            first = time.perf_counter()
    end = time.perf_counter()
    first = first or end
    return {
        "ttft_s": first - started,
        "tpot_s": (end - first) / max(1, tokens - 1),
        "e2e_per_token_s": (end - started) / max(1, tokens),
        "tokens": tokens,
        "complete": float(finish != "length"),
    }


@contextmanager
def _our_stack(port: int) -> Iterator[tuple[str, str]]:
    root = Path(__file__).resolve().parent.parent
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.targets", "ours", "--port", str(port)],
        cwd=root, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        for line in process.stdout:  # type: ignore[union-attr]
            if line.startswith("READY "):
                _, url, key = line.split()
                yield url, key
                return
        raise RuntimeError("the stack exited before it was ready")
    finally:
        process.terminate()
        process.wait(timeout=120)


def main(
    url: Annotated[str | None, typer.Option(help="A running llmserve (default: start one).")] = None,
    key: Annotated[str | None, typer.Option(envvar="LLMSERVE_MASTER_KEY")] = None,
    model: str = "SmolLM2-135M-Instruct",
    repeats: int = 7,
    max_tokens: int = 128,
    port: int = 8650,
    out: Path = Path("bench-results/structured_latency.json"),
) -> None:
    if url is None:
        with _our_stack(port) as (started_url, started_key):
            return main(started_url, started_key, model, repeats, max_tokens, port, out)
    client = OpenAI(base_url=f"{url}/v1", api_key=key or "none", max_retries=0, timeout=300)
    for extra in _kinds(-1).values():  # warm up every path once (the shared schema is compiled here)
        _one(client, model, max_tokens, extra)
    runs: dict[str, list[dict[str, float]]] = {}
    for i in range(repeats):
        for name, extra in _kinds(i).items():
            runs.setdefault(name, []).append(_one(client, model, max_tokens, extra))
    medians = {
        name: {m: statistics.median(r[m] for r in rows) for m in rows[0]}
        | {"complete": sum(r["complete"] for r in rows)}
        for name, rows in runs.items()
    }
    table = Table(title=f"structured outputs on {model}: medians of {repeats}, ratios to plain")
    columns = ("kind", "first output ms", "ratio", "TPOT ms", "ratio", "e2e ms/token", "ratio", "tokens", "complete")
    for column in columns:
        table.add_column(column)
    plain = medians["plain"]
    for name, m in medians.items():
        table.add_row(
            name, f"{m['ttft_s'] * 1000:.0f}", f"{m['ttft_s'] / plain['ttft_s']:.2f}", f"{m['tpot_s'] * 1000:.1f}",
            f"{m['tpot_s'] / plain['tpot_s']:.2f}", f"{m['e2e_per_token_s'] * 1000:.1f}",
            f"{m['e2e_per_token_s'] / plain['e2e_per_token_s']:.2f}", f"{m['tokens']:.0f}",
            f"{m['complete']:.0f}/{len(runs[name])}",
        )  # fmt: skip
    console.print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"repeats": repeats, "max_tokens": max_tokens, "medians": medians, "runs": runs}, indent=2)
    )
    console.print(f"written to {out}")


if __name__ == "__main__":
    typer.run(main)
