"""The flat setting names of llmserve 0.1 (`LLMSERVE_LLM_MAX_REPLICAS`, `rag_top_k: 7` in YAML or Serve
`args`), still accepted for one release: each one used is moved into its group with a warning that names the
new spelling. Remove this module, and its two call sites in core/settings.py, in the release after 0.2.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

ENV_PREFIX = "LLMSERVE_"

# old flat name -> (group, name in the group)
FLAT_NAMES: dict[str, tuple[str, str]] = {
    **{n: ("server", n) for n in ("route_prefix", "host", "port", "direct_ingress", "proxy_port", "handle_grpc")},
    **{
        n: ("limits", n)
        for n in (
            "max_body_bytes", "default_max_tokens", "max_tokens_cap", "request_lease_s", "max_inflight_per_model",
            "overload_retry_after_s",
        )
    },
    **{n: ("state", n) for n in ("redis_url", "redis_prefix", "conversation_ttl_s", "history_max_messages")},
    "chroma_url": ("rag", "chroma_url"),
    "rag_collection": ("rag", "collection"),
    "rag_enabled": ("rag", "enabled"),
    "rag_top_k": ("rag", "top_k"),
    "rag_min_score": ("rag", "min_score"),
    "chunk_chars": ("rag", "chunk_chars"),
    "chunk_overlap_chars": ("rag", "chunk_overlap_chars"),
    "retriever_replicas": ("rag", "replicas"),
    "retriever_torch_threads": ("rag", "torch_threads"),
    "retriever_batch_size": ("rag", "batch_size"),
    **{
        n: ("engine", n)
        for n in (
            "model", "served_model_name", "model_cache_dir", "accelerator", "accelerator_type", "tensor_parallel_size",
            "dtype", "max_model_len", "quantization", "kv_cache_memory_bytes", "gpu_memory_utilization",
            "enforce_eager", "seed", "engine_kwargs", "stream_batching_interval_ms",
        )
    },
    **{
        f"llm_{n}": ("engine", n)
        for n in (
            "min_replicas", "max_replicas", "target_ongoing_requests", "upscale_delay_s", "downscale_delay_s",
            "max_ongoing_requests", "max_queued_requests",
        )
    },
    "price_input_per_mtok": ("pricing", "input_per_mtok"),
    "price_output_per_mtok": ("pricing", "output_per_mtok"),
    "gpu_hour_usd": ("pricing", "gpu_hour_usd"),
    "providers": ("routing", "providers"),
    "routing": ("routing", "strategy"),  # a string here; a mapping is the group itself
    **{
        n: ("routing", n)
        for n in (
            "ttft_target_s", "request_deadline_s", "retry_max_attempts", "retry_base_s", "retry_max_wait_s",
            "breaker_failures", "breaker_window_s", "breaker_open_s",
        )
    },
    "max_file_bytes": ("batch", "max_file_bytes"),
    **{
        f"batch_{n}": ("batch", n)
        for n in (
            "max_lines", "worker_min_replicas", "worker_max_replicas", "max_inflight", "yield_at", "preempt",
            "visibility_timeout_s", "max_attempts", "queue_per_replica", "max_age_s",
        )
    },
    "ingress_replicas": ("replicas", "ingress"),
    "orchestrator_replicas": ("replicas", "orchestrator"),
    "light_num_cpus": ("replicas", "light_num_cpus"),
    "wandb_mode": ("metrics", "wandb_mode"),
    "wandb_project": ("metrics", "wandb_project"),
    "metrics_flush_interval_s": ("metrics", "flush_interval_s"),
    "metrics_export_port": ("metrics", "export_port"),
}  # fmt: skip

# Standard variables that set a field without our prefix: not deprecated.
STANDARD_ENV: dict[str, tuple[str, str]] = {"REDIS_URL": ("state", "redis_url")}


class DeprecatedSettingWarning(FutureWarning):
    """A setting spelled the 0.1 way (flat); it still works in this release. Shown by default."""


def _is_legacy(name: str, value: Any) -> bool:
    # `routing` is both the 0.1 strategy name (a string) and the routing group (a mapping).
    return name in FLAT_NAMES and not (name == "routing" and isinstance(value, Mapping))


def nest_flat_names(data: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """`data` with every flat 0.1 name moved into its group (a value given in the group itself wins)."""
    out: dict[str, Any] = {}
    moved: list[tuple[str, str, str]] = []
    for name, value in data.items():
        if _is_legacy(name, value):
            moved.append((name, *FLAT_NAMES[name]))
        else:
            out[name] = value
    for name, group, field in moved:
        target = out.setdefault(group, {})
        if not isinstance(target, dict):
            continue  # the group was given whole in another form; validation reports it
        target = out[group] = dict(target)
        target.setdefault(field, data[name])
        _warn(f"setting {name!r} ({origin})", f"{group}.{field} (or {env_name(group, field)})")
    return out


def env_name(group: str, field: str) -> str:
    return f"{ENV_PREFIX}{group.upper()}__{field.upper()}"


def flat_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The nested values that 0.1's flat environment variables (and standard ones like REDIS_URL) give."""
    environ = os.environ if environ is None else environ
    nested: dict[str, dict[str, str]] = {}
    for name, (group, field) in STANDARD_ENV.items():
        if environ.get(name):
            nested.setdefault(group, {})[field] = environ[name]
    for name, (group, field) in FLAT_NAMES.items():
        variable = f"{ENV_PREFIX}{name.upper()}"
        if name == "routing" or variable not in environ:
            continue  # LLMSERVE_ROUTING is read by the env source (core/settings.py) as the group or a strategy
        nested.setdefault(group, {})[field] = environ[variable]  # beats REDIS_URL, as in 0.1
        _warn(f"environment variable {variable}", env_name(group, field))
    return nested


def warn_routing_strategy(value: str) -> dict[str, str]:
    """LLMSERVE_ROUTING=<strategy>, the 0.1 form, as the routing group."""
    _warn("environment variable LLMSERVE_ROUTING=<strategy>", env_name("routing", "strategy"))
    return {"strategy": value}


def _warn(what: str, instead: str) -> None:
    warnings.warn(
        f"{what} is deprecated and will stop working in the next release: use {instead}",
        DeprecatedSettingWarning,
        stacklevel=4,
    )
