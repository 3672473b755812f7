"""The 4-bit AWQ (W4A16) twin of SmolLM2, made here from the packaged weights by `llmserve prepare-model
--quantize awq` (llmcompressor, in its own virtualenv), and served by the whole app on the CPU engine.

Run apart (it quantizes for ~7 minutes the first time and starts a Ray cluster of its own):
`pytest -m quantization tests/quantization`."""

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from safetensors import safe_open

from core.quantization import QuantizationError, cpu_runs_int4_kernel
from serve_app.model_prep import AWQ_GROUP_SIZE
from tests.conftest import REDIS_URL
from tests.services import free_port

pytestmark = pytest.mark.quantization

MODEL_CACHE_DIR = Path(os.environ.get("LLMSERVE_TEST_MODEL_CACHE_DIR", os.path.expanduser("~/.llmserve/models")))
KEY = "sk-quant-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def awq_folder() -> Path:
    """What a user gets from the CLI: the float32 folder first, then the 4-bit one beside it."""
    env = {**os.environ, "LLMSERVE_ENGINE__MODEL_CACHE_DIR": str(MODEL_CACHE_DIR)}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "serve_app.cli", "prepare-model", "--quantize", "awq"],
        env=env,
        capture_output=True,
        text=True,
        timeout=40 * 60,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(f"\n[prepare-model --quantize awq] {time.monotonic() - started:.0f} s")
    assert "LLMSERVE_ENGINE__QUANTIZATION=compressed-tensors" in done.stdout  # it says how to serve it
    return MODEL_CACHE_DIR / "SmolLM2-135M-Instruct-AWQ-W4A16"


def test_the_checkpoint_is_4bit_awq_made_from_the_packaged_weights(awq_folder):
    config = json.loads((awq_folder / "config.json").read_text())
    quant = config["quantization_config"]
    assert quant["quant_method"] == "compressed-tensors"  # the method vLLM reads it with
    assert quant["format"] == "pack-quantized"
    (group,) = quant["config_groups"].values()
    assert group["weights"]["num_bits"] == 4 and group["weights"]["type"] == "int"
    assert group["weights"]["group_size"] == AWQ_GROUP_SIZE and not group["input_activations"]  # W4A16
    assert quant["ignore"] == ["lm_head"]
    provenance = json.loads((awq_folder / "llmserve-quantization.json").read_text())
    assert provenance["algorithm"] == "awq" and provenance["calibration_samples"] >= 32
    assert Path(provenance["source"]) == MODEL_CACHE_DIR / "SmolLM2-135M-Instruct"
    assert "AWQModifier" in (awq_folder / "recipe.yaml").read_text()  # llmcompressor's own record of the recipe

    with safe_open(str(awq_folder / "model.safetensors"), "pt") as weights:
        packed = weights.get_tensor("model.layers.0.self_attn.q_proj.weight_packed")
        scales = weights.get_tensor("model.layers.0.self_attn.q_proj.weight_scale")
    assert str(packed.dtype) == "torch.int32" and tuple(packed.shape) == (576, 576 // 8)  # 8 weights per int32
    assert tuple(scales.shape) == (576, 576 // AWQ_GROUP_SIZE)  # one scale per group of inputs
    full = (MODEL_CACHE_DIR / "SmolLM2-135M-Instruct" / "model.safetensors").stat().st_size
    assert (awq_folder / "model.safetensors").stat().st_size < 0.25 * full


def test_preflight_takes_the_declared_method_and_refuses_mismatches(awq_folder):
    from core.settings import Settings
    from serve_app.builder import preflight

    def settings(**engine):
        base = {"model": "smollm2-awq", "model_cache_dir": MODEL_CACHE_DIR}
        return Settings(engine={**base, **engine}, data_dir=awq_folder.parent / ".preflight")

    if cpu_runs_int4_kernel():
        sources = preflight(settings(quantization="compressed-tensors", dtype="bfloat16"))
        assert sources == {"SmolLM2-135M-Instruct-AWQ": str(awq_folder)}
        with pytest.raises(QuantizationError, match=r"set engine\.dtype: bfloat16"):
            preflight(settings(quantization="compressed-tensors", dtype="float32"))
    else:  # an AVX2-only CPU: vLLM's CPU build here has no 4-bit kernel, said before anything starts
        with pytest.raises(QuantizationError, match="AVX-512"):
            preflight(settings(quantization="compressed-tensors", dtype="bfloat16"))
    with pytest.raises(QuantizationError, match="set quantization: compressed-tensors"):
        preflight(settings(quantization="awq", dtype="bfloat16"))
    with pytest.raises(QuantizationError, match="gptq"):
        preflight(settings(quantization="gptq", dtype="bfloat16"))


@pytest.fixture(scope="module")
def awq_stack(awq_folder, tmp_path_factory):
    from pydantic import SecretStr

    from core.settings import Settings
    from serve_app.runtime import start_local

    prefix = f"llmserve-quant-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        app_name="llmserve-quant",
        master_key=SecretStr(KEY),
        data_dir=tmp_path_factory.mktemp("quant-data"),
        server={"port": free_port(), "proxy_port": free_port()},
        metrics={"export_port": free_port(), "wandb_mode": "disabled"},
        state={"redis_url": REDIS_URL, "redis_prefix": prefix},
        engine={
            "model": "smollm2-awq",
            "model_cache_dir": MODEL_CACHE_DIR,
            "quantization": "compressed-tensors",
            "dtype": "bfloat16",
        },
    )
    stack = start_local(settings)
    yield stack
    stack.shutdown()
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


@pytest.mark.skipif(
    not cpu_runs_int4_kernel(), reason="vLLM's CPU build for this CPU (AVX2, no AVX-512) has no 4-bit kernel"
)
def test_the_app_serves_the_4bit_model_and_it_knows_the_capital_of_france(awq_stack):
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=awq_stack.url, headers=headers, timeout=120) as client:
        models = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert "SmolLM2-135M-Instruct-AWQ" in models
        body = {
            "model": "SmolLM2-135M-Instruct-AWQ",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 24,
            "temperature": 0,
        }
        reply = client.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200, reply.text
        answer = reply.json()
        assert "Paris" in answer["choices"][0]["message"]["content"]
        assert answer["usage"]["completion_tokens"] > 0
