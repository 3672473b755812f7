"""Providers on the real stack: a model only the managed fallback serves, and the vLLM replica killed through
Ray in the middle of a stream, with the fallback continuing the answer invisibly."""

import json
import time
import uuid

import httpx
import pytest
import ray

from tests.integration.conftest import FALLBACK_CONTINUATION, FALLBACK_ONLY_MODEL, MASTER_KEY, MODEL

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}


def test_a_model_only_the_managed_provider_serves_is_routed_there_with_its_cost(http, openai_client, fallback):
    response = http.post(
        "/v1/chat/completions", json={"model": FALLBACK_ONLY_MODEL, "messages": [{"role": "user", "content": "Hi"}]}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == fallback.script.text
    assert body["provider"] == "fallback" and response.headers["x-llmserve-provider"] == "fallback"
    usage = body["usage"]
    expected = (usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 2.0) / 1e6
    assert body["cost_usd"] == pytest.approx(expected) and float(response.headers["x-llmserve-cost-usd"]) > 0
    assert FALLBACK_ONLY_MODEL in [m.id for m in openai_client.models.list().data]


def _llm_replicas(app_name):
    return [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == "serve" and a["name"].startswith(f"SERVE_REPLICA::{app_name}#LLM:")
    ]


def test_killing_the_vllm_replica_mid_stream_fails_over_without_repeating_text(base_url, http, stack, fallback):
    cid = f"failover-{uuid.uuid4().hex[:8]}"
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
        "max_tokens": 200,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "conversation_id": cid,
        "rag": False,
    }
    [victim] = _llm_replicas(stack.settings.app_name)
    seen_before = len(fallback.script.requests)
    text, providers, tokens = "", None, 0
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, headers=AUTH, timeout=300) as response:
        assert response.status_code == 200
        first_provider = response.headers["x-llmserve-provider"]
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            assert "error" not in chunk, chunk
            for choice in chunk.get("choices") or []:
                text += choice["delta"].get("content") or ""
                tokens += 1
            if chunk.get("usage"):
                providers = chunk["provider"]
            if tokens == 6:  # a few tokens in: kill the engine replica
                ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    assert first_provider == "self-hosted" and providers == "self-hosted+fallback"
    [(_, continued, _)] = fallback.script.requests[seen_before:]
    prefix = continued["messages"][-1]
    assert prefix["role"] == "assistant" and prefix["content"].strip()
    assert text == prefix["content"] + FALLBACK_CONTINUATION  # nothing repeated, nothing lost
    stored = http.get(f"/v1/conversations/{cid}").json()["messages"]
    assert stored[-1] == {"role": "assistant", "content": text}

    # Serve replaces the replica; wait until the engine answers again so later tests see SmolLM2.
    deadline = time.monotonic() + 300
    while True:
        alive = _llm_replicas(stack.settings.app_name)
        if alive and victim not in alive and http.get("/healthz").status_code == 200:
            probe = http.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 2})
            if probe.status_code == 200 and probe.json()["provider"] == "self-hosted":
                break
        assert time.monotonic() < deadline, "the vLLM replica did not come back"
        time.sleep(2)


def test_cost_reports_each_providers_measured_usage_and_the_break_even(base_url, http):
    import re

    from typer.testing import CliRunner

    from serve_app.cli import app as cli

    report = http.get("/admin/providers", params={"gpu_hour_usd": 1.0}).json()
    rows = {r["name"]: r for r in report["data"]}
    assert rows["self-hosted"]["usage"]["requests"] > 0 and rows["fallback"]["usage"]["requests"] > 0
    assert rows["self-hosted"]["usage"]["failures"] >= 1  # the replica killed mid-stream
    assert rows["self-hosted"]["usage"]["busy_s"] > 0
    fallback = rows["fallback"]["usage"]
    assert fallback["cost_usd"] == pytest.approx(
        (fallback["prompt_tokens"] * 1.0 + fallback["completion_tokens"] * 2.0) / 1e6
    )
    own = report["self_hosted"]
    assert own["tokens_per_s_busy"] > 0 and own["compared_with"] == "fallback"
    assert own["break_even_utilisation"] == pytest.approx(
        own["usd_per_mtok_full_use"] / rows["fallback"]["usd_per_mtok"]
    )
    result = CliRunner().invoke(cli, ["cost", "--server", base_url, "--master-key", MASTER_KEY, "--gpu-hour-usd", "1"])
    assert result.exit_code == 0, result.output
    assert re.search(r"cheaper than fallback above [0-9.]+ % utilisation", result.output)
    assert "$1/replica-hour (CPU)" in result.output and "GPU" not in result.output  # this stack runs on CPU
    assert http.get("/admin/providers", headers={"Authorization": "Bearer sk-nope"}).status_code == 401
