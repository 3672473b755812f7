"""Prometheus metrics through Ray's metrics agent (scraped at each node's metrics export port; Ray prefixes
every name with `ray_`). One place defines them, so the Grafana dashboard (observability/grafana/) and the
code cannot drift apart: a test checks that every metric the dashboard queries is defined here.

Time in our layers against time in the engine: `llmserve_stage_seconds{stage=...}` (and its exact sum,
`llmserve_stage_time_seconds_total`: Ray 2.60 exports a histogram's `_sum` from bucket midpoints) with stages admission
(ingress: auth, limits, capacity), retrieval, prompt (history + prompt build), queue (until the first token,
i.e. engine queueing and prefill) and decode (first token to last).
"""

from __future__ import annotations

import contextlib
from functools import cache

LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]
TOKEN_GAP_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5]

# Labels are bounded: `provider` is a configured provider's name (or "none": no provider answered), `model` a
# served model's id (unknown ones are refused before they are counted), `tenant` a tenant an admin created.
HISTOGRAMS = {
    "llmserve_ttft_seconds": (
        "Time to first token, from the orchestrator's view.",
        LATENCY_BUCKETS,
        ("model", "provider"),
    ),
    "llmserve_tpot_seconds": ("Time per output token after the first.", TOKEN_GAP_BUCKETS, ("model", "provider")),
    "llmserve_e2e_seconds": ("Whole request, orchestrator's view.", LATENCY_BUCKETS, ("model", "provider", "status")),
    "llmserve_stage_seconds": ("Time per stage of a request.", LATENCY_BUCKETS, ("stage",)),
    "llmserve_batch_request_seconds": ("One batch request, worker's view.", LATENCY_BUCKETS, ()),
}
COUNTERS = {
    "llmserve_requests_total": (
        "Answered requests by outcome; provider: the one that finished the answer.",
        ("model", "provider", "status", "tenant"),
    ),
    "llmserve_tokens_total": (
        "Tokens by kind (prompt, completion) and the provider that took or produced them (a failover sends the "
        "prompt again, to the next provider).",
        ("model", "provider", "kind", "tenant"),
    ),
    "llmserve_stage_time_seconds_total": (
        "Seconds spent per stage, exactly (Ray exports a histogram's _sum from bucket midpoints).",
        ("stage",),
    ),
    "llmserve_errors_total": ("Error responses by OpenAI error type and status.", ("type", "status")),
    "llmserve_provider_attempts_total": (
        "Provider attempts by outcome (ok, error): an answer that failed over counts one attempt per provider try.",
        ("provider", "outcome"),
    ),
    "llmserve_failovers_total": (
        "Answers moved on from a failed attempt of one provider to another provider.",
        ("from_provider", "to_provider"),
    ),
    "llmserve_cost_usd_total": ("Provider cost in USD.", ("model", "provider", "tenant")),
    "llmserve_admission_rejected_total": ("Requests refused at the door (503): the model was at capacity.", ("model",)),
    "llmserve_batch_requests_total": ("Batch request results (ok, err, skip), counted once.", ("result",)),
}
GAUGES = {
    "llmserve_requests_in_flight": ("Requests admitted and not yet finished, per ingress replica.", ("model",)),
    "llmserve_admission_capacity": ("Requests one ingress replica admits per model before it answers 503.", ("model",)),
    "llmserve_batch_queue_depth": ("Batch requests queued or in flight.", ()),
    "llmserve_batch_queue_oldest_age_seconds": ("Age of the oldest queued batch request.", ()),
}


@cache
def _metrics() -> dict:
    from ray.util.metrics import Counter, Gauge, Histogram

    made: dict = {}
    for name, (description, buckets, tags) in HISTOGRAMS.items():
        made[name] = Histogram(name, description=description, boundaries=buckets, tag_keys=tags)
    for name, (description, tags) in COUNTERS.items():
        made[name] = Counter(name, description=description, tag_keys=tags)
    for name, (description, tags) in GAUGES.items():
        made[name] = Gauge(name, description=description, tag_keys=tags)
    return made


def _enabled() -> bool:
    import ray

    return ray.is_initialized()


def observe(name: str, value: float | None, **tags: str) -> None:
    """Record into a histogram; a no-op outside Ray or for a missing value. Never raises."""
    if value is None or not _enabled():
        return
    with contextlib.suppress(Exception):  # metrics must never fail a request
        _metrics()[name].observe(value, tags=tags)


def stage(name: str, seconds: float) -> None:
    """One request's time in a stage: its distribution and, exactly, its sum."""
    observe("llmserve_stage_seconds", seconds, stage=name)
    inc("llmserve_stage_time_seconds_total", max(0.0, seconds), stage=name)


def inc(name: str, value: float = 1.0, **tags: str) -> None:
    if not value or not _enabled():
        return
    with contextlib.suppress(Exception):
        _metrics()[name].inc(value, tags=tags)


def set_gauge(name: str, value: float, **tags: str) -> None:
    if not _enabled():
        return
    with contextlib.suppress(Exception):
        _metrics()[name].set(value, tags=tags)
