"""Admission control: a bounded number of requests in flight per model on each ingress replica.

Serve's own bounds (`max_ongoing_requests` and `max_queued_requests` on the vLLM deployment) reject work only
once it has crossed two hops; this gate rejects it at the door, without a Redis round trip, so that an
overloaded server answers 503 + Retry-After in microseconds instead of letting requests pile up and hang.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter

from core.errors import ServiceUnavailable
from core.setting_groups import EngineSettings, LimitsSettings
from observability import prom


def model_capacity(limits: LimitsSettings, engine: EngineSettings, ingress_replicas: int) -> int:
    """Requests one ingress replica lets in per model: an explicit setting, or what the vLLM replicas can hold
    (running + queued at their maximum scale), shared among the ingress replicas."""
    if limits.max_inflight_per_model is not None:
        return limits.max_inflight_per_model
    total = engine.max_replicas * engine.max_ongoing_requests + engine.max_queued_requests
    return max(1, math.ceil(total / ingress_replicas))


class Slot:
    """One admitted request's place; `release()` is idempotent."""

    __slots__ = ("_gate", "_model")

    def __init__(self, gate: AdmissionGate, model: str):
        self._gate: AdmissionGate | None = gate
        self._model = model

    def release(self) -> None:
        if self._gate is not None:
            self._gate._leave(self._model)
            self._gate = None


class AdmissionGate:
    """Requests in flight per deployment. `capacity`: the default per model; `capacities`: a self-hosted model's
    own; `deployments`: each name a client may send for a self-hosted deployment (its LoRA adapters' names) -> the
    model whose deployment serves it, so an adapter's requests count against its base model's replicas."""

    def __init__(
        self,
        capacity: int,
        retry_after_s: float,
        capacities: dict[str, int] | None = None,
        deployments: dict[str, str] | None = None,
    ):
        self.capacity = capacity
        self._capacities = capacities or {}
        self._deployments = deployments or {}
        self._retry_after_s = max(1, math.ceil(retry_after_s))
        self._inflight: Counter[str] = Counter()

    def capacity_of(self, model: str) -> int:
        return self._capacities.get(self._deployments.get(model, model), self.capacity)

    def enter(self, model: str) -> Slot:
        model = self._deployments.get(model, model)
        capacity = self.capacity_of(model)
        if self._inflight[model] >= capacity:
            prom.inc("llmserve_admission_rejected_total", model=model)
            raise ServiceUnavailable(
                f"model {model!r} is at capacity ({capacity} requests in flight); retry shortly",
                code="overloaded",
                retry_after_s=self._retry_after_s,
            )
        self._inflight[model] += 1
        return Slot(self, model)

    def inflight(self, model: str) -> int:
        return self._inflight[self._deployments.get(model, model)]

    def total(self) -> int:
        """Requests in flight for every model."""
        return sum(self._inflight.values())

    def _leave(self, model: str) -> None:
        self._inflight[model] -= 1
        if self._inflight[model] <= 0:
            del self._inflight[model]

    async def report_every(self, models: list[str], interval_s: float = 2.0) -> None:
        """Keep the in-flight and capacity gauges of `models` current. On a timer, not per request: Ray drops a
        gauge nobody set again within two of its export intervals, so an idle model's 0 must be said again."""
        while True:
            for model in models:
                prom.set_gauge("llmserve_requests_in_flight", self.inflight(model), model=model)
                prom.set_gauge("llmserve_admission_capacity", self.capacity_of(model), model=model)
            await asyncio.sleep(interval_s)
