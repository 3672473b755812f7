"""A day of traffic, time compressed, against four ways of paying for it: cost and TTFT SLO attainment.

    .venv/bin/python -m benchmarks.scale_or_spill --seed 7 --out scale_or_spill.json --plot scale_or_spill.png

The trace: requests per second over 24 h (a quiet night, a working day, a one-hour peak in the afternoon), Poisson
arrivals from a fixed seed, so the numbers repeat exactly. The engines: each replica delivers the output tokens/s
and the TTFT measured on the real engine (defaults: bare vLLM with SmolLM2 on this machine's CPU, README's
`llmserve bench --compare` table, c=8 median 52.8 tok/s, TTFT p50 376 ms at one stream) and starts in the time a
vLLM replica takes here (75 s). Queueing is modelled per second: a backlog of tokens drains at the serving
replicas' rate, and TTFT grows with utilisation as in an M/D/1 queue. The prices are inputs, not measurements.

Policies:
- peak: always self-hosted, sized for the peak all day;
- managed: everything to the managed API;
- serve-default: Serve's default autoscaling (ongoing requests against a per-replica target, 30 s upscale and
  600 s downscale delays), no spill; with fixed-size requests, ongoing requests are proportional to tokens/s
  asked (Little's law), so the target is expressed as the same utilisation, on the same last minute of demand;
- serve-default+spill: the same, with the router's cost_aware rule: a request that finds no stream free in time
  goes to the managed API;
- controller: core/scale_or_spill.py every 10 s on the last 60 s of demand (scale up, spill, or scale down and
  pull traffic back; down to zero replicas), with the same router rule. Its decisions act at once, as Serve
  acts on them with its own delays set to 0 (deployments/llm.py).
"""

from __future__ import annotations

import heapq
import json
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from core.scale_or_spill import Economics, History, Load, decide

console = Console()
DAY_S = 24 * 3600
POLICIES = ("peak", "managed", "serve-default", "serve-default+spill", "controller")
SPILL_WHEN_FULL = ("serve-default+spill", "controller")  # the router's rule (cost_aware): no stream free in time


@dataclass(frozen=True)
class Engine:
    tokens_per_s: float = 52.8  # one replica, output tokens/s at full load
    ttft_s: float = 0.376  # unloaded
    cold_start_s: float = 75.0
    streams: int = 8  # concurrent requests per replica at which tokens_per_s was measured
    managed_ttft_s: float = 0.6


@dataclass(frozen=True)
class Traffic:
    tokens_per_request: int = 256
    night_rps: float = 0.05
    day_rps: float = 0.6
    peak_rps: float = 1.6
    peak_start_h: float = 14.0
    peak_hours: float = 1.0

    def rate(self, t: float) -> float:
        """Requests per second at second `t` of the day: night, a smooth working day (8h-20h), the peak."""
        hour = t / 3600
        day = max(0.0, math.sin(math.pi * (hour - 8) / 12)) if 8 <= hour <= 20 else 0.0
        rate = self.night_rps + (self.day_rps - self.night_rps) * day
        if self.peak_start_h <= hour < self.peak_start_h + self.peak_hours:
            rate = self.peak_rps
        return rate


class Slots:
    """The serving replicas' streams: each replica runs `engine.streams` requests at once (continuous batching),
    each stream at tokens_per_s / streams; a request waits for the first free stream (FIFO)."""

    def __init__(self, engine: Engine, traffic: Traffic):
        self._free_at: list[float] = []  # a heap: when each stream is free
        self._engine = engine
        self._service_s = traffic.tokens_per_request / (engine.tokens_per_s / engine.streams)

    def add_replica(self, t: float) -> None:
        for _ in range(self._engine.streams):
            heapq.heappush(self._free_at, t)

    def remove_replica(self) -> None:
        """A replica leaves once drained: its streams are the ones free soonest."""
        for _ in range(self._engine.streams):
            heapq.heappop(self._free_at)

    def wait(self, arrival: float) -> float:
        """How long a request arriving now would wait for a stream."""
        return max(0.0, self._free_at[0] - arrival)

    def admit(self, arrival: float) -> float:
        """The request's TTFT: the wait for a stream, then the engine's own TTFT."""
        start = max(arrival, heapq.heappop(self._free_at))
        heapq.heappush(self._free_at, start + self._engine.ttft_s + self._service_s)
        return start - arrival + self._engine.ttft_s


@dataclass
class Result:
    policy: str
    cost_usd: float = 0.0
    replica_hours: float = 0.0
    managed_usd: float = 0.0
    requests: int = 0
    within_slo: int = 0
    spilled: int = 0
    ttfts: list[float] = field(default_factory=list)
    timeline: list[tuple[float, int, float, float]] = field(default_factory=list)  # t, replicas, spill, ttft

    def summary(self) -> dict:
        ttfts = np.array(self.ttfts) if self.ttfts else np.array([math.nan])
        return {
            "policy": self.policy,
            "cost_usd": round(self.cost_usd, 4),
            "replica_hours": round(self.replica_hours, 3),
            "managed_usd": round(self.managed_usd, 4),
            "requests": self.requests,
            "slo_attainment": round(self.within_slo / max(1, self.requests), 4),
            "spilled_share": round(self.spilled / max(1, self.requests), 4),
            "ttft_p50_s": round(float(np.percentile(ttfts, 50)), 3),
            "ttft_p99_s": round(float(np.percentile(ttfts, 99)), 3),
        }


def simulate(policy: str, economics: Economics, engine: Engine, traffic: Traffic, seed: int) -> Result:
    """One day, one second at a time. Same seed, same arrivals and the same numbers for every policy."""
    rng = np.random.default_rng(seed)
    arrivals = rng.poisson([traffic.rate(t) for t in range(DAY_S)])
    spill_draws = np.random.default_rng(seed + 1).random(int(arrivals.sum()) + 1)
    result = Result(policy)
    per_replica = engine.tokens_per_s * economics.max_utilisation
    peak_replicas = math.ceil(traffic.peak_rps * traffic.tokens_per_request / per_replica)
    serving = {"peak": peak_replicas, "managed": 0, "controller": 1}.get(policy, 1)
    starting: deque[float] = deque()  # when each starting replica serves
    spill = 1.0 if policy == "managed" else 0.0
    slots = Slots(engine, traffic)
    for _ in range(serving):
        slots.add_replica(0.0)
    demand_window: deque[float] = deque(maxlen=60)
    recent_ttft: deque[float] = deque(maxlen=30)
    history, draw = History(), 0
    up_since: int | None = None
    down_since: int | None = None
    managed_per_token = economics.managed_usd_per_mtok / 1e6
    for t in range(DAY_S):
        while starting and starting[0] <= t:
            starting.popleft()
            serving += 1
            slots.add_replica(t)
        n = int(arrivals[t])
        demand_window.append(n * traffic.tokens_per_request)
        here, ttfts = 0, []
        for i in range(n):
            arrival = t + (i + 0.5) / n
            # No serving replica, the controller's share, or (the router's half) no stream free in time: out.
            spilled = not serving or spill_draws[draw] < spill
            if policy in SPILL_WHEN_FULL and not spilled:
                spilled = slots.wait(arrival) > economics.ttft_target_s - engine.ttft_s
            if not spilled:
                here += 1
                ttfts.append(slots.admit(arrival))
            draw += 1
        out = n - here
        ttft = max(ttfts) if ttfts else engine.ttft_s
        recent_ttft.extend(ttfts)
        result.requests += n
        result.spilled += out
        result.within_slo += sum(x <= economics.ttft_target_s for x in ttfts) + (
            out if engine.managed_ttft_s <= economics.ttft_target_s else 0
        )
        result.ttfts += ttfts + [engine.managed_ttft_s] * out
        result.managed_usd += out * traffic.tokens_per_request * managed_per_token
        result.replica_hours += (serving + len(starting)) / 3600
        demand = sum(demand_window) / len(demand_window)
        if policy.startswith("serve-default") and t % 10 == 0:
            wanted = max(1, math.ceil(demand / per_replica))
            current = serving + len(starting)
            up_since = (up_since if up_since is not None else t) if wanted > current else None
            down_since = (down_since if down_since is not None else t) if wanted < current else None
            if up_since is not None and t - up_since >= 30:  # Serve's default upscale_delay_s
                starting.extend([t + engine.cold_start_s] * (wanted - current))
                up_since = None
            if down_since is not None and t - down_since >= 600:  # Serve's default downscale_delay_s
                leaving = serving - max(wanted, serving - (current - wanted))
                for _ in range(leaving):
                    slots.remove_replica()
                serving -= leaving
                down_since = None
        if policy == "controller" and t % 10 == 0:
            ttft_now = float(np.median(recent_ttft)) if recent_ttft else None
            load = Load(t, demand, serving, len(starting), ttft_now)
            decision = decide(load, economics, history)
            current = serving + len(starting)
            if decision.replicas > current:
                starting.extend([t + engine.cold_start_s] * (decision.replicas - current))
            elif decision.replicas < current:
                for _ in range(serving - max(0, serving - (current - decision.replicas))):
                    slots.remove_replica()
                serving = max(0, serving - (current - decision.replicas))
            spill = decision.spill_fraction if serving + len(starting) else 1.0
        if t % 60 == 0:
            result.timeline.append((t, serving + len(starting), spill, ttft))
    result.cost_usd = result.replica_hours * economics.replica_hour_usd + result.managed_usd
    return result


def run_all(economics: Economics, engine: Engine, traffic: Traffic, seed: int) -> list[Result]:
    return [simulate(policy, economics, engine, traffic, seed) for policy in POLICIES]


def plot(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for r in results:
        hours = [p[0] / 3600 for p in r.timeline]
        top.plot(hours, [p[1] for p in r.timeline], label=r.policy)
        bottom.plot(hours, [p[2] for p in r.timeline], label=r.policy)
    top.set_ylabel("replicas (serving + starting)")
    bottom.set_ylabel("share spilled to managed")
    bottom.set_xlabel("hour of the simulated day")
    top.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(
    seed: Annotated[int, typer.Option(help="Arrivals seed: the same seed gives the same numbers.")] = 7,
    replica_hour_usd: Annotated[float, typer.Option(help="One replica's hour (a 2-vCPU VM ~0.09).")] = 0.09,
    managed_usd_per_mtok: Annotated[float, typer.Option(help="Managed price per 1M output tokens.")] = 0.60,
    ttft_target_s: Annotated[float, typer.Option(help="TTFT SLO.")] = 2.0,
    out: Annotated[Path | None, typer.Option(help="Write the numbers as JSON here.")] = None,
    plot_to: Annotated[Path | None, typer.Option("--plot", help="Draw replicas and spill over the day (PNG).")] = None,
) -> None:
    engine, traffic = Engine(), Traffic()
    economics = Economics(
        replica_hour_usd=replica_hour_usd,
        managed_usd_per_mtok=managed_usd_per_mtok,
        replica_tokens_per_s=engine.tokens_per_s,
        cold_start_s=engine.cold_start_s,
        ttft_target_s=ttft_target_s,
        min_replicas=0,
        max_replicas=16,
        downscale_after_s=600.0,  # engine.downscale_delay_s, as Serve's default waits
    )
    results = run_all(economics, engine, traffic, seed)
    table = Table("policy", "cost $", "vs peak", "replica-h", "managed $", "SLO met", "spilled", "TTFT p50", "p99")
    base = results[0].cost_usd
    for r in results:
        s = r.summary()
        table.add_row(
            r.policy, f"{s['cost_usd']:.3f}", f"{s['cost_usd'] / base:.2f}", f"{s['replica_hours']:.1f}",
            f"{s['managed_usd']:.3f}", f"{s['slo_attainment']:.2%}", f"{s['spilled_share']:.1%}",
            f"{s['ttft_p50_s']:.2f}", f"{s['ttft_p99_s']:.2f}",
        )  # fmt: skip
    console.print(table)
    console.print(f"break-even utilisation of a replica: {economics.break_even_utilisation:.0%}")
    if out is not None:
        out.write_text(json.dumps({"seed": seed, "results": [r.summary() for r in results]}, indent=2))
    if plot_to is not None:
        plot(results, plot_to)


if __name__ == "__main__":
    typer.run(main)
