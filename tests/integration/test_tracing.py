"""One request is one trace across every hop: the client's traceparent is honoured, every stage is a span of
the right service under the right parent, the trace id is a response header, and a managed provider is sent
the provider attempt's traceparent. Spans are collected by a real OTLP/HTTP receiver process."""

import secrets
import time
import uuid

import httpx
import pytest

from tests.fakes.managed_api import Fault
from tests.integration.conftest import FALLBACK_ONLY_MODEL, MASTER_KEY, MODEL

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}


def traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def wait_for_spans(otlp, trace_id: str, names: set[str], timeout_s: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        spans = otlp.spans(trace_id)
        if names <= {s["name"] for s in spans} or time.monotonic() > deadline:
            return spans
        time.sleep(0.5)


def tree(spans: list[dict], root_parent: str) -> str:
    """The spans as an indented tree: service, name, duration."""
    children: dict[str, list[dict]] = {}
    for span in sorted(spans, key=lambda s: s["start_ns"]):
        children.setdefault(span["parent_span_id"], []).append(span)
    lines: list[str] = []

    def walk(parent: str, depth: int) -> None:
        for span in children.get(parent, []):
            ms = (span["end_ns"] - span["start_ns"]) / 1e6
            lines.append(f"{'  ' * depth}{span['service']}: {span['name']} ({ms:.1f} ms)")
            walk(span["span_id"], depth + 1)

    walk(root_parent, 0)
    return "\n".join(lines)


def test_a_streamed_rag_conversation_turn_is_one_trace_across_every_hop(base_url, otlp):
    trace_id, client_span, header = traceparent()
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 8,
        "temperature": 0,
        "stream": True,
        "conversation_id": f"traced-{uuid.uuid4().hex[:8]}",
        "rag": {"enabled": True},
    }
    headers = {**AUTH, "traceparent": header}
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, headers=headers, timeout=120) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["x-llmserve-trace-id"] == trace_id  # the client's trace, continued
        text = "".join(r.iter_text())
    assert "[DONE]" in text

    expected = {
        "POST /v1/chat/completions", "auth", "admission", "limits", "answer", "history", "retrieval",
        "retriever.retrieve", "embed", "chroma.query", "prompt", "provider.attempt", "queue", "decode", "commit",
    }  # fmt: skip
    spans = wait_for_spans(otlp, trace_id, expected)
    print("\n" + tree(spans, client_span))
    assert expected <= {s["name"] for s in spans}, f"missing {expected - {s['name'] for s in spans}}"
    by_name = {s["name"]: s for s in spans}

    def parent_of(name: str) -> str:
        parent = next((s for s in spans if s["span_id"] == by_name[name]["parent_span_id"]), None)
        return parent["name"] if parent else by_name[name]["parent_span_id"]

    server = by_name["POST /v1/chat/completions"]
    assert (server["service"], server["parent_span_id"]) == ("ingress", client_span)
    for name in ("auth", "admission", "limits", "answer"):
        assert parent_of(name) == "POST /v1/chat/completions", name
    for name in ("history", "retrieval", "prompt", "provider.attempt", "queue", "decode", "commit"):
        assert parent_of(name) == "answer", name
    assert parent_of("retriever.retrieve") == "retrieval"
    assert parent_of("embed") == parent_of("chroma.query") == "retriever.retrieve"
    services = {name: by_name[name]["service"] for name in ("answer", "retriever.retrieve", "auth")}
    assert services == {"answer": "orchestrator", "retriever.retrieve": "retriever", "auth": "ingress"}
    answer = by_name["answer"]
    assert answer["attributes"]["llmserve.status"] == "ok"
    assert answer["attributes"]["llmserve.provider"] == "self-hosted"
    assert answer["attributes"]["llmserve.completion_tokens"] > 0
    assert "first token" in answer["events"]
    attempt = by_name["provider.attempt"]["attributes"]
    assert (attempt["llmserve.provider"], attempt["llmserve.outcome"]) == ("self-hosted", "ok")
    # stages in order, inside the request's span
    assert by_name["queue"]["end_ns"] <= by_name["decode"]["start_ns"] + 1_000_000
    assert server["start_ns"] <= answer["start_ns"] and by_name["decode"]["end_ns"] <= server["end_ns"] + 5_000_000


def test_a_managed_provider_is_sent_the_attempt_span_and_its_retries_are_events(base_url, otlp, fallback):
    trace_id, client_span, header = traceparent()
    seen = len(fallback.script.requests)
    fallback.script.faults.append(Fault(status=503, retry_after="0"))  # the first try fails, the retry answers
    body = {"model": FALLBACK_ONLY_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    r = httpx.post(f"{base_url}/v1/chat/completions", json=body, headers={**AUTH, "traceparent": header}, timeout=120)
    assert r.status_code == 200, r.text
    assert r.headers["x-llmserve-trace-id"] == trace_id
    spans = wait_for_spans(otlp, trace_id, {"provider.attempt", "answer"})
    print("\n" + tree(spans, client_span))
    attempt = next(s for s in spans if s["name"] == "provider.attempt")
    assert attempt["attributes"]["llmserve.provider"] == "fallback"
    assert attempt["attributes"]["llmserve.outcome"] == "ok"
    assert "attempt failed" in attempt["events"]
    sent = [headers.get("traceparent", "") for _, _, headers in fallback.script.requests[seen:]]
    assert len(sent) == 2  # the failed try and its retry
    assert all(tp.split("-")[1:3] == [trace_id, attempt["span_id"]] for tp in sent), sent


def test_a_request_without_traceparent_starts_a_trace_and_errors_are_traced(base_url, otlp):
    r = httpx.post(
        f"{base_url}/v1/chat/completions",
        json={"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]},
        headers=AUTH,
        timeout=60,
    )
    assert r.status_code == 404
    trace_id = r.headers["x-llmserve-trace-id"]
    assert len(trace_id) == 32 and int(trace_id, 16) != 0
    spans = wait_for_spans(otlp, trace_id, {"POST /v1/chat/completions", "answer"})
    by_name = {s["name"]: s for s in spans}
    assert by_name["POST /v1/chat/completions"]["parent_span_id"] == ""  # a new trace
    assert by_name["answer"]["status"] == 2  # ERROR: the unknown model
