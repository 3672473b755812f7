"""`python -m benchmarks.quantization`: float32 vs bfloat16 vs 4-bit AWQ (W4A16) SmolLM2, side by side in one run.

Each variant is served by bare vLLM (the same engine arguments llmserve gives ray.serve.llm, `targets.py`), one
after the other, and measured for:
  - weights on disk (the safetensors files) and in memory (each stored tensor at the dtype vLLM keeps it in:
    floating point at the served dtype, packed integers as they are; tied embeddings once);
  - engine RSS after the load (the vLLM process tree, and its largest process: the worker holding the weights);
  - TTFT p50 and output tokens/s at 1 and 8 streams (medians over `--repeats`);
  - quality: perplexity on `data/heldout.txt` (prompt log-probabilities from the engine itself) and agreement of
    greedy answers to `data/questions.txt` with float32's (same answer; share of the longest common prefix).
Writes `<out>/results.json` and `<out>/results.md`. The 4-bit folder is made first if missing
(`llmserve prepare-model --quantize awq`, ~10 min the first time).
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from benchmarks.bench import Workload, measure
from benchmarks.compare import stop_process
from benchmarks.gateway_overhead import free_port, wait_http
from benchmarks.targets import engine_settings, vllm_command

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[1]
_FLOAT_DTYPES = {"F32", "F16", "BF16", "F64"}
_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


@dataclass(frozen=True)
class Variant:
    name: str
    model: str  # a model alias of serve_app.model_prep
    dtype: str
    quantization: str | None = None


VARIANTS = (
    Variant("float32", "smollm2", "float32"),
    Variant("bfloat16", "smollm2", "bfloat16"),
    Variant("awq-w4a16", "smollm2-awq", "bfloat16", "compressed-tensors"),
)


def safetensors_tensors(folder: Path) -> dict[str, tuple[str, int]]:
    """{tensor name: (stored dtype, element count)} from the safetensors headers (no tensor is read)."""
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for name, meta in header.items():
            if name != "__metadata__":
                tensors[name] = (meta["dtype"], math.prod(meta["shape"]))
    return tensors


def weight_bytes(folder: Path, served_dtype: str) -> dict[str, int]:
    """Bytes of the weights on disk and once loaded at `served_dtype`."""
    served = {"float32": 4, "bfloat16": 2, "float16": 2}[served_dtype]
    tensors = safetensors_tensors(folder)
    in_memory = sum(count * (served if dtype in _FLOAT_DTYPES else _BYTES[dtype]) for dtype, count in tensors.values())
    on_disk = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    return {"disk_bytes": on_disk, "memory_bytes": in_memory}


def tree_rss(pid: int) -> dict[str, int]:
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    sizes = []
    for proc in procs:
        try:
            sizes.append(proc.memory_info().rss)
        except psutil.NoSuchProcess:
            continue
    return {"rss_total_bytes": sum(sizes), "rss_largest_bytes": max(sizes)}


def perplexity(url: str, model: str, paragraphs: list[str]) -> dict[str, float]:
    """exp(mean negative log-likelihood) of the held-out text's tokens, as the engine scores them."""
    total, count = 0.0, 0
    for text in paragraphs:
        body = {"model": model, "prompt": text, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 0}
        reply = httpx.post(f"{url}/v1/completions", json=body, timeout=300)
        reply.raise_for_status()
        for position in reply.json()["choices"][0]["prompt_logprobs"][1:]:  # the first token has none
            total += _actual_token_logprob(position)
            count += 1
    return {"perplexity": math.exp(-total / count), "scored_tokens": count}


def _actual_token_logprob(position: dict) -> float:
    """vLLM lists the prompt's own token at each position first (with prompt_logprobs=0, only it)."""
    return next(iter(position.values()))["logprob"]


def read_questions() -> dict[str, list[str]]:
    """{question: words one of which a right answer contains} from data/questions.txt."""
    questions = {}
    for line in (DATA / "questions.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            question, _, expected = line.partition("\t")
            questions[question.strip()] = [w for w in expected.strip().split("|") if w]
    return questions


def right_answers(answers: list[str], expected: list[list[str]]) -> dict[str, int]:
    """How many answers to the questions with a known answer contain it."""
    checked = [(a, words) for a, words in zip(answers, expected, strict=True) if words]
    right = sum(any(w.lower() in a.lower() for w in words) for a, words in checked)
    return {"right": right, "of": len(checked)}


def greedy_answers(url: str, model: str, questions: list[str], max_tokens: int) -> list[str]:
    answers = []
    for question in questions:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens,
            "temperature": 0,
        }
        reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)
        reply.raise_for_status()
        answers.append(reply.json()["choices"][0]["message"]["content"])
    return answers


def agreement(answers: list[str], reference: list[str]) -> dict[str, float]:
    """Same answer (exactly), and the mean share of words up to the first difference."""
    same = sum(a == r for a, r in zip(answers, reference, strict=True))
    shares = []
    for a, r in zip(answers, reference, strict=True):
        aw, rw = a.split(), r.split()
        common = next((i for i, (x, y) in enumerate(zip(aw, rw, strict=False)) if x != y), min(len(aw), len(rw)))
        shares.append(common / max(len(aw), len(rw), 1))
    return {"greedy_same": same / len(reference), "greedy_prefix_share": sum(shares) / len(shares)}


def run_variant(variant: Variant, model_dir: str, args: argparse.Namespace, out_dir: Path) -> dict:
    settings = engine_settings(8000)
    settings = settings.model_copy(
        update={
            "engine": settings.engine.model_copy(update={"dtype": variant.dtype, "quantization": variant.quantization})
        }
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    proc = subprocess.Popen(
        vllm_command(settings, model_dir, port),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=open(out_dir / f"vllm-{variant.name}.log", "w"),  # noqa: SIM115 - open as long as the process
    )
    try:
        wait_http(f"{url}/v1/models", timeout_s=600)
        result: dict = {"ready_s": time.monotonic() - started, **weight_bytes(Path(model_dir), variant.dtype)}
        name = settings.engine.model_name
        questions = read_questions()
        result["answers"] = greedy_answers(url, name, list(questions), args.answer_tokens)
        result["right_answers"] = right_answers(result["answers"], list(questions.values()))
        paragraphs = [p for p in (DATA / "heldout.txt").read_text().split("\n\n") if p.strip()]
        result.update(perplexity(url, name, paragraphs))
        workload = Workload(model=name, requests=args.requests, max_tokens=args.max_tokens)
        result["levels"] = measure(url, None, workload, [1, 8], repeats=args.repeats)
        for level in result["levels"].values():
            level.pop("samples", None)
        result.update(tree_rss(proc.pid))
        return result
    finally:
        stop_process(proc)


def markdown(results: dict[str, dict]) -> str:
    base = results["float32"]
    mib = 1024**2
    rows = [
        "| variant | weights on disk MiB | weights in memory MiB | engine RSS MiB (tree / worker) | TTFT p50 ms c=1 "
        "| tok/s c=1 | TTFT p50 ms c=8 | tok/s c=8 | perplexity | right answers | same greedy answer as float32 "
        "| greedy prefix share |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        one, eight = r["levels"]["c=1"], r["levels"]["c=8"]
        ratio1 = one["output_tok_per_s"] / base["levels"]["c=1"]["output_tok_per_s"]
        ratio8 = eight["output_tok_per_s"] / base["levels"]["c=8"]["output_tok_per_s"]
        rows.append(
            f"| {name} | {r['disk_bytes'] / mib:.0f} ({r['disk_bytes'] / base['disk_bytes']:.2f}) "
            f"| {r['memory_bytes'] / mib:.0f} ({r['memory_bytes'] / base['memory_bytes']:.2f}) "
            f"| {r['rss_total_bytes'] / mib:.0f} / {r['rss_largest_bytes'] / mib:.0f} "
            f"| {one['ttft_p50_ms']:.0f} | {one['output_tok_per_s']:.1f} ({ratio1:.2f}) "
            f"| {eight['ttft_p50_ms']:.0f} | {eight['output_tok_per_s']:.1f} ({ratio8:.2f}) "
            f"| {r['perplexity']:.2f} | {r['right_answers']['right']}/{r['right_answers']['of']} "
            f"| {r['greedy_same']:.0%} | {r['greedy_prefix_share']:.0%} |"
        )
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="float32 vs bfloat16 vs 4-bit AWQ SmolLM2 on the CPU engine")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=16, help="requests per level (c=1 sends half)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--answer-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "quantization")
    parser.add_argument(
        "--awq-dir", type=Path, help="a 4-bit folder to use instead of smollm2-awq's (another group size)"
    )
    args = parser.parse_args()

    from serve_app.model_prep import resolve_model_source

    args.out.mkdir(parents=True, exist_ok=True)
    cache = engine_settings(8000).engine.model_cache_dir
    results: dict[str, dict] = {}
    for variant in VARIANTS:
        if variant.quantization and args.awq_dir:
            model_dir = str(args.awq_dir)
        else:
            model_dir = resolve_model_source(variant.model, cache, progress=print)
        print(f"{variant.name}: serving {model_dir} ({variant.dtype}, {variant.quantization or 'no quantization'})")
        results[variant.name] = run_variant(variant, model_dir, args, args.out)
    reference = results["float32"]["answers"]
    for r in results.values():
        r.update(agreement(r["answers"], reference))
    (args.out / "results.json").write_text(
        json.dumps({"args": vars(args), "results": results}, indent=2, default=str)  # paths as strings
    )
    table = markdown(results)
    (args.out / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
