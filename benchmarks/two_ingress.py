"""Two ingress replicas behind HAProxy (deploy/haproxy.cfg): kill one under load, count refused requests.

Starts the app as `llmserve up` would with `replicas.ingress: 2` against a Redis of its own, puts HAProxy in
front with the documented config (its ports moved to free ones), then streams answers and, beside them, sends new
short requests one after another, each on a new connection, through HAProxy. Once the streams are flowing, the
newest ingress replica is SIGKILLed. Reported: new requests sent (half with an Idempotency-Key, half without) and
those that did not get a 200 (a refused connection counts), streams completed and stored once, resumes.

    python -m benchmarks.two_ingress            # needs haproxy on PATH (apt-get install haproxy)

It imports the chaos harness (benchmarks/chaos.py) and the test suite's server helpers, so run it from a checkout.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Annotated

import httpx
import typer

from benchmarks.chaos import MODEL, Chaos, console, run_role
from tests.services import free_port

CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "haproxy.cfg"


def haproxy_config(lb_port: int, ingress_port: int) -> str:
    """deploy/haproxy.cfg with HAProxy on `lb_port` and the replicas on `ingress_port`, +1, +2."""
    text = CONFIG.read_text().replace("bind 127.0.0.1:9000", f"bind 127.0.0.1:{lb_port}")
    return re.sub(r"127\.0\.0\.1:800(\d)", lambda m: f"127.0.0.1:{ingress_port + int(m.group(1))}", text)


async def probe(base: str, key: str, stop: asyncio.Event, outcomes: list[str], idempotent: bool) -> None:
    """New short requests one after another, each on a new connection, until `stop`; `idempotent`: each with an
    Idempotency-Key of its own (HAProxy may then send it again when the replica died holding it)."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "rag": False}
    while not stop.is_set():
        headers = {"Authorization": f"Bearer {key}"}
        if idempotent:
            headers["Idempotency-Key"] = uuid.uuid4().hex
        try:
            async with httpx.AsyncClient(timeout=30) as client:  # a fresh connection every time
                response = await client.post(f"{base}/v1/chat/completions", json=body, headers=headers)
            outcomes.append(
                "ok" if response.status_code == 200 else f"HTTP {response.status_code}: {response.text[:80]}"
            )
        except httpx.HTTPError as exc:
            outcomes.append(type(exc).__name__)
        await asyncio.sleep(0.05)


async def measure(chaos: Chaos, base: str, streams: int, max_tokens: int, probers: int) -> dict:
    stop = asyncio.Event()
    outcomes: dict[bool, list[str]] = {True: [], False: []}  # with an Idempotency-Key, without
    tasks = [
        asyncio.ensure_future(probe(base, chaos.key, stop, outcomes[i % 2 == 0], i % 2 == 0)) for i in range(probers)
    ]
    row = await run_role(chaos, base, "ingress", streams, max_tokens)
    await asyncio.sleep(5)  # and a little after the streams end, while the replacement starts
    stop.set()
    await asyncio.gather(*tasks)
    row["role"] = "ingress (1 of 2, via HAProxy)"
    for idempotent, name in ((True, "with_key"), (False, "without_key")):
        failed = [o for o in outcomes[idempotent] if o != "ok"]
        row[f"probes_{name}"] = len(outcomes[idempotent])
        row[f"failed_{name}"] = len(failed)
        row[f"errors_{name}"] = sorted(set(failed))
    return row


def main(
    streams: Annotated[int, typer.Option(help="Concurrent streamed answers.")] = 4,
    max_tokens: Annotated[int, typer.Option(help="Tokens per answer.")] = 64,
    probers: Annotated[int, typer.Option(help="Loops sending new short requests beside the streams.")] = 4,
    out: Annotated[Path, typer.Option(help="Where the row goes (JSON).")] = Path("two_ingress.json"),
) -> None:
    """Kill one of two ingress replicas behind HAProxy under load; print what was refused and what completed."""
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        raise typer.BadParameter("haproxy is not on PATH (apt-get install haproxy)")
    workdir = Path(tempfile.mkdtemp(prefix="two-ingress-"))
    chaos = Chaos(workdir, app_name="pair", overrides={"replicas": {"ingress": 2}})
    lb = None
    try:
        with console.status("Starting the stack with two ingress replicas ..."):
            direct = chaos.start()
        lb_port = free_port()
        config = workdir / "haproxy.cfg"
        config.write_text(haproxy_config(lb_port, chaos.settings.server.port))
        lb = subprocess.Popen([haproxy, "-db", "-f", str(config)], stdout=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{lb_port}"
        time.sleep(3)  # HAProxy's first health checks
        console.print(f"stack on {direct} and +1, HAProxy on {base}")
        row = asyncio.run(measure(chaos, base, streams, max_tokens, probers))
    finally:
        if lb is not None:
            lb.terminate()
            lb.wait(10)
        chaos.stop()
    out.write_text(json.dumps(row, indent=2))
    console.print(row)
    for name, label in (("with_key", "with an Idempotency-Key"), ("without_key", "without")):
        console.print(
            f"new requests {label}: {row[f'probes_{name}']}, not answered 200: {row[f'failed_{name}']} "
            f"{row[f'errors_{name}']}"
        )
    console.print(
        f"streams completed {row['completed']} of {row['streams']}, stored once and equal "
        f"{row['stored_once_equal']} of {row['streams']}, resumes {row['resumes']}"
    )


if __name__ == "__main__":
    typer.run(main)
