"""Routing policy: a small registry of strategies that order the providers for one request, from what this
orchestrator replica sees (requests in flight per provider, a moving average of each one's TTFT).

- ordered: the configured order (fallback).
- least_loaded: fewest requests in flight first.
- cost_aware: the self-hosted engine while it has room and its expected TTFT fits the target (it is paid
  for whether busy or not), else the managed providers cheapest first, with self-hosted kept as a last resort.
- scale_or_spill: cost_aware, plus the share of requests the scale-or-spill controller spills.
Circuit breakers are applied after ordering, by the router.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from deployments.providers.base import Provider


@dataclass
class LoadStats:
    """Per-replica view of the providers. `self_hosted_slots`: requests the self-hosted replicas run at their
    target load (beyond it they queue)."""

    self_hosted_slots: int
    ttft_target_s: float
    inflight: Counter[str] = field(default_factory=Counter)
    ewma_ttft_s: dict[str, float] = field(default_factory=dict)
    spill_fraction: dict[str, float] = field(default_factory=dict)  # per model, the scale-or-spill decision
    slots: dict[str, int] = field(default_factory=dict)  # a self-hosted provider's own (one per model)
    alpha: float = 0.2
    _busy_since: dict[str, float] = field(default_factory=dict)
    _busy_s: Counter[str] = field(default_factory=Counter)

    def enter(self, provider: str) -> None:
        if self.inflight[provider] == 0:
            self._busy_since[provider] = time.monotonic()
        self.inflight[provider] += 1

    def leave(self, provider: str) -> None:
        self.inflight[provider] -= 1
        if self.inflight[provider] == 0:
            self._busy_s[provider] += time.monotonic() - self._busy_since.pop(provider, time.monotonic())

    def take_busy_seconds(self) -> dict[str, float]:
        """Seconds each provider had at least one request in flight since the last call (ongoing spans too)."""
        now = time.monotonic()
        for provider, since in self._busy_since.items():
            self._busy_s[provider] += now - since
            self._busy_since[provider] = now
        taken, self._busy_s = dict(self._busy_s), Counter()
        return taken

    def slots_of(self, provider: str) -> int:
        return max(1, self.slots.get(provider, self.self_hosted_slots))

    def observe_ttft(self, provider: str, seconds: float) -> None:
        old = self.ewma_ttft_s.get(provider)
        self.ewma_ttft_s[provider] = seconds if old is None else old + self.alpha * (seconds - old)

    def expected_ttft_s(self, provider: str) -> float:
        """The moving-average TTFT, scaled by how far past its slots the provider already is (queueing)."""
        base = self.ewma_ttft_s.get(provider, 0.0)
        load = (self.inflight[provider] + 1) / self.slots_of(provider)
        return base * max(1.0, load)


@dataclass(frozen=True)
class Route:
    providers: list[Provider]
    reason: str


class Strategy(Protocol):
    def order(self, providers: list[Provider], stats: LoadStats, model: str = "") -> Route: ...


STRATEGIES: dict[str, Callable[[], Strategy]] = {}


def register(name: str) -> Callable[[type], type]:
    def add(cls: type) -> type:
        STRATEGIES[name] = cls
        return cls

    return add


def strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ValueError(f"unknown routing strategy {name!r}; known: {sorted(STRATEGIES)}") from None


@register("ordered")
class Ordered:
    def order(self, providers: list[Provider], stats: LoadStats, model: str = "") -> Route:
        return Route(list(providers), "configured order")


@register("least_loaded")
class LeastLoaded:
    def order(self, providers: list[Provider], stats: LoadStats, model: str = "") -> Route:
        ranked = sorted(providers, key=lambda p: stats.inflight[p.name])  # stable: ties keep configured order
        return Route(ranked, "fewest in flight: " + ", ".join(f"{p.name}={stats.inflight[p.name]}" for p in ranked))


@register("cost_aware")
class CostAware:
    def order(self, providers: list[Provider], stats: LoadStats, model: str = "") -> Route:
        own = [p for p in providers if p.kind == "self_hosted"]
        managed = sorted((p for p in providers if p.kind != "self_hosted"), key=lambda p: p.price.output_per_mtok)
        if not own:
            return Route(managed, "no self-hosted provider: cheapest managed first")
        busy = [p for p in own if stats.inflight[p.name] >= stats.slots_of(p.name)]
        slow = [p for p in own if stats.expected_ttft_s(p.name) > stats.ttft_target_s]
        if not busy and not slow:
            return Route(own + managed, "self-hosted has room and its expected TTFT fits the target")
        why = "saturated" if busy else f"expected TTFT {stats.expected_ttft_s(own[0].name):.2f} s over target"
        return Route(managed + own, f"self-hosted {why}: spill to managed, cheapest first")


@register("scale_or_spill")
class ScaleOrSpill(CostAware):
    """cost_aware, and the share of the model's requests that the scale-or-spill controller spills (its last
    decision, engine.autoscaling: scale_or_spill): that share goes to the managed providers first."""

    def __init__(self, draw: Callable[[], float] = random.random):
        self._draw = draw

    def order(self, providers: list[Provider], stats: LoadStats, model: str = "") -> Route:
        share = stats.spill_fraction.get(model, 0.0)
        managed = [p for p in providers if p.kind != "self_hosted"]
        if share > 0 and managed and self._draw() < share:
            own = [p for p in providers if p.kind == "self_hosted"]
            managed.sort(key=lambda p: p.price.output_per_mtok)
            return Route(managed + own, f"the controller spills {share:.0%} of {model}: this one to managed")
        return super().order(providers, stats, model)
