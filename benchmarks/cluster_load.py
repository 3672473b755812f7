"""Streaming load against a live deployment, seen from the client, and a recorder that samples it with Serve's
replica counts once a second: what benchmarks/cluster_run.py plots (replicas, requests waiting for their first
token, TTFT, streamed chunks per second) and the cluster tests assert on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx


@dataclass
class Answer:
    """One streamed chat answer as the client saw it (times in seconds since the load's clock started)."""

    started: float
    status: int = 0
    provider: str = ""  # x-llmserve-provider: who streamed its first token
    first_token: float | None = None
    ended: float | None = None
    text: str = ""
    chunks: int = 0
    finish_reason: str | None = None
    error: str = ""

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.started


@dataclass
class Load:
    """Streams chat answers from `url` (an OpenAI-compatible /v1 base) with `key`; keeps every answer."""

    url: str
    key: str
    model: str
    max_tokens: int = 48
    clock: float = field(default_factory=time.monotonic)
    answers: list[Answer] = field(default_factory=list)
    chunks: int = 0  # content chunks streamed so far, all answers

    def now(self) -> float:
        return time.monotonic() - self.clock

    async def ask(self, client: httpx.AsyncClient, question: str, **extra: Any) -> Answer:
        answer = Answer(started=self.now())
        self.answers.append(answer)
        body = {"model": self.model, "stream": True, "max_tokens": self.max_tokens, "temperature": 0.8}
        body |= {"messages": [{"role": "user", "content": question}], **extra}
        try:
            async with client.stream("POST", f"{self.url}/chat/completions", json=body) as response:
                answer.status = response.status_code
                answer.provider = response.headers.get("x-llmserve-provider", "")
                if response.status_code != 200:
                    answer.error = (await response.aread()).decode()[:300]
                    return answer
                async for line in response.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    for choice in json.loads(line[6:]).get("choices") or []:
                        text = (choice.get("delta") or {}).get("content") or ""
                        if text:
                            answer.first_token = answer.first_token or self.now()
                            answer.text += text
                            answer.chunks += 1
                            self.chunks += 1
                        answer.finish_reason = choice.get("finish_reason") or answer.finish_reason
        except httpx.HTTPError as exc:
            answer.error = f"{type(exc).__name__}: {exc}"
        finally:
            answer.ended = self.now()
        return answer

    def client(self) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.key}"}
        return httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(300, connect=10))

    async def closed_loop(self, concurrency: int, until: Callable[[], bool]) -> None:
        """`concurrency` streams, each asking again as soon as it is answered, until `until()`."""
        async with self.client() as client:

            async def stream(n: int) -> None:
                i = 0
                while not until():
                    i += 1
                    await self.ask(client, f"Tell me a short story about a lighthouse, number {n}.{i}.")

            await asyncio.gather(*(stream(n) for n in range(concurrency)))

    def in_flight(self) -> int:
        return sum(1 for a in self.answers if a.ended is None)

    def waiting(self) -> int:
        """Requests sent whose first token has not come: queued somewhere between us and an engine."""
        return sum(1 for a in self.answers if a.ended is None and a.first_token is None)


@dataclass
class Sample:
    t: float
    running: int  # the deployment's RUNNING replicas (Serve's REST API)
    starting: int  # its replicas on their way up (STARTING, UPDATING, RECOVERING)
    in_flight: int
    waiting: int
    ttft_p50_s: float | None  # of the first tokens that came in this sample's second
    chunks_per_s: float
    nodes: list[str] = field(default_factory=list)  # the node IP of each running replica


class Recorder:
    """Samples `replicas()` (a deployment's replicas as Serve's REST API reports them) and the load, every
    `period_s`, until stopped."""

    def __init__(self, load: Load, replicas: Callable[[], list[dict[str, Any]]], period_s: float = 1.0):
        self.load, self.replicas, self.period_s = load, replicas, period_s
        self.samples: list[Sample] = []
        self.events: list[tuple[float, str]] = []
        self._stop = asyncio.Event()

    def mark(self, what: str) -> float:
        t = self.load.now()
        self.events.append((round(t, 1), what))
        return t

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        last_t, last_chunks = self.load.now(), self.load.chunks
        while not self._stop.is_set():
            try:
                replicas = await asyncio.to_thread(self.replicas)
            except (httpx.HTTPError, KeyError, ValueError):  # the dashboard was busy: no replica count this second
                replicas = None
            t, chunks = self.load.now(), self.load.chunks
            firsts = [a.ttft_s for a in self.load.answers if a.first_token is not None and a.first_token > last_t]
            if replicas is not None:
                running = [r for r in replicas if r["state"] == "RUNNING"]
                self.samples.append(
                    Sample(
                        t=round(t, 2),
                        running=len(running),
                        starting=sum(1 for r in replicas if r["state"] in ("STARTING", "UPDATING", "RECOVERING")),
                        in_flight=self.load.in_flight(),
                        waiting=self.load.waiting(),
                        ttft_p50_s=round(statistics.median(firsts), 3) if firsts else None,
                        chunks_per_s=round((chunks - last_chunks) / max(t - last_t, 1e-6), 1),
                        nodes=sorted(r.get("node_ip") or "" for r in running),
                    )
                )
            last_t, last_chunks = t, chunks
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.period_s)

    def first(self, check: Callable[[Sample], bool]) -> Sample | None:
        return next((s for s in self.samples if check(s)), None)

    def as_dict(self) -> dict[str, Any]:
        return {"samples": [asdict(s) for s in self.samples], "events": self.events}


async def wait_for(check: Callable[[], Any], timeout_s: float, what: str, period_s: float = 1.0) -> float:
    """Poll `check` (run in a thread: it may call the dashboard) until true; how long it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            if await asyncio.to_thread(check):
                return time.monotonic() - started
        except (httpx.HTTPError, KeyError, ValueError):  # the dashboard did not answer, or not fully yet
            pass
        await asyncio.sleep(period_s)
    raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
