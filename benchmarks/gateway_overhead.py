"""The gateway's own cost: the same fake engine called directly, through LiteLLM's proxy, and through our
ingress + orchestrator (auth and per-key limits on), in one run on one machine.

    python -m benchmarks.gateway_overhead --litellm /path/to/venv/bin/litellm \\
        --concurrency 1 --concurrency 8 --concurrency 32 --repeats 3 --out gateway.json

Two profiles by default: the one the options set (16-token answers from an engine with no wait: the gateway's
per-request cost), and a paced one, 64 streams offered 100 tokens/s each with 64-token answers and a 20 ms TTFT
(`--paced 64:100`; a GPU replica's pace, where the per-token cost shows).

Targets: `direct` (the fake OpenAI server, benchmarks/fake_engine.py), `litellm` (LiteLLM proxy, one worker,
master-key auth, in front of that server; skipped without --litellm), `llmserve` (HTTP -> Serve proxy ->
Ingress -> Orchestrator -> FakeLLMServer, a Serve deployment with LLMServer's handle interface and the same
script, called with an API key that has rpm/tpm/parallel/budget limits, so both Lua scripts run), once on
the ingress replica's own port (direct ingress, our default) and once through Serve's proxy (`llmserve-proxy`).
With `--serve-floor`, also Serve apps that only relay (`floor-1hop`, `floor-2hop`, `floor-http`, `floor-http2`:
benchmarks/serve_floor.py), Serve's own cost beside ours. Reported per target and concurrency: medians over
repeats of requests/s, TTFT and e2e p50/p99, and the latency added over `direct`. Targets run interleaved
within each repeat, so drift hits them alike.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.table import Table

from benchmarks.loadgen import median_of, run_level, summarize
from benchmarks.ports import free_port

MODEL = "fake"


def wait_http(url: str, timeout_s: float = 120.0, headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2, headers=headers).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer in {timeout_s} s")


def start_fake(port: int, ttft_ms: float, tokens_per_s: float) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "benchmarks.fake_engine", "--port", str(port), "--ttft-ms", str(ttft_ms)]
    proc = subprocess.Popen([*cmd, "--tokens-per-s", str(tokens_per_s)], cwd=Path(__file__).parent.parent)
    wait_http(f"http://127.0.0.1:{port}/v1/models")
    return proc


def start_litellm(litellm: str, port: int, upstream: str, master_key: str, workdir: Path) -> subprocess.Popen:
    config = workdir / "litellm.yaml"
    config.write_text(
        json.dumps(
            {
                "model_list": [
                    {
                        "model_name": MODEL,
                        "litellm_params": {"model": f"openai/{MODEL}", "api_base": upstream, "api_key": "none"},
                    }
                ],
                "general_settings": {"master_key": master_key},
            }
        )
    )
    log = open(workdir / "litellm.log", "w")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        [litellm, "--config", str(config), "--port", str(port), "--num_workers", "1"], stdout=log, stderr=log
    )
    wait_http(f"http://127.0.0.1:{port}/health/liveliness", timeout_s=180)
    return proc


def start_ours(
    port: int,
    ttft_ms: float,
    tokens_per_s: float,
    redis_url: str,
    workdir: Path,
    capacity: int = 1000,
    in_ingress: bool = False,
    ingress_replicas: int = 1,
    spare_ingress_ports: int = 0,
):
    from pydantic import SecretStr

    from benchmarks.fake_engine import FakeLLMServer
    from core.settings import Settings
    from serve_app.builder import compose
    from serve_app.runtime import start_local

    master = "sk-bench-" + uuid.uuid4().hex
    settings = Settings(
        app_name="gateway-bench",
        master_key=SecretStr(master),
        data_dir=workdir / "data",
        server={"port": port, "proxy_port": free_port(), "orchestrator_in_ingress": in_ingress},
        replicas={"ingress": ingress_replicas},
        state={
            "redis_url": redis_url,
            "redis_prefix": f"llmserve-bench-{uuid.uuid4().hex[:8]}",
            "response_cache": False,
        },
        engine={"served_model_name": MODEL},
        rag={"enabled": False},
        limits={"max_inflight_per_model": capacity},
    )
    fake = FakeLLMServer.bind(ttft_ms / 1000, tokens_per_s)
    stack = start_local(
        settings,
        say=lambda m: None,
        build=lambda s: compose(s, fake, model_source="fake"),
        spare_ingress_ports=spare_ingress_ports,
    )
    limits = {"name": "bench", "rpm": 10**6, "tpm": 10**9, "max_parallel": 1000, "budget_usd": 10**6}
    created = httpx.post(f"{stack.url}/admin/keys", json=limits, headers={"Authorization": f"Bearer {master}"})
    created.raise_for_status()
    return stack, created.json()["key"]


def start_floor(profile: Profile, ports: range, engine_url: str) -> dict[str, tuple[str, dict]]:
    """Deploy benchmarks/serve_floor.py's relay apps (their own fake engines; the HTTP relays call `engine_url`)
    into the running cluster, one by one; their ingress replicas take the spare direct-ingress `ports`. Returns
    the targets, by app name."""
    from ray import serve

    from benchmarks.fake_engine import FakeLLMServer
    from benchmarks.serve_floor import FLOOR_APPS, LIGHT, floor_app

    engine = FakeLLMServer.options(ray_actor_options=LIGHT).bind(profile.ttft_ms / 1000, profile.tokens_per_s)
    deployed: dict[str, str] = {}
    free = list(ports)
    for name in FLOOR_APPS:
        upstream = deployed["floor-http"] if name == "floor-http2" else engine_url
        app = floor_app(name, engine, upstream)
        serve.run(app, name=name, route_prefix=f"/{name}", logging_config={"enable_access_log": False})
        for port in free:
            url = f"http://127.0.0.1:{port}/{name}"  # on another app's port, this route is not found
            try:
                probe = httpx.post(f"{url}/v1/chat/completions", json=body(2), timeout=30)
            except httpx.ConnectError:  # nothing of Serve's listens there (yet)
                continue
            if probe.status_code != 404:
                probe.raise_for_status()
                deployed[name] = url
                free.remove(port)
                break
        else:
            raise RuntimeError(f"relay app {name} not found on ports {list(ports)}")
    return {name: (url, {}) for name, url in deployed.items()}


def body(tokens: int) -> dict:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say something."}],
        "max_tokens": tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


@dataclass(frozen=True)
class Profile:
    """One fake-engine script (tokens per answer, time to first token, tokens/s per stream; 0 = no wait) and the
    concurrency levels it runs at. Each profile gets its own fake engines and stack."""

    name: str
    levels: list[int]
    tokens: int
    ttft_ms: float
    tokens_per_s: float


def paced_profiles(paced: list[str], tokens: int, ttft_ms: float) -> list[Profile]:
    """`C:R` -> C streams offered R tokens/s each (a GPU replica's pace: the gateway's per-token cost shows);
    levels at the same R share one profile. `none` alone: no paced profile."""
    by_rate: dict[float, list[int]] = {}
    for spec in paced:
        if spec == "none":
            continue
        streams, _, rate = spec.partition(":")
        by_rate.setdefault(float(rate), []).append(int(streams))
    return [Profile(f"{rate:g} tok/s", levels, tokens, ttft_ms, rate) for rate, levels in by_rate.items()]


def run_profile(
    profile: Profile,
    requests: int,
    repeats: int,
    litellm: str,
    redis_url: str,
    console: Console,
    in_ingress: bool = False,
    ingress_replicas: int = 1,
    serve_floor: bool = False,
) -> dict[str, dict[int, dict]]:
    """Medians over repeats, per target and level. Targets run interleaved within each repeat, so drift hits
    them alike. `in_ingress`: our stack with server.orchestrator_in_ingress; with several ingress replicas the
    load goes to their ports in turn (direct ingress gives each its own). `serve_floor`: also the relay-only Serve
    apps of benchmarks/serve_floor.py, in the same cluster."""
    from benchmarks.serve_floor import FLOOR_APPS

    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    procs: list[subprocess.Popen] = []
    stack = None
    try:
        fake_port = free_port()
        procs.append(start_fake(fake_port, profile.ttft_ms, profile.tokens_per_s))
        targets = {"direct": (f"http://127.0.0.1:{fake_port}", {})}
        if litellm:
            port, key = free_port(), "sk-litellm-" + uuid.uuid4().hex
            procs.append(start_litellm(litellm, port, f"http://127.0.0.1:{fake_port}/v1", key, workdir))
            targets["litellm"] = (f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"})
        stack, key = start_ours(
            free_port(),
            profile.ttft_ms,
            profile.tokens_per_s,
            redis_url,
            workdir,
            in_ingress=in_ingress,
            ingress_replicas=ingress_replicas,
            spare_ingress_ports=len(FLOOR_APPS) if serve_floor else 0,
        )
        auth = {"Authorization": f"Bearer {key}"}
        port = stack.settings.server.port  # direct ingress: each ingress replica serves HTTP itself, on its port
        targets["llmserve"] = ([f"http://127.0.0.1:{port + i}" for i in range(ingress_replicas)], auth)
        targets["llmserve-proxy"] = (f"http://127.0.0.1:{stack.settings.server.proxy_port}", auth)  # via Serve's proxy
        if serve_floor:
            if not stack.settings.server.direct_ingress:
                raise RuntimeError("--serve-floor needs direct ingress (a cluster joined through RAY_ADDRESS has none)")
            spare = range(port + ingress_replicas, port + ingress_replicas + len(FLOOR_APPS))
            targets.update(start_floor(profile, spare, f"http://127.0.0.1:{fake_port}"))
        console.print(
            f"profile {profile.name}: targets {', '.join(targets)}; {profile.tokens}-token streams; "
            f"ttft {profile.ttft_ms} ms; {profile.tokens_per_s:g} tokens/s per stream (0: no wait)"
        )
        runs: dict[str, dict[int, list[dict]]] = {t: {c: [] for c in profile.levels} for t in targets}
        for url, headers in targets.values():  # warm-up: connections, imports, JIT-ish caches
            asyncio.run(run_level(url, headers, [body(profile.tokens)] * 20, 4))
        for repeat in range(repeats):
            for level in profile.levels:
                n = max(requests, 8 * level)
                for name, (url, headers) in targets.items():
                    records, wall = asyncio.run(run_level(url, headers, [body(profile.tokens)] * n, level))
                    runs[name][level].append(summarize(records, wall))
            console.print(f"{profile.name}: repeat {repeat + 1}/{repeats} done")
        return {t: {c: median_of(r) for c, r in by_level.items()} for t, by_level in runs.items()}
    finally:
        if stack is not None:
            stack.shutdown()
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)


def main(
    concurrency: Annotated[list[int] | None, typer.Option(help="Concurrency levels (default 1, 8, 32).")] = None,
    requests: Annotated[int, typer.Option(help="Requests per level: max(this, 8 x concurrency).")] = 100,
    repeats: int = 3,
    tokens: Annotated[int, typer.Option(help="Tokens per streamed answer.")] = 16,
    ttft_ms: Annotated[float, typer.Option(help="Fake engine time to first token.")] = 0.0,
    tokens_per_s: Annotated[float, typer.Option(help="Fake engine tokens/s per stream (0: no wait).")] = 0.0,
    paced: Annotated[
        list[str] | None,
        typer.Option(help="Paced levels STREAMS:TOKENS_PER_S, run after the others (default 64:100; none: skip)."),
    ] = None,
    paced_tokens: Annotated[int, typer.Option(help="Tokens per answer in the paced levels.")] = 64,
    paced_ttft_ms: Annotated[float, typer.Option(help="Time to first token in the paced levels.")] = 20.0,
    litellm: Annotated[str, typer.Option(help="Path of a `litellm` executable (the proxy extra of litellm).")] = "",
    redis_url: str = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    out: Annotated[str, typer.Option(help="Write the results as JSON here.")] = "",
    orchestrator_in_ingress: Annotated[
        bool, typer.Option(help="Our stack with server.orchestrator_in_ingress (answers run in the ingress).")
    ] = False,
    ingress_replicas: Annotated[int, typer.Option(help="Ingress replicas (direct ingress: one port each).")] = 1,
    serve_floor: Annotated[
        bool,
        typer.Option(
            help="Also Serve apps that only relay (benchmarks/serve_floor.py): Serve's own cost. Their 7 replicas "
            "idle beside the other targets, so those are not comparable with runs without it."
        ),
    ] = False,
) -> None:
    console = Console()
    profiles = [Profile("main", concurrency or [1, 8, 32], tokens, ttft_ms, tokens_per_s)]
    profiles += paced_profiles(["64:100"] if paced is None else paced, paced_tokens, paced_ttft_ms)
    results = {
        p.name: run_profile(
            p,
            requests,
            repeats,
            litellm,
            redis_url,
            console,
            in_ingress=orchestrator_in_ingress,
            ingress_replicas=ingress_replicas,
            serve_floor=serve_floor,
        )
        for p in profiles
    }

    columns = ["profile", "target", "c", "req/s", "tok/s", "tok/s vs direct", "TTFT p50", "TTFT p99"]
    table = Table(*columns, "added p50", "added p99", "TPOT p50", "e2e p50", "errors")
    for profile, result in results.items():
        for name, by_level in result.items():
            for level, m in by_level.items():
                base = result["direct"][level]
                table.add_row(
                    profile,
                    name,
                    str(level),
                    f"{m['req_per_s']:.1f}",
                    f"{m['output_tok_per_s']:.0f}",
                    f"{m['output_tok_per_s'] / max(base['output_tok_per_s'], 1e-9):.2f}",
                    f"{m['ttft_p50_ms']:.1f}",
                    f"{m['ttft_p99_ms']:.1f}",
                    f"{m['ttft_p50_ms'] - base['ttft_p50_ms']:+.1f}",
                    f"{m['ttft_p99_ms'] - base['ttft_p99_ms']:+.1f}",
                    f"{m['tpot_p50_ms']:.1f}",
                    f"{m['e2e_p50_ms']:.1f}",
                    f"{m['errors']:.0f}",
                )
    console.print(table)
    console.print("latencies in ms; medians over repeats; added and vs direct: against direct at the same level")
    if out:
        config = {p.name: {**asdict(p), "repeats": repeats} for p in profiles}
        Path(out).write_text(json.dumps({"config": config, "results": results}, indent=2))


if __name__ == "__main__":
    typer.run(main)
