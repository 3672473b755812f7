"""Scale or spill: one decision, for one self-hosted model, between adding a replica and sending the excess load
to a managed API, from the load now and in the recent past.

A replica is paid by the hour whether busy or not; a managed API is paid per token. So one more replica pays only
when the load it would carry fills enough of it: its break-even utilisation is

    u* = replica $/h / (replica tokens/s x 3600 x managed $/token)

and, since a replica is paid from the moment it starts while the excess must be spilled until it serves, over an
expected excess of H seconds after a cold start of C seconds it pays when the excess fills more than
u* x (C + H) / H of it. H is estimated from the recent past: an excess is expected to last as long as it has
lasted so far (at least `min_horizon_s`, at most `max_horizon_s`).

The same `decide` drives the Serve autoscaling policy of the LLM deployments, the router's `scale_or_spill`
strategy (through the decision it stores in Redis), `llmserve cost`, and the simulation in
benchmarks/scale_or_spill.py. Pure: no I/O, time passed in.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Action = Literal["hold", "scale_up", "spill", "scale_down"]


@dataclass(frozen=True)
class Economics:
    """What a replica and a managed token cost, and how a replica behaves."""

    replica_hour_usd: float  # one replica's hour (GPUs per replica x $/GPU-hour)
    managed_usd_per_mtok: float  # the managed provider's price per 1M output tokens (its prompt tokens folded in)
    replica_tokens_per_s: float  # output tokens/s one replica delivers at `max_utilisation`
    cold_start_s: float  # from the decision to add a replica until it serves
    ttft_target_s: float
    max_utilisation: float = 0.85  # beyond it queues grow and TTFT leaves its target
    min_replicas: int = 0
    max_replicas: int = 8
    downscale_after_s: float = 300.0  # load must stay below one replica less's capacity this long
    min_horizon_s: float = 10.0
    max_horizon_s: float = 3600.0
    managed_available: bool = True  # False: nothing to spill to (scale, or queue)

    @property
    def break_even_utilisation(self) -> float:
        """The share of a replica's capacity that makes it cost what the managed API costs for the same tokens."""
        per_token = self.managed_usd_per_mtok / 1e6
        if per_token <= 0:
            return math.inf  # managed is free: a replica never pays
        return self.replica_hour_usd / (self.replica_tokens_per_s * 3600 * per_token)


@dataclass(frozen=True)
class Load:
    """What the model is asked now."""

    now_s: float
    demand_tokens_per_s: float  # output tokens/s asked of the model (served here or spilled)
    replicas: int  # replicas serving
    starting: int = 0  # replicas asked for and not serving yet
    ttft_s: float | None = None  # recent self-hosted TTFT (p50), when measured


@dataclass
class History:
    """What the controller remembers between decisions (Serve's policy_state, or Redis)."""

    excess_since_s: float | None = None  # since when demand exceeds what the serving replicas carry
    slack_since_s: float | None = None  # since when fewer replicas would carry it...
    slack_replicas: int | None = None  # ...than this many (a new count starts a new wait)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> History:
        data = data or {}
        return cls(data.get("excess_since_s"), data.get("slack_since_s"), data.get("slack_replicas"))


@dataclass(frozen=True)
class Decision:
    replicas: int  # replicas wanted (serving + starting)
    spill_fraction: float  # share of new self-hosted requests to send to the managed provider now
    action: Action
    reason: str
    utilisation: float  # demand over the serving replicas' capacity at full use
    break_even_utilisation: float
    expected_excess_s: float
    numbers: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """As JSON takes it: an undefined ratio (no replica, a free managed API) is None."""
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in asdict(self).items()}


def capacity(replicas: int, economics: Economics) -> float:
    """Output tokens/s `replicas` carry within the TTFT target."""
    return replicas * economics.replica_tokens_per_s * economics.max_utilisation


def decide(load: Load, economics: Economics, history: History) -> Decision:
    """The decision for now; updates `history` in place."""
    e = economics
    now, demand = load.now_s, max(0.0, load.demand_tokens_per_s)
    serving_capacity = capacity(load.replicas, e)
    full = load.replicas * e.replica_tokens_per_s
    utilisation = demand / full if full else (math.inf if demand else 0.0)
    u_star = e.break_even_utilisation
    excess = demand - serving_capacity
    slow = load.ttft_s is not None and load.ttft_s > e.ttft_target_s and load.replicas > 0

    if excess > 0:
        history.excess_since_s = history.excess_since_s if history.excess_since_s is not None else now
    else:
        history.excess_since_s = None
    lasted = now - history.excess_since_s if history.excess_since_s is not None else 0.0
    horizon = min(e.max_horizon_s, max(e.min_horizon_s, lasted))
    numbers = {
        "demand_tokens_per_s": demand,
        "capacity_tokens_per_s": serving_capacity,
        "excess_tokens_per_s": max(0.0, excess),
        "excess_lasted_s": lasted,
    }

    def decision(replicas: int, spill: float, action: Action, reason: str) -> Decision:
        replicas = max(e.min_replicas, min(e.max_replicas, replicas))
        spill = spill if e.managed_available else 0.0
        return Decision(replicas, round(spill, 4), action, reason, utilisation, u_star, horizon, numbers)

    if excess > 0:
        history.slack_since_s = None
        wanted = load.replicas + load.starting + _replicas_that_pay(max(0.0, excess), load.starting, horizon, e)
        spill = excess / demand if demand else 0.0  # until more replicas serve, the excess goes out
        if not e.managed_available:  # nothing to spill to: what the starting replicas will not carry
            per_replica = capacity(1, e)
            uncovered = max(0.0, excess - load.starting * per_replica)
            more = load.replicas + load.starting + math.ceil(uncovered / per_replica)
            return decision(more, 0.0, "scale_up" if uncovered else "hold", "no managed provider: scale for it")
        if wanted > load.replicas + load.starting:
            added = wanted - load.replicas - load.starting
            why = (
                f"excess {excess:.0f} tok/s expected to last {horizon:.0f} s fills a new replica above "
                f"{u_star * (e.cold_start_s + horizon) / horizon:.0%} (break-even {u_star:.0%}, cold start "
                f"{e.cold_start_s:.0f} s): add {added}; spill {spill:.0%} while it starts"
            )
            return decision(wanted, spill, "scale_up", why)
        if load.starting:
            return decision(wanted, spill, "spill", f"{load.starting} replica(s) starting: spill {spill:.0%} meanwhile")
        why = (
            f"excess {excess:.0f} tok/s would fill a new replica below its break-even "
            f"({u_star:.0%}, {horizon:.0f} s expected): spill {spill:.0%} to the managed provider"
        )
        return decision(wanted, spill, "spill", why)

    if slow:  # capacity says fine, latency says not (long prompts): spill a share, do not buy for it
        history.slack_since_s = None
        if not e.managed_available:
            more = load.replicas + load.starting + (0 if load.starting else 1)
            return decision(more, 0.0, "scale_up", f"TTFT {load.ttft_s:.2f} s over target, nothing to spill to")
        spill = min(0.5, (load.ttft_s - e.ttft_target_s) / load.ttft_s)
        return decision(load.replicas + load.starting, spill, "spill", f"TTFT {load.ttft_s:.2f} s over target")

    # The fewest replicas that carry the demand with a 10 % margin (hysteresis against flapping), and of those
    # only the ones that pay at steady load: the last one's share of the demand must fill it above break-even.
    needed = math.ceil(demand / (0.9 * capacity(1, e))) if demand else 0
    paying = _replicas_that_pay(demand, 0, e.max_horizon_s, e) if e.managed_available else needed
    fewer = max(e.min_replicas, min(needed, paying))
    if fewer < load.replicas and not load.starting:
        if history.slack_since_s is None or history.slack_replicas != load.replicas:
            history.slack_since_s, history.slack_replicas = now, load.replicas
        if now - history.slack_since_s >= e.downscale_after_s:
            # Asked again at every decision until the replicas are gone (Serve acts on a steady target); the
            # excess is spilled once they are (the next decisions), not before.
            why = (
                f"demand {demand:.0f} tok/s for {e.downscale_after_s:.0f} s: {needed} replica(s) carry it, "
                f"{paying} pay above break-even ({u_star:.0%}): keep {fewer}"
            )
            return decision(fewer, 0.0, "scale_down", why)
    else:
        history.slack_since_s = None
    return decision(load.replicas + load.starting, 0.0, "hold", "capacity covers demand: traffic stays here")


def _replicas_that_pay(excess: float, starting: int, horizon: float, e: Economics) -> int:
    """How many more replicas pay for themselves on `excess` tokens/s (beyond what `starting` ones will carry),
    each filled in turn, against spilling that excess for `horizon` s after a cold start."""
    per_replica = e.replica_tokens_per_s * e.max_utilisation
    left = excess - starting * per_replica
    added = 0
    threshold = e.break_even_utilisation * (e.cold_start_s + horizon) / horizon
    while left > 0:
        fill = min(per_replica, left) / e.replica_tokens_per_s
        if fill <= threshold:
            break
        added += 1
        left -= per_replica
    return added
