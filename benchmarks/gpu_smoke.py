"""GPU smoke test: on a GPU node with the project installed (`./install.sh gpu`), start the whole app with a
small model, load it for two minutes, print the table.

    .venv/bin/python -m benchmarks.gpu_smoke                       # Qwen2.5-0.5B-Instruct, 2 minutes
    .venv/bin/python -m benchmarks.gpu_smoke --model <hf-id or path> --duration 300 --concurrency 1 --concurrency 64

The model comes from the Hugging Face hub (or a local folder); Redis is REDIS_URL or the embedded one. The
same script runs on a CPU machine with `--accelerator cpu --model smollm2` (that is how it is checked here).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from benchmarks.bench import Workload, measure, results_table
from core.settings import Settings

console = Console()


def gpu_names() -> list[str]:
    """The GPUs nvidia-smi sees (empty without a driver)."""
    if shutil.which("nvidia-smi") is None:
        return []
    listing = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"], capture_output=True, text=True
    )
    return [line.strip() for line in listing.stdout.splitlines() if line.strip()] if listing.returncode == 0 else []


def smoke_settings(model: str, accelerator: str, port: int, tensor_parallel_size: int) -> Settings:
    gpu = accelerator == "gpu"
    return Settings(
        engine={
            "model": model,
            "accelerator": accelerator,
            "dtype": "auto" if gpu else "float32",
            "kv_cache_memory_bytes": None if gpu else 256 * 1024**2,
            "enforce_eager": not gpu,
            "tensor_parallel_size": tensor_parallel_size,
            "stream_batching_interval_ms": 10 if gpu else 0,
            "max_ongoing_requests": 256 if gpu else 64,
        },
        server={"port": port},
        rag={"enabled": False},  # the engine path; RAG has its own benchmark in `python -m benchmarks bench --compare`
        metrics={"wandb_mode": "offline"},
    )


def main(
    model: Annotated[str, typer.Option(help="HF id or local folder; small, so it loads fast.")] = (
        "Qwen/Qwen2.5-0.5B-Instruct"
    ),
    accelerator: Annotated[str, typer.Option(help="gpu, or cpu to try the script without one.")] = "gpu",
    duration: Annotated[float, typer.Option(help="Seconds of load in all, split among the levels.")] = 120.0,
    concurrency: Annotated[list[int] | None, typer.Option(help="Levels (repeat; default 1, 16, 64).")] = None,
    max_tokens: int = 128,
    tensor_parallel_size: int = 1,
    port: int = 8000,
    out: Annotated[Path, typer.Option(help="Where results.json goes.")] = Path("gpu-smoke"),
) -> None:
    """Start llmserve on this node, benchmark it for `duration` seconds, print the table."""
    from serve_app.runtime import start_local

    gpus = gpu_names()
    if accelerator == "gpu" and not gpus:
        console.print("[red]No GPU found (nvidia-smi).[/] On a CPU machine: --accelerator cpu --model smollm2")
        raise typer.Exit(2)
    console.print(f"GPUs: {', '.join(gpus) or 'none (CPU run)'}")
    levels = concurrency or [1, 16, 64]
    settings = smoke_settings(model, accelerator, port, tensor_parallel_size)
    with console.status(f"Starting llmserve with {model} ..."):
        stack = start_local(settings, say=console.log)
    try:
        key = stack.settings.master_key.get_secret_value() if stack.settings.master_key else None
        workload = Workload(model=stack.settings.model_name, requests=512, max_tokens=max_tokens)
        per_level = duration / len(levels)
        console.print(f"Load: {levels} concurrent streams, {per_level:.0f} s each, {max_tokens} tokens per answer")
        results = measure(stack.url, key, workload, levels, duration_s=per_level)
    finally:
        stack.shutdown()
    out.mkdir(parents=True, exist_ok=True)
    report = {"model": model, "gpus": gpus, "accelerator": accelerator, "duration_s": duration, "levels": results}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    console.print(results_table(results))
    console.print(f"latencies in ms; JSON in {out}/results.json")


if __name__ == "__main__":
    typer.run(main)
