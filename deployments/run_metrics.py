"""What one answered request reports: its timing by stage, and how it becomes Prometheus observations and a
W&B record (the orchestrator's finish stage)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from deployments.providers.router import RoutedStream
from observability import prom


@dataclass
class Timing:
    start: float = field(default_factory=time.perf_counter)
    retrieval_s: float = 0.0
    prompt_done: float | None = None
    first_token: float | None = None


def export_prometheus(timing: Timing, routed: RoutedStream, end: float, status: str) -> None:
    """Prometheus (through Ray's metrics agent): latencies, stages, tokens, outcomes, cost."""
    usage = routed.usage()
    provider = "+".join(routed.providers) or "none"
    prom.inc("llmserve_requests_total", provider=provider, status=status)
    prom.observe("llmserve_e2e_seconds", end - timing.start, provider=provider, status=status)
    prom.observe("llmserve_stage_seconds", timing.retrieval_s, stage="retrieval")
    if timing.prompt_done is not None:
        prom.observe("llmserve_stage_seconds", timing.prompt_done - timing.start - timing.retrieval_s, stage="prompt")
    if timing.first_token is not None:
        prom.observe("llmserve_ttft_seconds", timing.first_token - timing.start, provider=provider)
        if timing.prompt_done is not None:
            prom.observe("llmserve_stage_seconds", timing.first_token - timing.prompt_done, stage="queue")
        prom.observe("llmserve_stage_seconds", end - timing.first_token, stage="decode")
        if usage.completion_tokens > 1:
            tpot = (end - timing.first_token) / (usage.completion_tokens - 1)
            prom.observe("llmserve_tpot_seconds", tpot, provider=provider)
    prom.inc("llmserve_tokens_total", usage.prompt_tokens, provider=provider, kind="prompt")
    prom.inc("llmserve_tokens_total", usage.completion_tokens, provider=provider, kind="completion")
    for leg in routed.legs:
        prom.inc("llmserve_cost_usd_total", leg.cost_usd, provider=leg.provider)
    for name, count in routed.failed.items():
        prom.inc("llmserve_failovers_total", count, provider=name)


def wandb_record(
    timing: Timing, routed: RoutedStream, end: float, status: str, rag_chunks: int, stream: bool
) -> dict[str, Any]:
    """One request's W&B row."""
    usage = routed.usage()
    e2e = end - timing.start
    ttft = (timing.first_token - timing.start) if timing.first_token else None
    decode_s = (end - timing.first_token) if timing.first_token else 0.0
    return {
        "ttft_s": ttft,
        "e2e_latency_s": e2e,
        "retrieval_s": timing.retrieval_s,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "tokens_per_s": usage.completion_tokens / e2e if e2e > 0 else 0.0,
        "decode_tokens_per_s": (usage.completion_tokens - 1) / decode_s if decode_s > 0 else 0.0,
        "rag_chunks": rag_chunks,
        "stream": int(stream),
        "ok": int(status == "ok"),
        "status": status,
        "provider": "+".join(routed.providers),
        "failovers": len(routed.failures),
        "cost_usd": routed.cost_usd,
    }
