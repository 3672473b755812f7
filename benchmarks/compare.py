"""`python -m benchmarks bench --compare`: the same workload against (a) bare vLLM, (b) ray.serve.llm's
build_openai_app, (c) llmserve without RAG and (d) llmserve with RAG, one after the other on this machine, same
model and engine arguments. Writes results.json, results.md (ratios against (a)), PNG plots and a W&B run with
the numbers.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from benchmarks.bench import Workload, measure
from benchmarks.gateway_overhead import free_port, wait_http
from benchmarks.targets import engine_settings, vllm_command

ROOT = Path(__file__).resolve().parents[1]


def spawn_ray_target(kind: str, port: int, log: Path) -> tuple[subprocess.Popen, str, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.targets", kind, "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=open(log, "w"),  # noqa: SIM115 - open as long as the process
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("READY "):
            _, url, key = line.split()
            return proc, url, key
    raise RuntimeError(f"{kind} exited before it was ready; see {log}")


def stop_process(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_compare(
    workload: Workload, concurrency: list[int], out_dir: Path, say: Callable[[str], None] = print, repeats: int = 1
) -> dict:
    from serve_app.model_prep import resolve_model_source

    out_dir.mkdir(parents=True, exist_ok=True)
    settings = engine_settings(8000)
    model_dir = resolve_model_source(settings.engine.model, settings.engine.model_cache_dir)
    results: dict[str, dict] = {}
    started = time.monotonic()

    port = free_port()
    say("(a) bare vLLM: starting")
    proc = subprocess.Popen(
        vllm_command(settings, model_dir, port),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=open(out_dir / "vllm.log", "w"),  # noqa: SIM115
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", timeout_s=300)
        results["vllm"] = measure(f"http://127.0.0.1:{port}", None, workload, concurrency, repeats=repeats)
    finally:
        stop_process(proc)

    say("(b) ray.serve.llm build_openai_app: starting")
    proc, url, _ = spawn_ray_target("rayllm", free_port(), out_dir / "rayllm.log")
    try:
        results["rayllm"] = measure(url, None, workload, concurrency, repeats=repeats)
    finally:
        stop_process(proc)

    say("(c, d) llmserve without and with RAG: starting")
    proc, url, key = spawn_ray_target("ours", free_port(), out_dir / "ours.log")
    try:
        results["llmserve"] = measure(
            url, key, replace(workload, extra_body={"rag": False}), concurrency, repeats=repeats
        )
        rag = {"rag": {"collection": "bench", "top_k": 3, "min_score": -1}}  # always retrieve and use 3 chunks
        results["llmserve-rag"] = measure(url, key, replace(workload, extra_body=rag), concurrency, repeats=repeats)
    finally:
        stop_process(proc)

    report = {"workload": {**workload.__dict__, "prompt_file": str(workload.prompt_file or "")}, "results": results}
    report["wall_s"] = time.monotonic() - started
    (out_dir / "results.json").write_text(json.dumps(report, indent=2))
    (out_dir / "results.md").write_text(markdown(results))
    plot(results, out_dir)
    log_wandb(report, out_dir)
    return report


COLUMNS = [
    ("ttft_p50_ms", "TTFT p50 ms"),
    ("ttft_p99_ms", "TTFT p99 ms"),
    ("itl_p50_ms", "ITL p50 ms"),
    ("itl_p99_ms", "ITL p99 ms"),
    ("tpot_p50_ms", "TPOT p50 ms"),
    ("e2e_p50_ms", "e2e p50 ms"),
    ("output_tok_per_s", "output tok/s"),
    ("req_per_s", "req/s"),
]


def markdown(results: dict[str, dict]) -> str:
    base = results["vllm"]
    lines = [
        "| target | level | " + " | ".join(label for _, label in COLUMNS) + " | tok/s vs vLLM | TTFT p50 minus vLLM |",
        "|" + "---|" * (len(COLUMNS) + 4),
    ]
    for target, levels in results.items():
        for level, m in levels.items():
            ratio = (
                m["output_tok_per_s"] / base[level]["output_tok_per_s"] if base[level]["output_tok_per_s"] else math.nan
            )
            delta = m["ttft_p50_ms"] - base[level]["ttft_p50_ms"]
            cells = " | ".join(f"{m[key]:.1f}" for key, _ in COLUMNS)
            lines.append(f"| {target} | {level} | {cells} | {ratio:.3f} | {delta:+.1f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, dict], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for target, levels in results.items():
        cs = [m["concurrency"] for m in levels.values()]
        left.plot(cs, [m["output_tok_per_s"] for m in levels.values()], marker="o", label=target)
        right.plot(cs, [m["ttft_p50_ms"] for m in levels.values()], marker="o", label=target)
    left.set(xlabel="concurrency", ylabel="output tokens/s", title="Throughput")
    right.set(xlabel="concurrency", ylabel="TTFT p50 (ms)", title="Time to first token")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "throughput_ttft.png", dpi=110)
    plt.close(fig)

    level = list(results["vllm"])[-1]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    kinds = (("ttft", "TTFT"), ("itl", "inter-token latency"), ("e2e", "end-to-end"))
    for ax, (key, label) in zip(axes, kinds, strict=True):
        for target, levels in results.items():
            values = sorted(levels[level].get("samples", {}).get(key, []))
            if values:
                ax.step(values, [(i + 1) / len(values) for i in range(len(values))], where="post", label=target)
        ax.set(xlabel=f"{label} (ms)", ylabel="fraction of requests" if key != "itl" else "fraction of gaps")
        ax.set(title=f"{label} CDF at {level}", ylim=(0, 1.02))
        if key == "itl":
            ax.set_xscale("log")  # a few long gaps (prefills of other requests) would squash the rest
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "latency_cdf.png", dpi=110)
    plt.close(fig)


def log_wandb(report: dict, out_dir: Path) -> None:
    import wandb

    mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
    run = wandb.init(project="llmserve-bench", dir=str(out_dir), mode=mode, config=report["workload"])
    columns = ["target", "level", *[key for key, _ in COLUMNS]]
    table = wandb.Table(columns=columns)
    for target, levels in report["results"].items():
        for level, m in levels.items():
            table.add_data(target, level, *[m[key] for key, _ in COLUMNS])
            run.summary[f"{target}/{level}/output_tok_per_s"] = m["output_tok_per_s"]
            run.summary[f"{target}/{level}/ttft_p50_ms"] = m["ttft_p50_ms"]
    run.log({"comparison": table})
    run.finish()
