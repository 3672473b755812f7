"""A schemathesis run against the app's own OpenAPI schema: valid and invalid requests for every operation,
with a fixed seed and a bounded number of examples, must never get a 5xx, and every error must be an
OpenAI-style body."""

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode

from tests.integration.conftest import MASTER_KEY, MODEL

pytestmark = pytest.mark.integration
EXAMPLES = {GenerationMode.POSITIVE: 15, GenerationMode.NEGATIVE: 10}  # per operation


def _bounded(case) -> None:
    """Keep generated work small on a 2-core CPU: a few tokens per answer, a few documents per ingest, and
    ingests kept out of the collections other tests read."""
    body = case.body
    if not isinstance(body, dict):
        return
    if case.path == "/v1/embeddings" and isinstance(body.get("model"), str):
        body["model"] = "all-MiniLM-L6-v2"
    if case.path in ("/v1/messages", "/v1/responses") and isinstance(body.get("model"), str):
        body["model"] = MODEL
    for field in ("max_output_tokens",):  # Responses: a few tokens, as for chat
        if isinstance(body.get(field), int) and not isinstance(body.get(field), bool):
            body[field] = min(body[field], 4) or 1
    if case.path == "/v1/messages" and isinstance(body.get("max_tokens"), int):
        body["max_tokens"] = min(body["max_tokens"], 4) or 1
    if case.path in ("/v1/chat/completions", "/v1/completions"):
        if isinstance(body.get("model"), str):
            body["model"] = MODEL  # a random model name would only ever meet the 404
        tokens = body.get("max_tokens")
        if tokens is None or (isinstance(tokens, int) and not isinstance(tokens, bool)):
            body["max_tokens"] = min(tokens or 4, 4)
    if case.path == "/v1/rag/documents":
        body["collection"] = "fuzz"
        if isinstance(body.get("documents"), list):
            body["documents"] = body["documents"][:3]


def _check(case, base_url: str, failures: list, seen: Counter) -> None:
    _bounded(case)
    response = case.call(base_url=base_url, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=120)
    seen[(case.method, case.path, response.status_code)] += 1
    if response.status_code >= 500:
        failures.append((case.method, case.path, case.body, response.status_code, response.text[:300]))
    elif response.status_code >= 400:
        error = response.json().get("error") or {}
        # Anthropic's Messages API answers in Anthropic's shape: {type: error, error: {type, message}}
        shape = {"message", "type"} if case.path == "/v1/messages" else {"message", "type", "param", "code"}
        if not shape <= set(error):
            failures.append((case.method, case.path, case.body, response.status_code, response.text[:300]))


def test_no_generated_request_gets_a_5xx_or_a_non_openai_error(base_url):
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    failures: list = []
    seen: Counter = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert any(op.path == "/v1/chat/completions" for op in operations)
    for operation in operations:
        for mode, examples in EXAMPLES.items():

            @settings(
                max_examples=examples,
                derandomize=True,  # a fixed seed: the same cases on every run
                database=None,
                deadline=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case):
                _check(case, base_url, failures, seen)

            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (an operation without parameters or body)
                assert mode is GenerationMode.NEGATIVE, operation.path
    print("\n[fuzz] " + ", ".join(f"{m} {p} -> {code}: {n}" for (m, p, code), n in sorted(seen.items())))
    assert sum(seen.values()) >= 100
    assert not failures, "\n".join(map(repr, failures[:10]))
