"""Each request's latency and token counts reach the (offline) W&B run."""

import time

import pytest
from ray import serve

from observability.wandb_reader import history_rows, offline_run_files
from tests.integration.conftest import MODEL

pytestmark = pytest.mark.integration


def test_request_metrics_reach_wandb(stack, openai_client):
    response = openai_client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say the word 'metrics'."}],
        max_tokens=11,
        temperature=0,
        extra_body={"rag": False},
    )
    completion_tokens = response.usage.completion_tokens
    orchestrator = serve.get_deployment_handle("Orchestrator", stack.settings.app_name)
    assert orchestrator.flush_metrics.remote().result(timeout_s=60)
    deadline = time.monotonic() + 90  # wandb-core writes behind by ~15 s
    match = None
    while match is None and time.monotonic() < deadline:
        for run_file in offline_run_files(stack.settings.data_dir):
            for row in history_rows(run_file):
                if row.get("response_id") == response.id:  # a row joins to the answer the client got
                    match = row
        time.sleep(2)
    assert match is not None, "no W&B row for the request"
    assert (match["prompt_tokens"], match["completion_tokens"]) == (response.usage.prompt_tokens, completion_tokens)
    assert 0 < match["ttft_s"] <= match["e2e_latency_s"]
    assert match["tokens_per_s"] > 0 and match["ok"] == 1
    assert (match["model"], match["tenant"], match["provider"]) == (MODEL, "admin", "self-hosted")


def test_prometheus_exposes_latency_histograms_stages_tokens_and_errors(stack, openai_client, http):
    import httpx

    openai_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, extra_body={"rag": False}
    )
    http.post("/v1/chat/completions", json={"model": MODEL})  # a 400, counted by type
    url = f"http://127.0.0.1:{stack.settings.metrics.export_port}/metrics"
    wanted = [
        "ray_llmserve_ttft_seconds_bucket{",
        "ray_llmserve_tpot_seconds_bucket{",
        "ray_llmserve_e2e_seconds_bucket{",
        'stage="queue"',
        'stage="admission"',
        'stage="decode"',
        "ray_llmserve_tokens_total{",
        'type="invalid_request_error"',
        'provider="self-hosted"',
    ]
    deadline = time.monotonic() + 60  # Ray's agent exports every few seconds
    while True:
        text = httpx.get(url, timeout=10).text
        missing = [w for w in wanted if w not in text]
        if not missing:
            break
        assert time.monotonic() < deadline, f"not exported: {missing}"
        time.sleep(2)
    ttft_count = [line for line in text.splitlines() if line.startswith("ray_llmserve_ttft_seconds_count{")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in ttft_count) >= 1
