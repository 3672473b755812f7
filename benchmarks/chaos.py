"""Kill one process of the stack while answers stream, and see what is lost.

Starts the app as `llmserve up` would (its defaults) against a Redis of its own with AOF on (deploy/redis.conf),
then for each role: N concurrent streamed answers, each in a conversation; once the first stream has a few
tokens, that role's process is SIGKILLed (Redis: killed -9 and restarted on its AOF, or frozen with SIGSTOP).
A stream whose connection breaks or that gets an error event is resumed from the last event id it saw, when the
server offers that (`GET /v1/chat/completions/{id}?stream=true&starting_after=N`); a POST refused (503/429, after
its Retry-After) or broken before its first event is sent again with the same Idempotency-Key. A row reports:

  completed    streams that ended with a finish reason, as the client saw them
  stored       conversations whose stored assistant turn equals the client's text, stored once
  recovered    seconds from the kill until a new request was answered again

    python -m benchmarks.chaos                          # every role, 4 streams each, table + chaos.json
    python -m benchmarks.chaos --role orchestrator --streams 3

It imports the test suite's server helpers (tests/services.py), so run it from a checkout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import httpx
import psutil
import typer
from httpx_sse import aconnect_sse
from rich.console import Console
from rich.table import Table

from tests.services import RedisServer, free_port

console = Console()
ROLES = ("llm-replica", "engine-core", "orchestrator", "ingress", "redis-kill", "redis-freeze")
MODEL = "SmolLM2-135M-Instruct"
PROMPTS = [
    "Write three sentences about the sea.",
    "Describe a mountain village in three sentences.",
    "Explain in three sentences how bread is made.",
    "Tell a three-sentence story about a lighthouse.",
    "Describe autumn in a forest in three sentences.",
    "Explain in three sentences why the sky is blue.",
]


@dataclass
class StreamResult:
    conversation_id: str
    text: str = ""
    finished: bool = False
    response_id: str | None = None
    last_event_id: str | None = None
    resumes: int = 0
    retries: int = 0  # POSTs refused (503/429) or broken before their first event, sent again with their key
    errors: list[str] = field(default_factory=list)
    chunks: int = 0


async def stream_one(
    base: str, key: str, cid: str, prompt: str, max_tokens: int, deadline_s: float, progress: dict[str, int]
) -> StreamResult:
    """One streamed answer, resumed from its last event id whenever it breaks, until it finishes or time is up.
    A request refused before its answer began (503 or 429) is sent again after its Retry-After, as the openai SDK
    does, with the same Idempotency-Key (so a retry can never make a second answer).
    `progress[cid]` counts its chunks as they come."""
    result = StreamResult(cid)
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": f"chaos-{uuid.uuid4().hex}"}
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "conversation_id": cid,
        "rag": False,
    }
    deadline = time.monotonic() + deadline_s
    async with httpx.AsyncClient(timeout=httpx.Timeout(60, read=60)) as client:
        while not result.finished and time.monotonic() < deadline:
            if result.response_id is None:
                request = ("POST", f"{base}/v1/chat/completions", {"json": body})
            else:
                params = {"stream": "true", "starting_after": result.last_event_id or "0"}
                request = ("GET", f"{base}/v1/chat/completions/{result.response_id}", {"params": params})
                result.resumes += 1
            try:
                async with aconnect_sse(client, request[0], request[1], headers=headers, **request[2]) as source:
                    status = source.response.status_code
                    if status != 200:
                        result.errors.append(f"HTTP {status}")
                        if result.response_id is None and status in (429, 503):
                            result.retries += 1
                            await asyncio.sleep(min(float(source.response.headers.get("retry-after", 1)), 10))
                            continue
                        if result.response_id is None or status == 404:
                            return result  # nothing to resume from
                        await asyncio.sleep(1)
                        continue
                    async for event in source.aiter_sse():
                        if event.data == "[DONE]":
                            break
                        data = json.loads(event.data)
                        if "error" in data:
                            result.errors.append(data["error"].get("code", "error"))
                            break
                        result.response_id = data.get("id", result.response_id)
                        result.last_event_id = event.id or result.last_event_id
                        for choice in data.get("choices") or []:
                            result.text += (choice.get("delta") or {}).get("content") or ""
                            result.chunks += 1
                            result.finished |= choice.get("finish_reason") is not None
                        progress[cid] = result.chunks
            except (httpx.HTTPError, ValueError) as exc:
                result.errors.append(type(exc).__name__)
            if not result.finished:
                if result.response_id is None:
                    # Broken before its first event: the POST again, with the same Idempotency-Key, attaches to
                    # the answer the first one began (or begins it, if it never reached an orchestrator).
                    result.retries += 1
                elif result.last_event_id is None:
                    return result  # the server gives no way to resume: this answer is lost
                await asyncio.sleep(0.5)
    return result


def processes(fragment: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if fragment in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def kill_process(fragment: str, child_of: str | None = None) -> str:
    """SIGKILL the newest live process whose command line holds `fragment` (with `child_of`: a child of the
    newest process holding that; an engine's processes belong to the replica that started them)."""
    victims = processes(fragment)
    if child_of is not None:
        parents = sorted(processes(child_of), key=lambda p: p.create_time())
        if not parents:
            raise RuntimeError(f"no process matches {child_of!r}")
        children = {c.pid for c in parents[-1].children(recursive=True)}
        victims = [v for v in victims if v.pid in children]
    victims = [v for v in victims if v.status() != psutil.STATUS_ZOMBIE]
    if not victims:
        raise RuntimeError(f"no live process matches {fragment!r}")
    victim = max(victims, key=lambda p: p.create_time())
    memory = victim.memory_full_info()  # what the process held: RSS, and USS (its own pages, not shared ones)
    os.kill(victim.pid, signal.SIGKILL)
    return f"SIGKILL {victim.pid} ({fragment}; RSS {memory.rss >> 20} MiB, USS {memory.uss >> 20} MiB)"


class Chaos:
    """The stack under test and how to hurt each of its roles."""

    def __init__(
        self, workdir: Path, app_name: str = "chaos", fallback_url: str | None = None, overrides: dict | None = None
    ):
        from pydantic import SecretStr

        from core.settings import Settings

        self.redis = RedisServer(workdir / "redis").start()
        self.key = "sk-chaos-" + uuid.uuid4().hex
        self.app_name = app_name
        port = free_port()
        groups: dict = {
            "server": {"port": port, "proxy_port": free_port()},
            "state": {"redis_url": self.redis.url, "response_cache": False},  # every answer is generated
            "metrics": {"export_port": free_port(), "wandb_mode": "disabled"},
        }
        if fallback_url:
            groups["routing"] = {
                "providers": [
                    {"name": "self-hosted", "kind": "self_hosted"},
                    {"name": "fallback", "kind": "openai", "base_url": fallback_url, "models": {MODEL: "fake-model"}},
                ]
            }
        for group, fields in (overrides or {}).items():
            groups[group] = {**groups.get(group, {}), **fields}
        self.settings = Settings(app_name=app_name, master_key=SecretStr(self.key), data_dir=workdir / "data", **groups)
        self.stack = None

    def start(self) -> str:
        from serve_app.runtime import start_local

        self.stack = start_local(self.settings, say=lambda m: None)
        return self.stack.url

    def stop(self) -> None:
        if self.stack is not None:
            self.stack.shutdown()
        self.redis.stop()

    def hurt(self, role: str) -> Callable[[], str]:
        """What killing `role` does, as a function returning a description; Redis faults heal themselves."""
        app = self.app_name
        if role == "llm-replica":
            return lambda: kill_process(f"ServeReplica:{app}:LLM")
        if role == "engine-core":
            return lambda: kill_process("EngineCore", child_of=f"ServeReplica:{app}:LLM")
        if role == "orchestrator":
            return lambda: kill_process(f"ServeReplica:{app}:Orchestrator")
        if role == "ingress":
            return lambda: kill_process(f"ServeReplica:{app}:Ingress")
        if role == "redis-kill":

            def crash() -> str:
                self.redis.stop(kill=True)
                time.sleep(1.0)
                self.redis.start()  # same port and folder: it replays its AOF
                return "redis kill -9, restarted on its AOF after 1 s"

            return crash
        if role == "redis-freeze":

            def freeze() -> str:
                pid = self.redis.process.pid
                os.kill(pid, signal.SIGSTOP)
                time.sleep(15)
                os.kill(pid, signal.SIGCONT)
                return "redis frozen (SIGSTOP) for 15 s"

            return freeze
        raise ValueError(f"unknown role {role!r}; known: {', '.join(ROLES)}")


@contextlib.contextmanager
def chaos_stack(workdir: Path, overrides: dict | None = None) -> Iterator[tuple[Chaos, str]]:
    """A started `Chaos` stack and its URL, stopped afterwards (a test module's fixture)."""
    stack = Chaos(workdir, overrides=overrides)
    try:
        yield stack, stack.start()
    finally:
        stack.stop()


def answered(base: str, key: str) -> bool:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "rag": False}
    try:
        headers = {"Authorization": f"Bearer {key}"}
        response = httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers, timeout=10)
        return response.status_code == 200
    except httpx.HTTPError:
        return False


def wait_answering(base: str, key: str, since: float, limit_s: float = 300) -> float | None:
    while time.monotonic() - since < limit_s:
        if answered(base, key):
            return time.monotonic() - since
        time.sleep(0.5)
    return None


def stored_turn(base: str, key: str, cid: str) -> list[dict]:
    response = httpx.get(f"{base}/v1/conversations/{cid}", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    return response.json().get("messages", []) if response.status_code == 200 else []


async def run_role(
    chaos: Chaos, base: str, role: str, streams: int, max_tokens: int, after_chunks: int = 5, deadline_s: float = 240
) -> dict:
    key, hurt = chaos.key, chaos.hurt(role)
    cids = [f"chaos-{role}-{i}-{uuid.uuid4().hex[:6]}" for i in range(streams)]
    progress: dict[str, int] = {}
    tasks = [
        asyncio.ensure_future(stream_one(base, key, cid, PROMPTS[i % len(PROMPTS)], max_tokens, deadline_s, progress))
        for i, cid in enumerate(cids)
    ]
    loop = asyncio.get_running_loop()
    # The victim dies once answers are flowing (the first stream's first few chunks).
    started = time.monotonic()
    while time.monotonic() - started < 120 and not all(t.done() for t in tasks):
        if max(progress.values(), default=0) >= after_chunks:
            break
        await asyncio.sleep(0.05)
    killed_at = time.monotonic()
    what = await loop.run_in_executor(None, hurt)
    recovery = loop.run_in_executor(None, wait_answering, base, key, killed_at)
    results = await asyncio.gather(*tasks)
    recovered_s = await recovery
    stored_ok = 0
    for result in results:
        messages = await loop.run_in_executor(None, stored_turn, base, key, result.conversation_id)
        stored_ok += len(messages) == 2 and messages[-1] == {"role": "assistant", "content": result.text}
    return {
        "role": role,
        "what": what,
        "streams": streams,
        "completed": sum(r.finished for r in results),
        "stored_once_equal": stored_ok,
        "recovered_s": None if recovered_s is None else round(recovered_s, 1),
        "resumes": sum(r.resumes for r in results),
        "retries": sum(r.retries for r in results),
        "errors": sorted({e for r in results for e in r.errors}),
    }


def main(
    role: Annotated[
        list[str] | None, typer.Option(help=f"Roles to kill (repeat; default all: {', '.join(ROLES)}).")
    ] = None,
    streams: Annotated[int, typer.Option(help="Concurrent streamed answers per role.")] = 4,
    max_tokens: Annotated[int, typer.Option(help="Tokens per answer.")] = 64,
    fallback: Annotated[bool, typer.Option(help="Put a fake managed provider (real OpenAI protocol) behind.")] = False,
    out: Annotated[Path, typer.Option(help="Where the rows go (JSON).")] = Path("chaos.json"),
) -> None:
    """Kill each role under concurrent streams; print what completed, what was stored, and when it answered again."""
    roles = role or list(ROLES)
    workdir = Path(tempfile.mkdtemp(prefix="chaos-"))
    fake = None
    if fallback:
        from tests.fakes.managed_api import Script, serve_fake

        fake = serve_fake("openai", Script(text="The fallback continues the answer."))
    fallback_url = fake.__enter__().url if fake else None
    chaos = Chaos(workdir, fallback_url=fallback_url)
    rows = []
    try:
        with console.status("Starting the stack ..."):
            base = chaos.start()
        for name in roles:
            console.print(f"[bold]{name}[/]: {streams} streams, then the kill ...")
            row = asyncio.run(run_role(chaos, base, name, streams, max_tokens))
            rows.append(row)
            console.print(row)
            wait_answering(base, chaos.key, time.monotonic(), limit_s=300)  # settle before the next role
    finally:
        chaos.stop()
        if fake is not None:
            fake.__exit__(None, None, None)
    out.write_text(json.dumps(rows, indent=2))
    table = Table(
        "killed", "streams that completed", "turn stored once, equal", "answering again after", "resumes", "retries"
    )
    for r in rows:
        recovered = "never" if r["recovered_s"] is None else f"{r['recovered_s']} s"
        table.add_row(
            r["role"], f"{r['completed']} of {r['streams']}", f"{r['stored_once_equal']} of {r['streams']}",
            recovered, str(r["resumes"]), str(r["retries"]),
        )  # fmt: skip
    console.print(table)


if __name__ == "__main__":
    typer.run(main)
