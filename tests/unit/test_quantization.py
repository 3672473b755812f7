"""Quantization modes are checked before anything starts: name, hardware, checkpoint; and reach vLLM."""

import json

import pytest
from pydantic import ValidationError

from core.quantization import QUANTIZATION_MODES, QuantizationError, check_quantization, cpu_runs_int4_kernel
from core.settings import Settings
from serve_app.builder import preflight


@pytest.fixture(autouse=True)
def _a_cpu_with_the_4bit_kernel(monkeypatch):
    """The checks below are about modes and checkpoints, on any machine (the CPU's own check has its test)."""
    from core import quantization

    monkeypatch.setattr(quantization, "cpu_runs_int4_kernel", lambda: True)


def checkpoint(tmp_path, quant_method: str | None):
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    if quant_method:
        config["quantization_config"] = {"quant_method": quant_method, "bits": 4}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return str(tmp_path)


def test_the_mode_list_is_vllms_own():
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    assert set(QUANTIZATION_MODES) == set(QUANTIZATION_METHODS)


def test_an_unknown_mode_is_refused_by_the_settings():
    with pytest.raises(ValidationError, match="unknown quantization 'awq4'"):
        Settings(engine={"quantization": "awq4"})


def test_a_gpu_only_mode_on_cpu_is_refused_with_what_runs_instead():
    with pytest.raises(ValidationError, match=r"'fp8' needs a GPU.*awq"):
        Settings(engine={"quantization": "fp8", "accelerator": "cpu"})


def test_a_mode_the_gpu_type_is_too_old_for_is_refused():
    with pytest.raises(ValidationError, match=r"'fbgemm_fp8' needs CUDA compute capability 8\.0; T4 has 7\.5"):
        Settings(engine={"quantization": "fbgemm_fp8", "accelerator": "gpu", "accelerator_type": "T4", "dtype": "auto"})
    Settings(engine={"quantization": "fbgemm_fp8", "accelerator": "gpu", "accelerator_type": "A10G", "dtype": "auto"})


def test_awq_needs_an_awq_checkpoint(tmp_path):
    plain = checkpoint(tmp_path, None)
    with pytest.raises(QuantizationError, match=r"needs a checkpoint quantized with awq.*unquantized checkpoint"):
        check_quantization("awq", "gpu", "A10G", plain)


def test_a_gptq_mode_on_an_awq_checkpoint_is_refused(tmp_path):
    with pytest.raises(QuantizationError, match=r"'gptq' needs a checkpoint quantized with gptq.*'awq' checkpoint"):
        check_quantization("gptq", "gpu", "L4", checkpoint(tmp_path, "awq"))


def test_matching_checkpoints_pass(tmp_path):
    awq = checkpoint(tmp_path, "awq")
    check_quantization("awq", "cpu", None, awq)
    check_quantization("awq_marlin", "gpu", "A10G", awq)
    check_quantization("gptq", "cpu", None, checkpoint(tmp_path, "gptq"))


def test_online_fp8_takes_a_full_precision_checkpoint_but_not_an_int4_one(tmp_path):
    check_quantization("fp8", "gpu", "L4", checkpoint(tmp_path, None))
    with pytest.raises(QuantizationError, match="already quantized with 'awq'"):
        check_quantization("fp8", "gpu", "L4", checkpoint(tmp_path, "awq"))


def test_preflight_refuses_before_anything_starts(tmp_path):
    settings = Settings(engine={"model": checkpoint(tmp_path, None), "quantization": "gptq"}, data_dir=tmp_path)
    with pytest.raises(QuantizationError, match="gptq"):
        preflight(settings)


def test_the_mode_reaches_the_vllm_engine_arguments(tmp_path):
    from deployments.llm import build_llm_config

    settings = Settings(
        engine={"quantization": "awq", "accelerator": "gpu", "accelerator_type": "A10G", "dtype": "auto"}
    )
    config = build_llm_config(settings.engine, checkpoint(tmp_path, "awq"))
    assert config.engine_kwargs["quantization"] == "awq"
    assert config.accelerator_type == "A10G"


def w4a16_checkpoint(tmp_path):
    """The config.json llmcompressor writes for an AWQ W4A16 checkpoint (abridged)."""
    weights = {"num_bits": 4, "type": "int", "symmetric": False, "strategy": "group", "group_size": 64}
    quant = {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": None}},
    }
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "quantization_config": quant}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return str(tmp_path)


def test_an_llmcompressor_awq_checkpoint_is_served_as_compressed_tensors_and_awq_says_so(tmp_path):
    folder = w4a16_checkpoint(tmp_path)
    check_quantization("compressed-tensors", "cpu", None, folder, dtype="bfloat16")
    check_quantization(None, "cpu", None, folder, dtype="bfloat16")  # vLLM reads the checkpoint's own
    with pytest.raises(QuantizationError, match="set quantization: compressed-tensors"):
        check_quantization("awq", "cpu", None, folder, dtype="bfloat16")


def test_4bit_weights_on_cpu_need_bfloat16_activations_whatever_the_mode(tmp_path):
    (tmp_path / "ct").mkdir()
    for folder, own_mode in (
        (w4a16_checkpoint(tmp_path / "ct"), "compressed-tensors"),
        (checkpoint(tmp_path, "awq"), "awq"),
    ):
        for mode in (None, own_mode):
            with pytest.raises(QuantizationError, match=r"set engine\.dtype: bfloat16"):
                check_quantization(mode, "cpu", None, folder, dtype="float32")
        check_quantization(None, "gpu", None, folder, dtype="float32")  # the GPU kernels take float32 input


def test_8bit_activations_are_not_the_4bit_weight_only_kernel(tmp_path):
    folder = w4a16_checkpoint(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    group = config["quantization_config"]["config_groups"]["group_0"]
    group["weights"]["num_bits"] = 8
    group["input_activations"] = {"num_bits": 8, "type": "int"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    check_quantization("compressed-tensors", "cpu", None, folder, dtype="float32")


def test_4bit_weights_on_a_cpu_without_avx512_are_refused_with_what_to_do(tmp_path, monkeypatch):
    from core import quantization

    awq = checkpoint(tmp_path, "awq")
    avx2 = tmp_path / "cpuinfo-avx2"
    avx2.write_text("processor : 0\nflags : fpu sse2 avx avx2 fma\n")
    avx512 = tmp_path / "cpuinfo-avx512"
    avx512.write_text("processor : 0\nflags : fpu sse2 avx avx2 avx512f avx512dq avx512bw avx512vl\n")
    assert not cpu_runs_int4_kernel(avx2)
    assert cpu_runs_int4_kernel(avx512)
    monkeypatch.setattr(quantization, "cpu_runs_int4_kernel", lambda: False)
    with pytest.raises(QuantizationError, match="AVX-512"):
        check_quantization("awq", "cpu", None, awq, dtype="bfloat16")
    check_quantization("awq_marlin", "gpu", "A10G", awq)  # a GPU is not asked about the CPU
