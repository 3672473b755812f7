"""The benchmark harness's entry point, outside the product: `python -m benchmarks bench ...` from a checkout
(the harness is not installed with llmserve). Each other script runs on its own: `python -m benchmarks.<name>`
(gateway_overhead, token_profile, stall_probe, admission_latency, batch_interference, chaos, cluster_run,
conversation_routing, cpu_share, gpu_smoke, idle_tax, journal_cost, quantization, response_cache, retrieval_cpu,
scale_or_spill, structured_latency, two_ingress, redis_wakeup)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(help="llmserve's benchmark harness (run from a checkout).", no_args_is_help=True)
console = Console()


@app.callback()
def _harness() -> None:
    """Load generation and comparisons; see each command's --help."""


@app.command("bench")
def bench(
    url: Annotated[str | None, typer.Option(help="An OpenAI-compatible server (default: ours from settings).")] = None,
    key: Annotated[str | None, typer.Option(envvar="LLMSERVE_MASTER_KEY", help="API key for --url.")] = None,
    model: Annotated[str | None, typer.Option(help="Model name (default: the settings' model).")] = None,
    concurrency: Annotated[list[int] | None, typer.Option(help="Concurrency levels (repeat; default 1 and 8).")] = None,
    rate: Annotated[list[float] | None, typer.Option(help="Poisson arrival rates, requests/s (repeat).")] = None,
    requests: Annotated[int, typer.Option(help="Requests per level.")] = 16,
    repeats: Annotated[int, typer.Option(help="Runs per level; medians are reported.")] = 1,
    max_tokens: int = 48,
    seed: int = 0,
    prompt_file: Annotated[Path | None, typer.Option(help="Prompts, one per line (default: random lengths).")] = None,
    input_words_min: int = 8,
    input_words_max: int = 64,
    ttft_slo_ms: Annotated[float | None, typer.Option(help="Goodput: TTFT target.")] = None,
    tpot_slo_ms: Annotated[float | None, typer.Option(help="Goodput: TPOT target.")] = None,
    compare: Annotated[
        bool, typer.Option(help="Start bare vLLM, ray.serve.llm and llmserve (with and without RAG) and compare.")
    ] = False,
    out: Annotated[Path, typer.Option(help="Where results.json, results.md and plots go.")] = Path("bench-results"),
    config: Annotated[Path | None, typer.Option("--config", "-c", help="llmserve settings YAML.")] = None,
) -> None:
    """Latency and throughput (TTFT, TPOT, ITL, e2e, goodput) at fixed concurrency or Poisson arrivals."""
    from benchmarks.bench import Workload, measure, results_table
    from core.settings import Settings

    if config is not None:
        os.environ["LLMSERVE_CONFIG"] = str(config.resolve())
    settings = Settings()
    workload = Workload(
        model=model or settings.model_name,
        requests=requests,
        max_tokens=max_tokens,
        input_words_min=input_words_min,
        input_words_max=input_words_max,
        prompt_file=prompt_file,
        seed=seed,
    )
    levels = concurrency or ([] if rate else [1, 8])
    if compare:
        from benchmarks.compare import run_compare

        report = run_compare(workload, levels or [1, 8], out, say=console.print, repeats=repeats)
        console.print((out / "results.md").read_text())
        console.print(f"{report['wall_s']:.0f} s; results, plots and a W&B run in {out}/")
        return
    target = url or f"http://{settings.server.host}:{settings.server.port}"
    slo = {
        "ttft_slo_s": ttft_slo_ms / 1000 if ttft_slo_ms else None,
        "tpot_slo_s": tpot_slo_ms / 1000 if tpot_slo_ms else None,
    }

    def heard(label: str, level: dict) -> None:  # each level as it ends, not all at the end
        console.print(
            f"{label}: {level['req_per_s']:.2f} req/s, {level['output_tok_per_s']:.1f} output tok/s, "
            f"TTFT p50 {level['ttft_p50_ms']:.0f} ms, TPOT p50 {level['tpot_p50_ms']:.1f} ms, {level['errors']} errors"
        )

    planned = [f"c={c}" for c in levels] + [f"rate={r:g}" for r in rate or []]
    console.print(f"measuring {target}: {', '.join(planned)}, {repeats} run(s) each")
    results = measure(target, key, workload, levels, rate, repeats=repeats, on_level=heard, **slo)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    console.print(results_table(results))
    console.print(f"latencies in ms; JSON in {out}/results.json")


if __name__ == "__main__":
    app()
