"""OpenTelemetry traces: one trace per request across ingress -> orchestrator -> retriever -> providers.

Each Serve replica calls `setup_tracing` once (its own process, its own service name). The W3C `traceparent`
goes between replicas in the `Caller` (and as an argument to the retriever), and to managed providers as an
HTTP header; an incoming `traceparent` is honoured by the ingress. Spans are always made, so trace ids reach
response headers, logs and W&B rows; they are exported (OTLP/HTTP, batched off the request path) only when an
endpoint is configured: `metrics.otlp_endpoint`, or OpenTelemetry's own `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`.
Without one, spans are not recorded (sampled out) unless the caller's traceparent says its trace is sampled: they
still carry ids, but cost a fraction of a recorded span on the per-request path, where nothing would read their
attributes or times, and the caller's sampling decision still goes on to what we call.

Spans that cross an `await` of another task or a `yield` are started and ended explicitly (never "current"
across a yield: a generator closed in another context could not restore it).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

logger = logging.getLogger(__name__)
_TRACER_NAME = "llmserve"
_configured: str | None = None
ENV_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
# The HTTP request's x-request-id, set by the ingress middleware for what the request's task calls.
REQUEST_ID: ContextVar[str | None] = ContextVar("llmserve_request_id", default=None)


def setup_tracing(service: str, otlp_endpoint: str | None, export_every_s: float = 1.0) -> None:
    """This process's tracer provider (once; a second call in the same process keeps the first)."""
    global _configured
    if _configured is not None:
        return
    trace.set_tracer_provider(make_provider(service, otlp_endpoint, export_every_s))
    _configured = service


def make_provider(service: str, otlp_endpoint: str | None, export_every_s: float = 1.0) -> TracerProvider:
    """A provider that exports to the endpoint; without one, its spans carry ids but are recorded only under a
    sampled parent."""
    exporter = _exporter(otlp_endpoint)
    provider = TracerProvider(
        resource=Resource.create({"service.name": service, "service.namespace": "llmserve"}),
        # None: OpenTelemetry's default (or OTEL_TRACES_SAMPLER). Without an exporter a trace is recorded only where
        # the caller's traceparent says it is sampled: its decision goes on to what we call.
        sampler=None if exporter is not None else ParentBased(ALWAYS_OFF),
    )
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=int(export_every_s * 1000)))
    return provider


def _exporter(otlp_endpoint: str | None):
    if not otlp_endpoint and not any(os.environ.get(name) for name in ENV_ENDPOINTS):
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    if otlp_endpoint:
        return OTLPSpanExporter(endpoint=otlp_endpoint.rstrip("/") + "/v1/traces", timeout=5)
    return OTLPSpanExporter(timeout=5)  # it reads those variables itself


@functools.cache
def tracer() -> trace.Tracer:
    """The module's tracer, made once (a proxy until `setup_tracing` sets the provider, then follows it)."""
    return trace.get_tracer(_TRACER_NAME)


# --- context between processes ---------------------------------------------------------------------
def context_of(traceparent: str | None) -> otel_context.Context | None:
    """The context a W3C traceparent names (None: a new trace)."""
    if not traceparent:
        return None
    return propagate.extract({"traceparent": traceparent})


def extract(headers: Mapping[str, str]) -> otel_context.Context:
    """The context of an incoming request's `traceparent` (and baggage) header."""
    return propagate.extract(headers)


def traceparent(span: Span | None = None) -> str | None:
    """The traceparent of `span` (default: the current one), or None when there is none."""
    carrier: dict[str, str] = {}
    ctx = trace.set_span_in_context(span) if span is not None else None
    propagate.inject(carrier, context=ctx)
    return carrier.get("traceparent")


def inject(headers: dict[str, str]) -> dict[str, str]:
    """`headers` with the current span's traceparent (for a call to a managed provider)."""
    propagate.inject(headers)
    return headers


def trace_id(span: Span | None = None) -> str:
    """The 32-hex trace id of `span` (default: the current one); '' when there is no valid span."""
    span_context = (span or trace.get_current_span()).get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else ""


# --- spans -------------------------------------------------------------------------------------------
@contextlib.contextmanager
def span(
    name: str, parent: otel_context.Context | None = None, kind: SpanKind = SpanKind.INTERNAL, **attributes: Any
) -> Iterator[Span]:
    """A span that is current for its block: use only where the block does not yield to a caller."""
    with tracer().start_as_current_span(name, context=parent, kind=kind, attributes=_attrs(attributes)) as current:
        yield current


def start(
    name: str, parent: otel_context.Context | Span | None = None, kind: SpanKind = SpanKind.INTERNAL, **attributes: Any
) -> Span:
    """A span ended by its owner (`end`), for work that crosses yields or tasks."""
    if isinstance(parent, Span):
        parent = trace.set_span_in_context(parent)
    return tracer().start_span(name, context=parent, kind=kind, attributes=_attrs(attributes))


def end(span_: Span, error: BaseException | str | None = None, **attributes: Any) -> None:
    span_.set_attributes(_attrs(attributes))
    if error is not None:
        span_.set_status(Status(StatusCode.ERROR, str(error)[:300]))
        if isinstance(error, BaseException):
            span_.record_exception(error)
    span_.end()


@contextlib.contextmanager
def current(span_: Span | None) -> Iterator[None]:
    """`span_` is current for a block without yields (so what it calls and the tasks it starts are children)."""
    if span_ is None:
        yield
        return
    token = otel_context.attach(trace.set_span_in_context(span_))
    try:
        yield
    finally:
        otel_context.detach(token)


def span_between(name: str, parent: Span, started: float, ended: float, **attributes: Any) -> None:
    """A finished span from two `time.perf_counter()` readings (stages measured as they happened)."""
    child = tracer().start_span(
        name, context=trace.set_span_in_context(parent), attributes=_attrs(attributes), start_time=wall_ns(started)
    )
    child.end(end_time=wall_ns(ended))


def wall_ns(perf: float) -> int:
    """The wall-clock time, in ns since the epoch, of a `time.perf_counter()` reading."""
    return time.time_ns() - int((time.perf_counter() - perf) * 1e9)


def _attrs(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {f"llmserve.{k}" if "." not in k else k: v for k, v in attributes.items() if v is not None}
