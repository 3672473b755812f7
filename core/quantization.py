"""Quantization modes: which exist, which need which checkpoint, which this hardware runs. Checked before
anything starts (`check_quantization`), so a wrong mode is one clear error, not a vLLM stack trace from a
replica a minute after deploy.

The mode list mirrors vLLM's `QUANTIZATION_METHODS` (a unit test keeps them equal) so that the settings
model can validate names without importing vLLM.
"""

from __future__ import annotations

import json
from pathlib import Path

# vllm.model_executor.layers.quantization.QUANTIZATION_METHODS (vLLM 0.32).
QUANTIZATION_MODES: tuple[str, ...] = (
    "awq", "auto_awq", "fp8", "fbgemm_fp8", "fp_quant", "modelopt", "modelopt_fp4", "modelopt_mxfp8",
    "modelopt_mixed", "auto_gptq", "gptq", "gptq_marlin", "awq_marlin", "humming", "compressed-tensors",
    "experts_int8", "quark", "moe_wna16", "torchao", "inc", "mxfp4", "gpt_oss_mxfp4", "deepseek_v4_fp8",
    "online", "fp8_per_tensor", "fp8_per_block", "fp8_per_channel", "int8_per_channel_weight_only",
    "nvfp4_per_token", "mxfp8",
)  # fmt: skip

# Modes that read weights already quantized offline: the checkpoint's `quantization_config.quant_method`
# must be one of these.
CHECKPOINT_METHODS: dict[str, frozenset[str]] = {
    "awq": frozenset({"awq"}),
    "auto_awq": frozenset({"awq"}),
    "awq_marlin": frozenset({"awq"}),
    "gptq": frozenset({"gptq"}),
    "auto_gptq": frozenset({"gptq"}),
    "gptq_marlin": frozenset({"gptq"}),
    "compressed-tensors": frozenset({"compressed-tensors"}),
    "modelopt": frozenset({"modelopt"}),
    "modelopt_fp4": frozenset({"modelopt", "modelopt_fp4"}),
    "modelopt_mxfp8": frozenset({"modelopt", "modelopt_mxfp8"}),
    "modelopt_mixed": frozenset({"modelopt", "modelopt_mixed"}),
    "quark": frozenset({"quark"}),
    "inc": frozenset({"inc", "auto-round"}),
    "fbgemm_fp8": frozenset({"fbgemm_fp8"}),
    "mxfp4": frozenset({"mxfp4"}),
    "gpt_oss_mxfp4": frozenset({"mxfp4"}),
    "fp_quant": frozenset({"fp_quant"}),
    "moe_wna16": frozenset({"awq", "gptq"}),
}
# Modes that quantize a full-precision checkpoint while loading it (the checkpoint may also be FP8 already).
ONLINE_MODES = frozenset(
    {"fp8", "fp8_per_tensor", "fp8_per_block", "fp8_per_channel", "int8_per_channel_weight_only", "online",
     "experts_int8", "torchao", "humming", "nvfp4_per_token", "mxfp8", "deepseek_v4_fp8"}
)  # fmt: skip

# vLLM's CPU backend runs weight-only INT4/INT8 (AWQ/GPTQ through its WNA16 CPU kernels), compressed-tensors
# (W8A8 INT8, WNA16) and Intel's INC/AutoRound checkpoints; the FP8/FP4 kernels are CUDA/ROCm only.
CPU_MODES = frozenset({"awq", "auto_awq", "gptq", "auto_gptq", "compressed-tensors", "inc"})

# Minimum CUDA compute capability (x10) per mode, from each vLLM QuantizationConfig.get_min_capability().
MIN_CAPABILITY: dict[str, int] = {
    "fbgemm_fp8": 80, "fp_quant": 100, "modelopt": 80, "modelopt_mxfp8": 80, "auto_gptq": 60, "gptq": 60,
    "gptq_marlin": 60, "compressed-tensors": 70, "experts_int8": 80, "quark": 70, "moe_wna16": 70, "inc": 60,
    "mxfp4": 80, "gpt_oss_mxfp4": 80, "mxfp8": 80,
}  # fmt: skip
DEFAULT_MIN_CAPABILITY = 75

# Ray accelerator types (ray.util.accelerators) -> CUDA compute capability x10.
ACCELERATOR_CAPABILITY: dict[str, int] = {
    "V100": 70, "T4": 75, "A10G": 86, "A10": 86, "A100": 80, "A100-40G": 80, "A100-80G": 80, "A40": 86,
    "L4": 89, "L40S": 89, "H100": 90, "H200": 90, "B200": 100, "GB200": 100,
}  # fmt: skip


class QuantizationError(ValueError):
    """A quantization mode this model or this hardware cannot use."""


def checkpoint_quantization(model_source: str) -> dict | None:
    """`quantization_config` of a local checkpoint folder ({} when it is not quantized), or None when the folder
    is not local (an HF id: vLLM reads it on the replica's node)."""
    config_path = Path(model_source).expanduser() / "config.json"
    if not config_path.is_file():
        return None
    return json.loads(config_path.read_text()).get("quantization_config") or {}


def checkpoint_method(model_source: str) -> str | None:
    """`quantization_config.quant_method` of a local checkpoint folder ('' when it is not quantized), or None
    when the folder is not local."""
    quant = checkpoint_quantization(model_source)
    return None if quant is None else str(quant.get("quant_method") or "").lower()


def int4_weight_only(quant: dict) -> bool:
    """Whether a checkpoint's weights are 4-bit integers with full-precision activations (AWQ/GPTQ, or
    compressed-tensors W4A16): the layers vLLM's CPU backend runs with its WNA16 kernel."""
    method = str(quant.get("quant_method") or "").lower()
    if method in {"awq", "gptq"}:
        return int(quant.get("bits") or quant.get("w_bit") or 4) == 4
    if method != "compressed-tensors":
        return False
    return any(
        (group.get("weights") or {}).get("type") == "int"
        and (group.get("weights") or {}).get("num_bits") == 4
        and not group.get("input_activations")
        for group in (quant.get("config_groups") or {}).values()
    )


def _check_mode(mode: str, accelerator: str, accelerator_type: str | None) -> None:
    if mode not in QUANTIZATION_MODES:
        raise QuantizationError(f"unknown quantization {mode!r}; vLLM knows: {', '.join(QUANTIZATION_MODES)}")
    if accelerator == "cpu" and mode not in CPU_MODES:
        raise QuantizationError(
            f"quantization {mode!r} needs a GPU: vLLM's CPU backend runs only {', '.join(sorted(CPU_MODES))} "
            "(use an AWQ or GPTQ checkpoint on CPU, or accelerator=gpu)"
        )
    if accelerator == "gpu" and accelerator_type:
        capability = ACCELERATOR_CAPABILITY.get(accelerator_type.upper())
        needed = MIN_CAPABILITY.get(mode, DEFAULT_MIN_CAPABILITY)
        if capability is not None and capability < needed:
            raise QuantizationError(
                f"quantization {mode!r} needs CUDA compute capability {needed / 10:.1f}; {accelerator_type} has "
                f"{capability / 10:.1f} (pick a newer GPU type, or awq/gptq which run from 7.5, gptq from 6.0)"
            )


def _check_checkpoint(mode: str, method: str, model_source: str) -> None:
    wanted = CHECKPOINT_METHODS.get(mode)
    if wanted is not None and method not in wanted:
        found = f"a {method!r} checkpoint" if method else "an unquantized checkpoint"
        hint = "use e.g. an '-AWQ'/'-GPTQ' model, or fp8 to quantize while loading"
        if method == "compressed-tensors":
            hint = "llmcompressor writes AWQ and GPTQ in that format: set quantization: compressed-tensors"
        raise QuantizationError(
            f"quantization {mode!r} needs a checkpoint quantized with {' or '.join(sorted(wanted))}, but "
            f"{model_source} is {found} ({hint})"
        )
    if mode in ONLINE_MODES and method and method not in {"fp8", "fbgemm_fp8"} | {mode}:
        raise QuantizationError(
            f"quantization {mode!r} quantizes full-precision weights while loading, but {model_source} is "
            f"already quantized with {method!r}: leave quantization unset and vLLM reads the checkpoint's own"
        )


def cpu_runs_int4_kernel(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether vLLM's CPU backend has its 4-bit kernel on this machine. On x86 it loads its AVX-512 build (which
    has CPUWNA16) when torch finds AVX-512 F, BW, VL and DQ, else its AVX2 build (which has not). Other
    architectures, or no /proc: assumed to have it."""
    try:
        flags = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return True
    found = set(flags.partition(":")[2].split())
    if "avx2" not in found:  # not an x86 CPU vLLM picks a build for by its vector width
        return True
    return {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= found


def check_quantization(
    mode: str | None,
    accelerator: str,
    accelerator_type: str | None,
    model_source: str | None,
    dtype: str = "auto",
) -> None:
    """Raise QuantizationError with what to do instead, or return when vLLM can run `mode` here. A checkpoint
    that is quantized already is checked with no mode too (vLLM then reads the checkpoint's own)."""
    if mode is not None:
        _check_mode(mode, accelerator, accelerator_type)
    quant = checkpoint_quantization(model_source) if model_source else None
    if quant is None:
        return
    if mode is not None:
        _check_checkpoint(mode, str(quant.get("quant_method") or "").lower(), model_source)
    if accelerator == "cpu" and int4_weight_only(quant) and not cpu_runs_int4_kernel():
        # Seen here: on an AVX2-only CPU vLLM 0.32 loads its _C_AVX2 build, which has no cpu_gemm_wna16; the
        # engine dies at its first forward pass ("'_C' object has no attribute 'cpu_gemm_wna16'").
        raise QuantizationError(
            f"{model_source} has 4-bit weights, and vLLM's CPU kernel for them (CPUWNA16) is built only for CPUs "
            "with AVX-512; this CPU has none: serve the full-precision model here, or use a CPU with AVX-512"
        )
    if accelerator == "cpu" and dtype in {"float32", "float"} and int4_weight_only(quant):
        # Seen here: vLLM 0.32's CPUWNA16 kernel raises '"cpu_gemm_wna16" not implemented for 'Float'' on the
        # first forward pass, a minute after deploy.
        raise QuantizationError(
            f"{model_source} has 4-bit weights, and vLLM's CPU kernel for them (CPUWNA16) runs bfloat16 or "
            "float16 activations only, not float32: set engine.dtype: bfloat16"
        )
