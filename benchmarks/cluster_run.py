"""The app on a multi-node Ray cluster (deploy/netns_cluster.py: a head and a worker in network namespaces),
seen doing what a cluster is for. Three scenarios, in this order (each leaves the next its starting point):

1. autoscaling: load over one vLLM replica's target makes Serve add a second (on the worker, the only node with
   the engine's resource); the load's end removes them after the downscale delay, down to zero;
2. scale from zero: at zero replicas the first request is answered by the managed provider at once while the
   model is woken; once its replica runs, self-hosted answers again;
3. node loss: every process of the worker is SIGKILLed under concurrent streams; they finish on the managed
   provider, each turn stored once; the worker comes back and Serve places the replica there again.

    sudo .venv/bin/python -m benchmarks.cluster_run      # ~10 min here; writes PNG, JSON and a W&B run

The managed provider is a local fake speaking OpenAI's protocol (tests/fakes/managed_api.py) on the bridge.
tests/cluster/ runs the same scenarios and asserts on them.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from benchmarks.cluster_load import Load, Recorder, wait_for
from deploy.netns_cluster import ROOT, NetnsCluster

MODEL = "SmolLM2-135M-Instruct"
DEPLOYMENT = f"LLM:{MODEL}"
WORKER = "worker1"
MANAGED_KEY_ENV = "CLUSTER_MANAGED_API_KEY"


def app_args(managed_url: str) -> dict[str, Any]:
    """The CPU twin's arguments for these scenarios: scale between 0 and 2 replicas on a target of 2 requests
    each, quickly (2 s up, 20 s down); the managed provider behind the self-hosted one."""
    engine = {"min_replicas": 0, "max_replicas": 2, "target_ongoing_requests": 2, "max_ongoing_requests": 8}
    engine |= {"upscale_delay_s": 2, "downscale_delay_s": 20}
    managed = {"name": "managed", "kind": "openai", "base_url": managed_url, "api_key_env": MANAGED_KEY_ENV}
    managed |= {"price_input_per_mtok": 0.5, "price_output_per_mtok": 2.0, "first_token_timeout_s": 20}
    providers = [{"name": "self-hosted", "kind": "self_hosted"}, managed]
    return {"engine": engine, "routing": {"strategy": "ordered", "providers": providers}}


def running(cluster: NetnsCluster) -> list[dict[str, Any]]:
    return [r for r in cluster.replicas(DEPLOYMENT) if r["state"] == "RUNNING"]


def new_load(cluster: NetnsCluster, max_tokens: int = 48) -> Load:
    return Load(f"{cluster.url}/v1", cluster.master_key, MODEL, max_tokens=max_tokens)


async def autoscaling(cluster: NetnsCluster, concurrency: int = 6, hold_s: float = 20) -> Recorder:
    """Load until Serve runs a second replica, `hold_s` more, then none until it scaled down to zero."""
    load = new_load(cluster)
    recorder = Recorder(load, lambda: cluster.replicas(DEPLOYMENT))
    sampling = asyncio.create_task(recorder.run())
    done = asyncio.Event()
    recorder.mark(f"load starts: {concurrency} streams")
    loading = asyncio.create_task(load.closed_loop(concurrency, done.is_set))
    try:
        await wait_for(lambda: len(running(cluster)) >= 2, 420, "a second replica")
        recorder.mark("2 replicas running")
        await asyncio.sleep(hold_s)
        done.set()
        await loading
        recorder.mark("load ends")
        await wait_for(lambda: not cluster.replicas(DEPLOYMENT), 240, "scaling down to zero")
        recorder.mark("0 replicas")
    finally:
        done.set()
        recorder.stop()
        await asyncio.gather(sampling, loading, return_exceptions=True)
    return recorder


async def scale_from_zero(cluster: NetnsCluster) -> dict[str, Any]:
    """From zero replicas: the first answer's provider and TTFT, then asks every 2 s until self-hosted answers."""
    load = new_load(cluster, max_tokens=16)
    timeline: list[tuple[float, str]] = []
    async with load.client() as client:
        first = await load.ask(client, "Say hello.")
        timeline.append((round(first.ended or 0, 1), f"first answer from {first.provider}"))
        replica_up = None
        while load.now() < 420:
            if replica_up is None and await asyncio.to_thread(running, cluster):
                replica_up = load.now()
                timeline.append((round(replica_up, 1), "replica running"))
            answer = await load.ask(client, "Say hello again.")
            if answer.provider == "self-hosted":
                timeline.append((round(answer.ended or 0, 1), "self-hosted answers again"))
                break
            await asyncio.sleep(2)
    return {"first": first, "answers": load.answers, "timeline": timeline}


async def node_loss(cluster: NetnsCluster, streams: int = 4) -> dict[str, Any]:
    """Concurrent streams on the worker's replica (and one more still waiting for its first token); the worker's
    every process SIGKILLed mid-answer; the streams' fate, each conversation as stored, and when each part of the
    cluster noticed and came back."""
    load = new_load(cluster, max_tokens=96)
    recorder = Recorder(load, lambda: cluster.replicas(DEPLOYMENT))
    worker_ip = cluster.node(WORKER).ip
    async with load.client() as client:
        asks = [
            asyncio.create_task(
                load.ask(client, f"Describe a harbour at dawn, story {i}.", conversation_id=f"loss-{i}")
            )
            for i in range(streams)
        ]
        await wait_for(lambda: len(load.answers) == streams and all(a.chunks >= 3 for a in load.answers), 180, "chunks")
        # One more, sent just before the kill: it is still waiting for its first token when the replica goes.
        asks.append(asyncio.create_task(load.ask(client, "Name three harbours.", conversation_id=f"loss-{streams}")))
        await wait_for(lambda: len(load.answers) == streams + 1, 10, "the last request", 0.01)
        recorder.mark(f"{WORKER}: every process SIGKILLed, {sum(a.chunks for a in load.answers)} chunks streamed")
        await asyncio.to_thread(cluster.kill_node, WORKER)

        async def noticed(check, what: str) -> None:
            await wait_for(check, 180, what, 0.5)
            recorder.mark(what)

        watched = [
            asyncio.create_task(noticed(lambda: not cluster.node_alive(worker_ip), "Ray marks the worker node dead")),
            asyncio.create_task(noticed(lambda: not running(cluster), "Serve no longer lists the replica as running")),
        ]
        for finished in asyncio.as_completed(asks):
            answer = await finished
            recorder.mark(f"a stream ends: {answer.status}, finish {answer.finish_reason}, {answer.chunks} chunks")
        await asyncio.gather(*watched)
        during = await load.ask(client, "Say hello.")
        recorder.mark(f"a new request while the worker is down: answered by {during.provider}")
        await asyncio.to_thread(cluster.start_node, WORKER)
        recorder.mark(f"{WORKER} rejoined the cluster")
        await wait_for(lambda: any(r.get("node_ip") == worker_ip for r in running(cluster)), 420, "the replica back")
        recorder.mark(f"the replica runs on {WORKER} again")
        while load.now() < 900:
            again = await load.ask(client, "Say hello again.")
            if again.provider == "self-hosted":
                recorder.mark("self-hosted answers again")
                break
            await asyncio.sleep(2)
        stored = {}
        for i in range(streams + 1):
            reply = await client.get(f"{cluster.url}/v1/conversations/loss-{i}")
            stored[f"loss-{i}"] = reply.json().get("messages") if reply.status_code == 200 else reply.status_code
    return {
        "answers": load.answers[:streams],
        "waiting": load.answers[streams],  # no first token yet when the node died
        "during": during,
        "stored": stored,
        "timeline": recorder.events,
    }


def print_timeline(title: str, timeline: list[tuple[float, str]]) -> None:
    table = Table(title=title)
    table.add_column("t (s)", justify="right")
    table.add_column("what happened")
    for t, what in timeline:
        table.add_row(f"{t:.1f}", what)
    Console().print(table)


cli = typer.Typer(add_completion=False)


WORKDIR = typer.Option(None, help="Default: a new temporary folder.")


@cli.command()
def main(workdir: Path = WORKDIR, keep: bool = False) -> None:
    """Build the cluster, deploy, run the three scenarios, write autoscaling.png, timelines.json, a W&B run."""
    from benchmarks.cluster_plot import log_to_wandb, plot
    from tests.fakes.managed_api import Script, serve_fake

    workdir = workdir or Path(tempfile.mkdtemp(prefix="llmserve-cluster-"))
    cluster = NetnsCluster(workdir, env={MANAGED_KEY_ENV: "sk-fake"})
    script = Script(text=" ".join(["The managed provider answers this, word by word."] * 4), token_delay_s=0.02)
    try:
        cluster.create()
        with serve_fake("openai", script, host=cluster.bridge_ip) as managed:
            cluster.deploy(ROOT / "deploy" / "serve-cpu.yaml", app_args(managed.url))
            recorder = asyncio.run(autoscaling(cluster))
            png = plot(recorder, workdir / "autoscaling.png")
            log_to_wandb(recorder, png, workdir)
            print_timeline("autoscaling", recorder.events)
            zero = asyncio.run(scale_from_zero(cluster))
            print_timeline("scale from zero", zero["timeline"])
            loss = asyncio.run(node_loss(cluster))
            print_timeline("node loss", loss["timeline"])
            out = {"autoscaling": recorder.as_dict(), "zero": zero["timeline"], "node_loss": loss["timeline"]}
            (workdir / "timelines.json").write_text(json.dumps(out, indent=1))
            typer.echo(f"written: {png}, {workdir / 'timelines.json'}")
    except httpx.HTTPError as exc:
        typer.echo(f"the cluster did not answer: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        if not keep:
            cluster.destroy()


if __name__ == "__main__":
    cli()
