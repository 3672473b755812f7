"""Each request's latency and token counts reach the (offline) W&B run."""

import time
import uuid
from pathlib import Path

import pytest
from ray import serve

from observability.wandb_reader import history_rows, offline_run_files
from tests.integration.conftest import MODEL

pytestmark = pytest.mark.integration


def _wandb_row(stack, response_id: str) -> tuple[dict, Path]:
    """The W&B row of an answer, and the offline run file it is in."""
    orchestrator = serve.get_deployment_handle("Orchestrator", stack.settings.app_name)
    deadline = time.monotonic() + 60  # a writer that was just killed is back within seconds
    while not orchestrator.flush_metrics.remote().result(timeout_s=60):
        assert time.monotonic() < deadline, "the W&B writer never confirmed the rows"
        time.sleep(1)
    deadline = time.monotonic() + 90  # wandb-core writes behind by ~15 s
    while time.monotonic() < deadline:
        for run_file in offline_run_files(stack.settings.data_dir):
            for row in history_rows(run_file):
                if row.get("response_id") == response_id:  # a row joins to the answer the client got
                    return row, run_file
        time.sleep(2)
    raise AssertionError(f"no W&B row for {response_id}")


def _run_id(run_file: Path) -> str:
    return run_file.stem.removeprefix("run-")


def _ask(openai_client, words: str):
    request_id = f"wandb-{uuid.uuid4().hex[:12]}"
    raw = openai_client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": f"Say the word '{words}'."}],
        max_tokens=11,
        temperature=0,
        extra_body={"rag": False},
        extra_headers={"x-request-id": request_id},
    )
    return raw.parse(), raw.headers["x-llmserve-trace-id"], request_id


def test_request_metrics_reach_wandb(stack, openai_client):
    response, trace_id, request_id = _ask(openai_client, "metrics")
    completion_tokens = response.usage.completion_tokens
    match, _ = _wandb_row(stack, response.id)
    assert (match["prompt_tokens"], match["completion_tokens"]) == (response.usage.prompt_tokens, completion_tokens)
    assert 0 < match["ttft_s"] <= match["e2e_latency_s"]
    assert match["tokens_per_s"] > 0 and match["ok"] == 1
    assert (match["model"], match["tenant"], match["provider"]) == (MODEL, "admin", "self-hosted")
    assert (match["trace_id"], match["request_id"]) == (trace_id, request_id)  # joins to the trace and the logs


def test_one_wandb_run_per_deployment_survives_its_writer_being_killed(stack, openai_client):
    import ray

    from observability.wandb_runs import NAMESPACE, writer_name

    first, _, _ = _ask(openai_client, "first")
    _, first_file = _wandb_row(stack, first.id)
    writer = ray.get_actor(writer_name(stack.settings.app_name), namespace=NAMESPACE)
    runs = ray.get(writer.runs.remote())
    assert runs["orchestrator"] == _run_id(first_file)  # every orchestrator replica's rows go to one run
    ids = {_run_id(f) for f in offline_run_files(stack.settings.data_dir)}
    assert ids <= set(runs.values()), ids  # one run per deployment that records, no run per replica
    ray.kill(writer, no_restart=False)  # killed mid-way, as a crash would: Ray starts it again
    second, _, _ = _ask(openai_client, "second")
    _, second_file = _wandb_row(stack, second.id)
    assert _run_id(second_file) == runs["orchestrator"]  # the same run, resumed


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
