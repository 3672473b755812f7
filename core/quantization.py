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


def checkpoint_method(model_source: str) -> str | None:
    """`quantization_config.quant_method` of a local checkpoint folder ('' when it is not quantized), or None
    when the folder is not local (an HF id: vLLM reads it on the replica's node)."""
    config_path = Path(model_source).expanduser() / "config.json"
    if not config_path.is_file():
        return None
    config = json.loads(config_path.read_text())
    quant = config.get("quantization_config") or {}
    return str(quant.get("quant_method") or "").lower()


def check_quantization(
    mode: str | None, accelerator: str, accelerator_type: str | None, model_source: str | None
) -> None:
    """Raise QuantizationError with what to do instead, or return when vLLM can run `mode` here."""
    if mode is None:
        return
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
    method = checkpoint_method(model_source) if model_source else None
    if method is None:
        return
    wanted = CHECKPOINT_METHODS.get(mode)
    if wanted is not None and method not in wanted:
        found = f"a {method!r} checkpoint" if method else "an unquantized checkpoint"
        raise QuantizationError(
            f"quantization {mode!r} needs a checkpoint quantized with {' or '.join(sorted(wanted))}, but "
            f"{model_source} is {found} (use e.g. an '-AWQ'/'-GPTQ' model, or fp8 to quantize while loading)"
        )
    if mode in ONLINE_MODES and method and method not in {"fp8", "fbgemm_fp8"} | {mode}:
        raise QuantizationError(
            f"quantization {mode!r} quantizes full-precision weights while loading, but {model_source} is "
            f"already quantized with {method!r}: leave quantization unset and vLLM reads the checkpoint's own"
        )
