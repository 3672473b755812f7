"""Tracing helpers: span names are route templates (few, bounded), the trace id goes on the response, a
traceparent survives the trip through a string, stages measured with perf_counter land at the right wall time."""

import asyncio
import time

import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from deployments.middleware import _route_template, _with_trace_header
from observability import tracing


def test_span_names_are_route_templates_not_paths():
    app = FastAPI()

    @app.get("/v1/batches/{batch_id}")
    async def batch(batch_id: str) -> dict:
        return {}

    scope = {"type": "http", "method": "GET", "app": app, "root_path": ""}
    assert _route_template(scope, "/v1/batches/batch_123") == "/v1/batches/{batch_id}"
    assert _route_template(scope, "/v1/nothing/here/at/all") == "/v1/nothing"  # unmatched: bounded too


def test_the_trace_id_goes_on_the_response_start_only():
    sent = []

    async def send(message):
        sent.append(message)

    wrapped = _with_trace_header(send, "ab" * 16)
    asyncio.run(wrapped({"type": "http.response.start", "status": 200, "headers": [(b"a", b"b")]}))
    asyncio.run(wrapped({"type": "http.response.body", "body": b"x"}))
    assert sent[0]["headers"] == [(b"a", b"b"), (b"x-llmserve-trace-id", b"ab" * 16)]
    assert "headers" not in sent[1]


def test_traceparent_round_trip_and_stage_spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    tracer = provider.get_tracer("test")
    parent = tracer.start_span("answer", context=tracing.context_of(incoming))
    assert tracing.trace_id(parent) == "0af7651916cd43dd8448eb211c80319c"
    carried = tracing.traceparent(parent)  # what the Caller carries to another replica
    assert carried.split("-")[1:3] == [
        "0af7651916cd43dd8448eb211c80319c",
        format(parent.get_span_context().span_id, "016x"),
    ]
    assert tracing.context_of(None) is None
    started = time.perf_counter()
    before = time.time_ns()
    time.sleep(0.02)
    ended = time.perf_counter()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tracing, "tracer", lambda: tracer)  # the process's own provider is global
        tracing.span_between("decode", parent, started, ended)
    parent.end()
    [decode] = [s for s in exporter.get_finished_spans() if s.name == "decode"]
    assert decode.parent.span_id == parent.get_span_context().span_id
    assert abs(decode.start_time - before) < 5_000_000  # within 5 ms of when it began
    assert 15_000_000 <= decode.end_time - decode.start_time < 200_000_000


def test_without_an_exporter_spans_carry_ids_but_are_not_recorded(monkeypatch):
    for name in tracing.ENV_ENDPOINTS:
        monkeypatch.delenv(name, raising=False)
    trace_hex = "0af7651916cd43dd8448eb211c80319c"
    quiet = tracing.make_provider("ingress", None).get_tracer("test")
    root = quiet.start_span("root")
    unsampled = quiet.start_span("child", context=tracing.context_of(f"00-{trace_hex}-b7ad6b7169203331-00"))
    sampled = quiet.start_span("child", context=tracing.context_of(f"00-{trace_hex}-b7ad6b7169203331-01"))
    assert not root.is_recording() and not unsampled.is_recording()
    assert len(tracing.trace_id(root)) == 32 and tracing.trace_id(root) != "0" * 32  # the response header's id
    assert tracing.trace_id(unsampled) == tracing.trace_id(sampled) == trace_hex  # the caller's trace goes on
    assert tracing.traceparent(unsampled).endswith("-00")
    # A caller that samples its trace keeps it sampled through us: what we call sees its decision.
    assert sampled.is_recording() and tracing.traceparent(sampled).endswith("-01")

    exported = tracing.make_provider("ingress", "http://127.0.0.1:9").get_tracer("test")
    assert exported.start_span("root").is_recording()  # with an endpoint, spans are recorded
