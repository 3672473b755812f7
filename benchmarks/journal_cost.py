"""What journaling answers costs: the same answers run with the journal on and off, in one run.

Each answer is a real AnswerRun (deployments/answer_run.py) with the real router, conversation store and limiter
against a Redis of its own (deploy/redis.conf: AOF everysec), and a scripted provider in place of the engine
(`--tokens-per-s` per stream: the pace decides how many chunks pile up per journal write). One follower reads
each answer, as the orchestrator's caller does. Journal off is how batch requests run (`Caller(journal=False)`):
commit and settle still happen, so the difference is the journal alone.

Per answer, medians over repeats, and the ratio on/off:
  cpu ms      this process's CPU time (the orchestrator's share of the cost)
  wall ms     from start to the last event followed
  redis cmds  commands Redis executed (INFO commandstats), and journal writes (XADD)
  bytes       the answer's journal in Redis (MEMORY USAGE of its stream and meta hash)

    python -m benchmarks.journal_cost                         # 16 concurrent answers of 64 tokens, 50 and 1000 tok/s
    python -m benchmarks.journal_cost --tokens-per-s 20 --concurrency 64 --coalesce-ms 0
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Annotated

import redis.asyncio as aioredis
import typer
from rich.console import Console
from rich.table import Table

from core.models import Caller, ChatRequest
from core.setting_groups import StateSettings
from core.tokens import TokenCounter
from deployments.answer_run import AnswerRun
from deployments.answer_turn import RunServices, Turn
from deployments.providers.base import GenerationParams
from deployments.providers.retry import RetryPolicy
from deployments.providers.router import ProviderRouter
from deployments.providers.routing import LoadStats, strategy
from state.api_keys import Limits
from state.conversations import ConversationStore
from state.journal import Journal
from state.limits import Limiter, Scope
from tests.fakes.scripted_provider import Scripted
from tests.services import RedisServer

console = Console()
TENANT, KEY = "bench", "k1"
PROMPT = [{"role": "user", "content": "Write a paragraph about the sea."}]


async def _commands(client: aioredis.Redis) -> tuple[int, int]:
    stats = await client.info("commandstats")
    total = sum(v["calls"] for v in stats.values())
    return total, stats.get("cmdstat_xadd", {}).get("calls", 0)


async def run_batch(
    client: aioredis.Redis, journaled: bool, concurrency: int, tokens: int, tokens_per_s: float, coalesce_ms: float
) -> dict[str, float]:
    """`concurrency` answers at once; per-answer CPU, wall, Redis commands, XADDs and journal bytes."""
    prefix = f"jbench-{uuid.uuid4().hex[:6]}"
    words = [f" w{i}" for i in range(tokens)]
    provider = Scripted(words, delay_s=1.0 / tokens_per_s)
    router = ProviderRouter([provider], strategy("ordered"), LoadStats(1000, 2.0), None, RetryPolicy(2, 0.01, 0.05), 60)
    journal = Journal(client, prefix, ttl_s=600)
    services = RunServices(
        router=router,
        journal=journal,
        conversations=ConversationStore(client, prefix, 3600),
        limiter=Limiter(client, prefix),
        tokens=TokenCounter(),
        finished=lambda *_: None,
        coalesce_s=coalesce_ms / 1000,
    )
    runs = []
    for i in range(concurrency):
        rid = f"chatcmpl-{i}"
        caller = Caller(tenant=TENANT, key_id=KEY, response_id=rid, reservation_id=f"r-{rid}", journal=journaled)
        request = ChatRequest(model="m", messages=PROMPT, conversation_id=f"c-{i}", max_tokens=tokens)
        await services.limiter.admit(Scope(TENANT, KEY, Limits(), Limits()), f"r-{rid}", 100, 0.01)
        turn = Turn(request, caller, rid, PROMPT, GenerationParams(max_tokens=tokens), [])
        if journaled:
            await journal.open(TENANT, rid, turn.record(), caller.model_dump())
        runs.append(AnswerRun(turn, services))

    async def follow(run: AnswerRun) -> int:
        return sum([len(batch) async for batch in run.follow(0)])

    commands_before, xadd_before = await _commands(client)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for run in runs:
        run.start(on_done=lambda _: None)
    events = await asyncio.gather(*(follow(r) for r in runs))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    commands_after, xadd_after = await _commands(client)
    assert all(n == tokens + 3 for n in events), events  # the role chunk, one per token, the finish, the usage
    stored = 0
    if journaled:
        for i in range(concurrency):
            base = f"{prefix}:t:{{{TENANT}}}:resp:chatcmpl-{i}"
            stored += (await client.memory_usage(base) or 0) + (await client.memory_usage(f"{base}:meta") or 0)
    return {
        "cpu_ms": 1000 * cpu / concurrency,
        "wall_ms": 1000 * wall,
        "redis_cmds": (commands_after - commands_before) / concurrency,
        "xadds": (xadd_after - xadd_before) / concurrency,
        "bytes": stored / concurrency,
    }


async def measure(
    concurrency: int, tokens: int, rates: list[float], repeats: int, url: str, coalesce_ms: float
) -> list[dict]:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    rows = []
    try:
        for rate in rates:
            samples: dict[bool, list[dict]] = {True: [], False: []}
            for _ in range(repeats):
                for journaled in (False, True):  # alternate, so drift hits both alike
                    samples[journaled].append(
                        await run_batch(client, journaled, concurrency, tokens, rate, coalesce_ms)
                    )
            median = {j: {k: statistics.median(s[k] for s in samples[j]) for k in samples[j][0]} for j in samples}
            rows.append({"tokens_per_s": rate, "off": median[False], "on": median[True]})
    finally:
        await client.aclose()
    return rows


def main(
    concurrency: Annotated[int, typer.Option(help="Answers at once.")] = 16,
    tokens: Annotated[int, typer.Option(help="Tokens per answer.")] = 64,
    tokens_per_s: Annotated[list[float] | None, typer.Option(help="Pace per stream (repeat).")] = None,
    repeats: Annotated[int, typer.Option(help="Repeats; medians are reported.")] = 5,
    coalesce_ms: Annotated[
        float, typer.Option(help="state.journal_coalesce_ms (its default: 10).")
    ] = StateSettings.model_fields["journal_coalesce_ms"].default,
) -> None:
    """Journal on against journal off, same answers, same run."""
    rates = tokens_per_s or [50.0, 1000.0]
    redis = RedisServer(Path(tempfile.mkdtemp(prefix="jbench-")) / "redis").start()
    try:
        rows = asyncio.run(measure(concurrency, tokens, rates, repeats, redis.url, coalesce_ms))
    finally:
        redis.stop()
    table = Table(
        "tok/s per stream", "CPU ms/answer off → on", "wall ms off → on", "Redis cmds/answer off → on",
        "journal writes/answer", "journal bytes/answer",
    )  # fmt: skip
    for r in rows:
        off, on = r["off"], r["on"]
        table.add_row(
            f"{r['tokens_per_s']:g}",
            f"{off['cpu_ms']:.2f} → {on['cpu_ms']:.2f} (x{on['cpu_ms'] / off['cpu_ms']:.2f})",
            f"{off['wall_ms']:.0f} → {on['wall_ms']:.0f} (x{on['wall_ms'] / off['wall_ms']:.2f})",
            f"{off['redis_cmds']:.1f} → {on['redis_cmds']:.1f}",
            f"{on['xadds']:.1f} for {tokens + 3} chunks",
            f"{on['bytes'] / 1024:.1f} KiB",
        )
    console.print(
        f"{concurrency} concurrent answers of {tokens} tokens, journal_coalesce_ms {coalesce_ms:g}, "
        f"medians of {repeats} repeats"
    )
    console.print(table)


if __name__ == "__main__":
    typer.run(main)
