"""Routing strategies: which provider comes first, and why, from load and latency."""

from dataclasses import dataclass, field

import pytest

from core.pricing import Price
from deployments.providers.routing import LoadStats, strategy


@dataclass
class P:  # only what a strategy reads: a strategy orders, it never calls
    name: str
    kind: str
    price: Price = field(default_factory=Price)


OWN = P("self-hosted", "self_hosted")
CHEAP = P("cheap", "openai", Price(0.1, 0.4))
DEAR = P("dear", "anthropic", Price(3.0, 15.0))
ALL = [DEAR, OWN, CHEAP]


def names(route):
    return [p.name for p in route.providers]


def test_ordered_keeps_the_configured_order():
    assert names(strategy("ordered").order(ALL, LoadStats(4, 2.0))) == ["dear", "self-hosted", "cheap"]


def test_least_loaded_prefers_fewest_in_flight():
    stats = LoadStats(4, 2.0)
    stats.inflight.update({"dear": 3, "self-hosted": 5, "cheap": 1})
    assert names(strategy("least_loaded").order(ALL, stats)) == ["cheap", "dear", "self-hosted"]


def test_cost_aware_prefers_self_hosted_while_it_has_room_then_spills_cheapest_first_and_comes_back():
    stats = LoadStats(self_hosted_slots=4, ttft_target_s=2.0)
    stats.observe_ttft("self-hosted", 0.5)
    cost_aware = strategy("cost_aware")
    route = cost_aware.order(ALL, stats)
    assert names(route) == ["self-hosted", "cheap", "dear"] and "has room" in route.reason

    stats.inflight["self-hosted"] = 4  # every slot busy
    route = cost_aware.order(ALL, stats)
    assert names(route) == ["cheap", "dear", "self-hosted"] and "saturated" in route.reason

    stats.inflight["self-hosted"] = 1
    for _ in range(20):
        stats.observe_ttft("self-hosted", 5.0)  # slow: expected TTFT over the 2 s target
    route = cost_aware.order(ALL, stats)
    assert names(route)[0] == "cheap" and "over target" in route.reason

    for _ in range(30):
        stats.observe_ttft("self-hosted", 0.3)  # capacity is back
    assert names(cost_aware.order(ALL, stats))[0] == "self-hosted"


def test_unknown_strategy_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="cost_aware"):
        strategy("random")


def test_scale_or_spill_sends_the_controllers_share_to_the_cheapest_managed_and_the_rest_as_cost_aware():
    from deployments.providers.routing import ScaleOrSpill

    stats = LoadStats(self_hosted_slots=4, ttft_target_s=2.0, spill_fraction={"m": 0.3})
    assert names(ScaleOrSpill(draw=lambda: 0.2).order(ALL, stats, "m")) == ["cheap", "dear", "self-hosted"]
    assert names(ScaleOrSpill(draw=lambda: 0.5).order(ALL, stats, "m"))[0] == "self-hosted"
    assert names(ScaleOrSpill(draw=lambda: 0.0).order(ALL, stats, "other"))[0] == "self-hosted"  # its own share: 0
    stats.inflight["self-hosted"] = 4  # saturated: cost_aware's spill still holds
    assert names(ScaleOrSpill(draw=lambda: 0.9).order(ALL, stats, "m"))[0] == "cheap"


def test_each_self_hosted_provider_is_saturated_by_its_own_slots():
    a, b = P("self-hosted", "self_hosted"), P("self-hosted/b", "self_hosted")
    stats = LoadStats(self_hosted_slots=10, ttft_target_s=2.0, slots={"self-hosted": 8, "self-hosted/b": 2})
    stats.inflight["self-hosted/b"] = 2
    cost_aware = strategy("cost_aware")
    assert names(cost_aware.order([b, CHEAP], stats))[0] == "cheap"  # b is full although the total is not
    assert names(cost_aware.order([a, CHEAP], stats))[0] == "self-hosted"
