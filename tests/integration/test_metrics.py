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
                if (
                    row.get("prompt_tokens") == response.usage.prompt_tokens
                    and row.get("completion_tokens") == completion_tokens
                ):
                    match = row
        time.sleep(2)
    assert match is not None, "no W&B row for the request"
    assert 0 < match["ttft_s"] <= match["e2e_latency_s"]
    assert match["tokens_per_s"] > 0 and match["ok"] == 1
