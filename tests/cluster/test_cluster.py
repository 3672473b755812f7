"""The CPU twin `serve deploy`ed onto a two-node Ray cluster in network namespaces (deploy/netns_cluster.py):
replicas placed by custom resources, answers across nodes, Serve autoscaling the vLLM deployment 1 -> 2 -> 0,
the managed provider answering while the model scales from zero, and the worker node lost under streams and
back. The scenarios are benchmarks/cluster_run.py's; the tests run in this file's order (each starts where the
one before left the cluster). Needs root (`ip netns`)."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from benchmarks import cluster_run
from benchmarks.cluster_plot import log_to_wandb, plot
from deploy.netns_cluster import ROOT, NetnsCluster
from tests.fakes.managed_api import Script, serve_fake

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]
MANAGED_TEXT = " ".join(["The managed provider answers this, word by word."] * 4)
PLANET = "Zorvia is a small planet. The capital city of Zorvia is Quenlar."


@pytest.fixture(scope="module")
def cluster():
    workdir = Path(tempfile.mkdtemp(prefix="llmserve-cluster-test-"))
    # A prefix and subnet of its own: a user's cluster (llms, 10.77.0) may be up on the same machine.
    built = NetnsCluster(workdir, prefix="llmt", subnet="10.78.0", env={cluster_run.MANAGED_KEY_ENV: "sk-fake"})
    script = Script(text=MANAGED_TEXT, token_delay_s=0.02)
    try:
        built.create()
        with serve_fake("openai", script, host=built.bridge_ip) as managed:
            built.deploy(ROOT / "deploy" / "serve-cpu.yaml", cluster_run.app_args(managed.url))
            yield built
    finally:
        built.destroy()


def test_replicas_are_placed_by_resources_and_answer_chat_rag_and_conversations_across_nodes(cluster):
    head, worker = cluster.head.ip, cluster.node(cluster_run.WORKER).ip
    deployments = cluster.app()["deployments"]
    assert {d["status"] for d in deployments.values()} == {"HEALTHY"}
    placed = {name: {r["node_ip"] for r in d["replicas"]} for name, d in deployments.items()}
    assert placed[cluster_run.DEPLOYMENT] == {worker}  # the only node with the engine's resource
    assert {ip for name, ips in placed.items() if name != cluster_run.DEPLOYMENT for ip in ips} == {head}

    headers = {"Authorization": f"Bearer {cluster.master_key}"}
    ingest = httpx.post(
        f"{cluster.url}/v1/rag/documents",
        headers=headers,
        json={"collection": "planets", "documents": [{"source": "zorvia.md", "text": PLANET}]},
        timeout=60,
    )
    assert ingest.status_code == 200, ingest.text
    client = OpenAI(base_url=f"{cluster.url}/v1", api_key=cluster.master_key, max_retries=0, timeout=120)
    first = client.chat.completions.with_raw_response.create(
        model=cluster_run.MODEL,
        temperature=0,
        max_tokens=24,
        messages=[{"role": "user", "content": "What is the capital city of Zorvia?"}],
        extra_body={"rag": {"collection": "planets"}, "conversation_id": "across-1"},
    )
    assert first.headers["x-llmserve-provider"] == "self-hosted"  # the worker's replica, not the fallback
    reply = first.parse()
    assert reply.choices[0].message.content and reply.model_extra["citations"][0]["source"] == "zorvia.md"
    second = client.chat.completions.create(
        model=cluster_run.MODEL,
        max_tokens=16,
        messages=[{"role": "user", "content": "And how big is it?"}],
        extra_body={"conversation_id": "across-1"},
    )
    assert second.choices[0].message.content
    stored = httpx.get(f"{cluster.url}/v1/conversations/across-1", headers=headers, timeout=30).json()["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant", "user", "assistant"]
    # The state lives in the state node's Redis, across the bridge from the head.
    assert stored[1]["content"] == reply.choices[0].message.content


def test_load_over_one_replicas_target_adds_a_second_on_the_worker_and_its_end_scales_to_zero(cluster, tmp_path):
    worker = cluster.node(cluster_run.WORKER).ip
    recorder = asyncio.run(cluster_run.autoscaling(cluster))
    answers = recorder.load.answers
    assert answers and all(a.status == 200 and not a.error for a in answers), [a for a in answers if a.error][:3]
    assert (recorder.samples[0].running, recorder.samples[0].starting) == (1, 0)  # before the load told Serve
    starting = recorder.first(lambda s: s.starting >= 1)
    two = recorder.first(lambda s: s.running == 2)
    assert two is not None and two.nodes == [worker, worker], recorder.samples[-5:]
    # Serve decided for the load (6 streams over a target of 2 each): within its 2 s delay and a metrics push or
    # two, long before the replica was up.
    assert starting is not None and starting.t < 60 and starting.t < two.t, recorder.samples[:70]
    end = next(t for t, what in recorder.events if what == "load ends")
    scaled_down = next(t for t, what in recorder.events if what == "0 replicas")
    # Serve's downscale delay is 20 s; replicas stop a few seconds after it decides.
    assert 20 <= scaled_down - end <= 120, recorder.events
    png = plot(recorder, tmp_path / "autoscaling.png")
    run = log_to_wandb(recorder, png, tmp_path)
    assert png.stat().st_size > 10_000 and list(run.glob("*.wandb")), run


def test_at_zero_replicas_the_managed_provider_answers_while_the_model_wakes(cluster):
    assert not cluster_run.running(cluster)  # where the last test left it
    zero = asyncio.run(cluster_run.scale_from_zero(cluster))
    first = zero["first"]
    # Answered by the fallback at once, not after a cold start (a replica takes a minute or more here).
    assert first.status == 200 and first.provider == "managed" and first.ttft_s < 10, first
    assert first.text.strip() == MANAGED_TEXT
    assert zero["timeline"][-1][1] == "self-hosted answers again", zero["timeline"]
    assert cluster_run.running(cluster)


def test_losing_the_worker_node_mid_stream_fails_over_stores_each_turn_once_and_the_replica_comes_back(cluster):
    worker = cluster.node(cluster_run.WORKER).ip
    assert [r["node_ip"] for r in cluster_run.running(cluster)] == [worker]
    loss = asyncio.run(cluster_run.node_loss(cluster))
    cluster_run.print_timeline("node loss", loss["timeline"])
    for answer in loss["answers"]:
        assert answer.status == 200 and not answer.error and answer.finish_reason, answer
        assert answer.provider == "self-hosted"  # begun on the worker, finished by the managed provider
    waiting = loss["waiting"]
    killed = next(t for t, what in loss["timeline"] if "SIGKILLed" in what)
    # Nothing streamed yet when its replica went: answered by the managed provider, as soon as Serve stopped
    # listing the replica, not after the 30 s first-token timeout (and its retries).
    assert waiting.status == 200 and waiting.provider == "managed" and waiting.ended - killed < 20, waiting
    for cid, messages in loss["stored"].items():
        answer = [*loss["answers"], waiting][int(cid.split("-")[1])]
        assert [m["role"] for m in messages] == ["user", "assistant"], (cid, messages)
        assert messages[1]["content"] == answer.text  # the text the client saw, once
    assert loss["during"].status == 200 and loss["during"].provider == "managed"
    events = [what for _, what in loss["timeline"]]
    assert events[-2:] == [f"the replica runs on {cluster_run.WORKER} again", "self-hosted answers again"]
