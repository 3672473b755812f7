"""The OpenAI Batch API on the real stack, driven with the stock `openai` SDK: a round trip with the real
model, a worker killed through Ray mid-batch (every request answered exactly once, usage charged once),
malformed lines, cancel, per-key ownership, and batch work yielding to interactive traffic."""

import json
import threading
import time

import httpx
import openai
import pytest
import ray
from typer.testing import CliRunner

from serve_app.cli import app as cli
from tests.integration.conftest import MASTER_KEY, MODEL
from tests.integration.test_gateway import client_for, create_key

pytestmark = pytest.mark.integration


def request_line(custom_id: str, content: str, max_tokens: int = 8) -> str:
    body = {
        "model": MODEL,
        "temperature": 0,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": content}],
    }
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})


def submit(client: openai.OpenAI, lines: list[str]):
    uploaded = client.files.create(file=("requests.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")


def wait_for(client: openai.OpenAI, batch_id: str, statuses: tuple[str, ...], timeout_s: float = 240.0):
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}: {batch.request_counts}"
        time.sleep(0.5)


def lines_of(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines() if line.strip()]


def worker_replicas(app_name: str) -> list[str]:
    return [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == "serve" and a["name"].startswith(f"SERVE_REPLICA::{app_name}#BatchWorker")
    ]


def test_sdk_round_trip_with_the_real_model_and_malformed_lines_in_the_error_file(openai_client, base_url):
    questions = {f"q{i}": f"What is {i} plus {i}?" for i in range(6)}
    lines = [request_line(cid, text) for cid, text in questions.items()]
    lines += ["this is not json", json.dumps({"custom_id": "no-body", "method": "POST", "url": "/v1/chat/completions"})]
    batch = submit(openai_client, lines)
    assert batch.status in ("validating", "in_progress") and batch.request_counts.total == 8
    done = wait_for(openai_client, batch.id, ("completed", "failed"))
    assert done.status == "completed"  # two bad lines do not fail the batch
    assert (done.request_counts.completed, done.request_counts.failed) == (6, 2)
    assert done.completed_at >= done.in_progress_at >= done.created_at
    output = lines_of(openai_client, done.output_file_id)
    assert sorted(o["custom_id"] for o in output) == sorted(questions)
    for o in output:
        body = o["response"]["body"]
        assert o["response"]["status_code"] == 200 and o["error"] is None
        assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"]
        assert body["usage"]["completion_tokens"] <= 8
    errors = lines_of(openai_client, done.error_file_id)
    assert sorted(e["error"]["code"] for e in errors) == ["invalid_json", "invalid_request"]
    assert openai_client.files.retrieve(done.output_file_id).purpose == "batch_output"
    assert batch.id in [b.id for b in openai_client.batches.list(limit=100).data]
    args = ["batches", "--server", base_url, "--api-key", MASTER_KEY, "--limit", "100"]
    shown = CliRunner().invoke(cli, args, env={"COLUMNS": "300"})
    assert shown.exit_code == 0, shown.output
    row = next(r for r in shown.output.splitlines() if batch.id in r)
    assert "completed" in row and "8/8" in row
    assert "queue:" in shown.output  # the master key also sees the queue
    narrow = CliRunner().invoke(cli, [*args, "--ids"], env={"COLUMNS": "60"})  # ids whole, however narrow
    listed = next(line.split("\t") for line in narrow.output.splitlines() if line.startswith(batch.id))
    assert listed == [batch.id, "completed", done.output_file_id, done.error_file_id]


def test_a_worker_killed_mid_batch_loses_nothing_and_charges_once(base_url, stack):
    key = create_key(base_url, "--name", "batch-kill")
    client = client_for(base_url, key)
    total = 16
    batch = submit(client, [request_line(f"k{i}", f"Count from {i} to {i + 5}.", max_tokens=12) for i in range(total)])
    app_name = stack.settings.app_name
    deadline = time.monotonic() + 120
    while client.batches.retrieve(batch.id).request_counts.completed < 2:  # the worker is busy now
        assert time.monotonic() < deadline
        time.sleep(0.2)
    victims = worker_replicas(app_name)
    assert victims
    for victim in victims:
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    done = wait_for(client, batch.id, ("completed", "failed"), timeout_s=300)
    assert done.status == "completed"
    assert (done.request_counts.completed, done.request_counts.failed) == (total, 0)
    output = lines_of(client, done.output_file_id)
    assert sorted(o["custom_id"] for o in output) == sorted(f"k{i}" for i in range(total))  # each exactly once
    usage = httpx.get(f"{base_url}/v1/usage", headers={"Authorization": f"Bearer {key}"}).json()
    charged = sum(o["response"]["body"]["usage"]["completion_tokens"] for o in output)
    assert usage["requests"] == total and usage["completion_tokens"] == charged  # one charge per request
    assert set(worker_replicas(app_name)) - set(victims), "Serve did not replace the killed worker"


def test_cancel_stops_the_remaining_work(openai_client):
    total = 40
    batch = submit(openai_client, [request_line(f"c{i}", f"Write a line about {i}.", 24) for i in range(total)])
    deadline = time.monotonic() + 120
    while openai_client.batches.retrieve(batch.id).request_counts.completed < 1:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    cancelling = openai_client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = wait_for(openai_client, batch.id, ("cancelled",), timeout_s=120)
    completed = done.request_counts.completed
    assert 1 <= completed < total
    assert len(lines_of(openai_client, done.output_file_id)) == completed
    assert openai_client.batches.cancel(batch.id).status == "cancelled"  # cancelling twice is harmless
    finished = submit(openai_client, [request_line("one", "Hi.", 2)])
    wait_for(openai_client, finished.id, ("completed",))
    with pytest.raises(openai.BadRequestError, match="completed and cannot be cancelled"):
        openai_client.batches.cancel(finished.id)


def test_one_key_cannot_read_anothers_batch_or_files(base_url):
    alice = client_for(base_url, create_key(base_url, "--name", "alice-batch"))
    mallory = client_for(base_url, create_key(base_url, "--name", "mallory-batch"))
    batch = submit(alice, [request_line("a1", "Hi.", 2)])
    with pytest.raises(openai.NotFoundError):
        mallory.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        mallory.files.content(batch.input_file_id)
    with pytest.raises(openai.NotFoundError):
        mallory.batches.cancel(batch.id)
    assert batch.id not in [b.id for b in mallory.batches.list().data]
    done = wait_for(alice, batch.id, ("completed",))
    with pytest.raises(openai.NotFoundError):
        mallory.files.content(done.output_file_id)


def test_interactive_traffic_preempts_batch_work_which_is_redone_later(openai_client, http):
    total = 12
    batch = submit(openai_client, [request_line(f"y{i}", f"Tell a story about {i}.", 48) for i in range(total)])
    deadline = time.monotonic() + 120
    while http.get("/admin/batch-queue").json()["worker"]["inflight"] == 0:  # batch requests are generating
        assert time.monotonic() < deadline
        time.sleep(0.1)
    streaming = threading.Event()
    finished = threading.Event()

    def interactive():
        stream = openai_client.chat.completions.create(
            model=MODEL, max_tokens=160, stream=True, messages=[{"role": "user", "content": "Tell me a long story."}]
        )
        for _ in stream:
            streaming.set()
        finished.set()

    thread = threading.Thread(target=interactive)
    thread.start()
    assert streaming.wait(60)
    started = time.monotonic()
    # 48-token batch answers take seconds here; preempted, they stop within a few hundred milliseconds.
    while http.get("/admin/batch-queue").json()["worker"]["inflight"] > 0:
        assert time.monotonic() - started < 2.0, "batch requests kept running beside interactive traffic"
        time.sleep(0.1)
    before = openai_client.batches.retrieve(batch.id).request_counts.completed
    samples = []
    while not finished.is_set() and len(samples) < 8:
        worker = http.get("/admin/batch-queue").json()["worker"]
        samples.append((worker["inflight"], openai_client.batches.retrieve(batch.id).request_counts.completed))
        time.sleep(0.25)
    thread.join(120)
    assert samples and all(s == (0, before) for s in samples), samples  # nothing runs, nothing completes
    done = wait_for(openai_client, batch.id, ("completed",), timeout_s=240)
    output = lines_of(openai_client, done.output_file_id)
    assert sorted(o["custom_id"] for o in output) == sorted(f"y{i}" for i in range(total))  # redone, once each
    assert done.request_counts.failed == 0


def test_workers_scale_out_on_the_queue(openai_client, stack):
    app_name = stack.settings.app_name
    assert len(worker_replicas(app_name)) >= 1
    # Enough work that one worker cannot drain the queue before the autoscaler acts (60 requests of 16 tokens were
    # done by one worker first on a loaded machine); the rest is cancelled once the second worker is there.
    batch = submit(openai_client, [request_line(f"s{i}", f"Name a colour, {i}.", 32) for i in range(150)])
    deadline = time.monotonic() + 90  # metrics reach the controller every few seconds; upscale delay 10 s
    while len(worker_replicas(app_name)) < 2:
        assert time.monotonic() < deadline, "150 queued requests at 10 per replica did not add a worker"
        time.sleep(1.0)
    try:  # stop the rest of the work for the tests after this one
        openai_client.batches.cancel(batch.id)
    except openai.BadRequestError:  # the two workers finished all 60 first (seen on a fresh CI machine)
        assert openai_client.batches.retrieve(batch.id).status == "completed"
    wait_for(openai_client, batch.id, ("cancelled", "completed"), timeout_s=180)
