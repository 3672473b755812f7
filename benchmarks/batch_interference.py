"""A batch beside interactive traffic, on the real stack: the batch's throughput, and the interactive TTFT with
and without the batch running, in one run.

    .venv/bin/python -m benchmarks.batch_interference --requests 200 --rate 0.25 --interactive-s 90

1. Start the app (`llmserve up`'s code path; REDIS_URL or the embedded Redis).
2. Interactive only: Poisson arrivals at `rate` for `interactive-s` seconds -> TTFT p50/p99.
3. Submit a batch of `requests` chat requests, and run the same interactive load again while it runs ->
   interactive TTFT p50/p99 beside the batch; the batch's wall time (created -> completed), requests/s and
   output tokens/s.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.table import Table

from benchmarks.bench import Workload
from benchmarks.loadgen import run_poisson, summarize
from core.settings import Settings

console = Console()


def batch_file(model: str, requests: int, max_tokens: int, seed: int) -> bytes:
    prompts = Workload(model=model, requests=requests, seed=seed + 1).prompts()
    lines = []
    for i, prompt in enumerate(prompts):
        body = {"model": model, "max_tokens": max_tokens, "temperature": 0}
        body["messages"] = [{"role": "user", "content": prompt}]
        lines.append(
            json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
        )
    return ("\n".join(lines) + "\n").encode()


def interactive(url: str, key: str, model: str, rate: float, seconds: float, max_tokens: int, seed: int) -> dict:
    workload = Workload(model=model, requests=max(2, round(rate * seconds)), max_tokens=max_tokens, seed=seed)
    headers = {"Authorization": f"Bearer {key}"}
    records, wall = asyncio.run(run_poisson(url, headers, workload.bodies(), rate, seed))
    return summarize(records, wall)


def run_batch(client: httpx.Client, content: bytes, poll_s: float = 1.0) -> dict:
    uploaded = client.post("/v1/files", files={"file": ("bench.jsonl", content)}, data={"purpose": "batch"})
    uploaded.raise_for_status()
    created = client.post("/v1/batches", json={"input_file_id": uploaded.json()["id"], "completion_window": "24h"})
    created.raise_for_status()
    batch_id = created.json()["id"]
    while True:
        batch = client.get(f"/v1/batches/{batch_id}").json()
        if batch["status"] in ("completed", "failed", "cancelled", "expired"):
            break
        time.sleep(poll_s)
    output = client.get(f"/v1/files/{batch['output_file_id']}/content").text.splitlines()
    tokens = sum(json.loads(line)["response"]["body"]["usage"]["completion_tokens"] for line in output)
    wall = batch["completed_at"] - batch["created_at"]
    return {
        "status": batch["status"],
        "requests": batch["request_counts"]["total"],
        "completed": batch["request_counts"]["completed"],
        "failed": batch["request_counts"]["failed"],
        "wall_s": wall,
        "req_per_s": batch["request_counts"]["completed"] / wall if wall else 0.0,
        "output_tok_per_s": tokens / wall if wall else 0.0,
    }


def main(
    requests: Annotated[int, typer.Option(help="Requests in the batch.")] = 200,
    batch_max_tokens: int = 32,
    rate: Annotated[float, typer.Option(help="Interactive Poisson arrivals per second.")] = 0.25,
    interactive_s: Annotated[float, typer.Option(help="Seconds of interactive load per phase.")] = 90.0,
    interactive_max_tokens: int = 32,
    seed: int = 0,
    port: int = 8630,
    out: Annotated[Path, typer.Option(help="Where results.json goes.")] = Path("batch-bench"),
) -> None:
    from serve_app.runtime import start_local

    # A data folder of its own: the embedded Redis persists, and an earlier run's queue must not be measured.
    data_dir = Path(tempfile.mkdtemp(prefix="batch-bench-"))
    settings = Settings(
        data_dir=data_dir,
        server={"port": port, "proxy_port": port + 1},
        metrics={"export_port": port + 2, "wandb_mode": "disabled"},
        state={"response_cache": False},  # every request generates
    )
    stack = start_local(settings, say=console.log)
    try:
        key = stack.settings.master_key.get_secret_value()
        model = stack.settings.model_name
        url = stack.url
        interactive(url, key, model, 2.0, 2.0, 8, seed + 99)  # warm-up
        console.print(f"Interactive alone: {rate}/s for {interactive_s:.0f} s ...")
        alone = interactive(url, key, model, rate, interactive_s, interactive_max_tokens, seed)
        console.print(f"Batch of {requests} with the same interactive load beside it ...")
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        result: dict = {}
        batch_thread = threading.Thread(
            target=lambda: result.update(run_batch(client, batch_file(model, requests, batch_max_tokens, seed)))
        )
        batch_thread.start()
        beside = interactive(url, key, model, rate, interactive_s, interactive_max_tokens, seed)
        batch_thread.join()
        client.close()
    finally:
        stack.shutdown()
    report = {"interactive_alone": alone, "interactive_beside_batch": beside, "batch": result,
              "config": {"requests": requests, "batch_max_tokens": batch_max_tokens, "rate": rate,
                         "interactive_s": interactive_s, "interactive_max_tokens": interactive_max_tokens}}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    table = Table("interactive", "requests", "errors", "TTFT p50 ms", "TTFT p99 ms", "e2e p50 ms")
    for name, m in (("alone", alone), ("beside the batch", beside)):
        table.add_row(name, str(m["requests"]), str(m["errors"]), *(f"{m[k]:.0f}" for k in
                      ("ttft_p50_ms", "ttft_p99_ms", "e2e_p50_ms")))  # fmt: skip
    console.print(table)
    console.print(
        f"batch: {result['completed']}/{result['requests']} completed ({result['failed']} failed) in "
        f"{result['wall_s']:.0f} s = {result['req_per_s']:.2f} requests/s, "
        f"{result['output_tok_per_s']:.1f} output tok/s"
    )


if __name__ == "__main__":
    typer.run(main)
