"""What one answered request reports: its timing by stage, and how it becomes Prometheus observations and a
W&B record (the orchestrator's finish stage)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from deployments.providers.router import RoutedStream
from observability import prom, tracing
from observability.tracing import Span


@dataclass
class Timing:
    start: float = field(default_factory=time.perf_counter)
    retrieval_s: float = 0.0
    prompt_done: float | None = None
    first_token: float | None = None
    span: Span | None = None  # the answer's span, ended by `end_trace`


def end_trace(timing: Timing, routed: RoutedStream, end: float, status: str) -> None:
    """The answer's span ends with its stages as measured (queued for the first token, then decoding), the first
    token as an event, and what it cost."""
    span = timing.span
    if span is None:
        return
    if timing.first_token is not None:
        if timing.prompt_done is not None:
            tracing.span_between("queue", span, timing.prompt_done, timing.first_token)
        span.add_event("first token", timestamp=tracing.wall_ns(timing.first_token))
        tracing.span_between("decode", span, timing.first_token, end)
    usage = routed.usage()
    tracing.end(
        span,
        None if status == "ok" else status,
        status=status,
        provider=routed.finisher,
        failovers=len(routed.failovers()),
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cost_usd=routed.cost_usd,
    )


def export_prometheus(timing: Timing, routed: RoutedStream, end: float, status: str, model: str, tenant: str) -> None:
    """Prometheus (through Ray's metrics agent): latencies, stages, tokens, outcomes, attempts, cost."""
    usage = routed.usage()
    provider = routed.finisher
    prom.inc("llmserve_requests_total", model=model, provider=provider, status=status, tenant=tenant)
    prom.observe("llmserve_e2e_seconds", end - timing.start, model=model, provider=provider, status=status)
    if provider == "cache":  # a response-cache hit: no queue or decode to measure (its TTFT is labelled cache)
        if timing.first_token is not None:
            prom.observe("llmserve_ttft_seconds", timing.first_token - timing.start, model=model, provider=provider)
        return
    prom.stage("retrieval", timing.retrieval_s)
    if timing.prompt_done is not None:
        prom.stage("prompt", timing.prompt_done - timing.start - timing.retrieval_s)
    if timing.first_token is not None:
        prom.observe("llmserve_ttft_seconds", timing.first_token - timing.start, model=model, provider=provider)
        if timing.prompt_done is not None:
            prom.stage("queue", timing.first_token - timing.prompt_done)
        prom.stage("decode", end - timing.first_token)
        if usage.completion_tokens > 1:
            tpot = (end - timing.first_token) / (usage.completion_tokens - 1)
            prom.observe("llmserve_tpot_seconds", tpot, model=model, provider=provider)
    for leg in routed.legs:
        labels = {"model": model, "provider": leg.provider, "tenant": tenant}
        if leg.usage is not None:
            prom.inc("llmserve_tokens_total", leg.usage.prompt_tokens, kind="prompt", **labels)
            prom.inc("llmserve_tokens_total", leg.usage.completion_tokens, kind="completion", **labels)
        prom.inc("llmserve_cost_usd_total", leg.cost_usd, **labels)
    for name, ok in routed.attempts:
        prom.inc("llmserve_provider_attempts_total", provider=name, outcome="ok" if ok else "error")
    for before, after in routed.failovers():
        prom.inc("llmserve_failovers_total", from_provider=before, to_provider=after)


def wandb_record(
    timing: Timing,
    routed: RoutedStream,
    end: float,
    status: str,
    rag_chunks: int,
    stream: bool,
    *,
    response_id: str,
    model: str,
    tenant: str,
    trace_id: str = "",
    request_id: str = "",
) -> dict[str, Any]:
    """One request's W&B row; `response_id` is the answer's id, as clients see it (`id`, GET .../{id});
    `trace_id` joins it to its trace."""
    usage = routed.usage()
    e2e = end - timing.start
    ttft = (timing.first_token - timing.start) if timing.first_token else None
    decode_s = (end - timing.first_token) if timing.first_token else 0.0
    return {
        "response_id": response_id,
        "trace_id": trace_id,
        "request_id": request_id,
        "model": model,
        "tenant": tenant,
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
        "provider": routed.finisher,
        "providers": "+".join(routed.providers),
        "failovers": len(routed.failovers()),
        "cost_usd": routed.cost_usd,
    }
