"""The 4-bit AWQ (W4A16) twin of the default model, made here from the packaged weights.

`prepare_awq` turns the prepared float32 SmolLM2 folder into `SmolLM2-135M-Instruct-AWQ-W4A16` beside it, once,
under a file lock, by running `quantize_awq.py` (llmcompressor) in a virtualenv of its own: llmcompressor pins
a transformers and compressed-tensors that vLLM's cannot share a virtualenv with. That environment is made
the first time (`quantize-requirements.txt`, ~1.5 GB, a few minutes) in `<model_cache_dir>/.quantize-venv`.

Serve the result with `engine.model: smollm2-awq`, `engine.quantization: compressed-tensors` (the method the
checkpoint declares; llmcompressor writes AWQ in that format) and `engine.dtype: bfloat16`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from filelock import FileLock

from serve_app.model_prep import (
    AWQ_GROUP_SIZE,
    AWQ_RECIPE,
    SMOLLM2_AWQ_MODEL_ID,
    Progress,
    _silent,
    is_prepared,
    mark_prepared,
    prepare_smollm2,
)

_HERE = Path(__file__).parent
REQUIREMENTS = _HERE / "quantize-requirements.txt"
SCRIPT = _HERE / "quantize_awq.py"


def quantize_venv(cache_dir: Path) -> Path:
    """The quantization virtualenv's folder (LLMSERVE_QUANTIZE_VENV overrides)."""
    return Path(os.environ.get("LLMSERVE_QUANTIZE_VENV") or cache_dir / ".quantize-venv")


def ensure_quantize_venv(venv: Path, progress: Progress = _silent) -> Path:
    """Make the virtualenv with the pinned requirements unless it already has them; return its python."""
    python = venv / "bin" / "python"
    stamp = venv / ".llmserve-requirements"
    wanted = REQUIREMENTS.read_text()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    progress(f"making the quantization environment in {venv} (llmcompressor; once, a few minutes)")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    # torch's CPU build: PIP_FIND_LINKS on our machines, else LLMSERVE_TORCH_INDEX (as install.sh); without either,
    # pip takes PyPI's CUDA build of torch (several GB more).
    index = os.environ.get("LLMSERVE_TORCH_INDEX")
    extra = ["--extra-index-url", index] if index else []
    subprocess.run([str(python), "-m", "pip", "install", "-q", *extra, "-r", str(REQUIREMENTS)], check=True)
    stamp.write_text(wanted)
    return python


def prepare_awq(cache_dir: Path, progress: Progress = _silent) -> Path:
    """Return the ready AWQ W4A16 folder, making it once (float32 first, then llmcompressor, ~7 min on 2 cores)."""
    target = cache_dir / SMOLLM2_AWQ_MODEL_ID
    if is_prepared(target, AWQ_RECIPE):
        return target
    source = prepare_smollm2(cache_dir, progress)
    with FileLock(str(cache_dir / f"{SMOLLM2_AWQ_MODEL_ID}.lock")):
        if is_prepared(target, AWQ_RECIPE):
            return target
        python = ensure_quantize_venv(quantize_venv(cache_dir), progress)
        progress(f"quantizing {source.name} to 4-bit AWQ (W4A16, llmcompressor on the CPU; several minutes)")
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".quant-") as tmp:
            staging = Path(tmp) / SMOLLM2_AWQ_MODEL_ID
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
            command = [str(python), str(SCRIPT), str(source), str(staging), "--group-size", str(AWQ_GROUP_SIZE)]
            subprocess.run(command, check=True, env=env)
            mark_prepared(staging, AWQ_RECIPE)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
    progress(f"4-bit model ready at {target}")
    return target


if __name__ == "__main__":
    print(prepare_awq(Path(sys.argv[1]), progress=lambda msg: print(msg, flush=True)))
