"""The Serve autoscaling policy of an LLM deployment under `engine.autoscaling: scale_or_spill`: every
`decide_every_s` it reads the model's last minute of demand from Redis (state/scaling_signals.py), decides with
core/scale_or_spill.py and stores the decision for the routers and `llmserve cost`. Serve instantiates it once in
its controller (a class policy with `policy_kwargs`) and calls it on every autoscaling tick."""

from __future__ import annotations

import logging
import time
from typing import Any

from redis.exceptions import RedisError

from core.scale_or_spill import Economics, History, Load, decide
from state.redis_client import sync_redis
from state.scaling_signals import read_load, store_decision

logger = logging.getLogger("ray.serve")
ASSUMED_TOKENS_PER_S = 50.0  # until traffic measured it and no setting gives it


class ScaleOrSpillPolicy:
    def __init__(
        self,
        redis_url: str,
        redis_prefix: str,
        model: str,
        economics: dict[str, Any],
        replica_tokens_per_s: float | None = None,
        self_hosted_provider: str = "self-hosted",
        decide_every_s: float = 10.0,
    ):
        self._url, self._prefix, self._model = redis_url, redis_prefix, model
        self._economics = economics
        self._tokens_per_s = replica_tokens_per_s
        self._provider = self_hosted_provider
        self._every_s = decide_every_s
        self._client = None

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        state = dict(ctx.policy_state or {})
        now = ctx.current_time or time.time()
        running = len(ctx.running_replicas)
        if state.get("decided_at") is not None and now - state["decided_at"] < self._every_s:
            return state.get("replicas", ctx.target_num_replicas), state
        try:
            client = self._client = self._client or sync_redis(self._url)
            demand, ttft = read_load(client, self._prefix, self._model, now)
            tokens_per_s, measured = self._replica_tokens_per_s(client, running)
            economics = Economics(**self._economics, replica_tokens_per_s=tokens_per_s)
            history = History.from_dict(state.get("history"))
            starting = max(0, ctx.target_num_replicas - running)
            decision = decide(Load(now, demand, running, starting, ttft), economics, history)
            record = {**decision.to_dict(), "decided_at": now, "tokens_per_s_source": measured}
            store_decision(client, self._prefix, self._model, record)
        except RedisError as exc:  # no signals: keep what runs, and try again at the next decision, not the next tick
            logger.warning("scale_or_spill: Redis unavailable (%r): keeping %d replicas", exc, ctx.target_num_replicas)
            return ctx.target_num_replicas, {**state, "decided_at": now, "replicas": ctx.target_num_replicas}
        if decision.action != "hold":
            logger.info("scale_or_spill %s: %s -> %d replicas: %s", self._model, decision.action, decision.replicas,
                        decision.reason)  # fmt: skip
        return decision.replicas, {"history": history.to_dict(), "decided_at": now, "replicas": decision.replicas}

    def _replica_tokens_per_s(self, client: Any, running: int) -> tuple[float, str]:
        """One replica's output tokens/s at full load: the setting, else measured (self-hosted output tokens per
        second with requests in flight, per running replica), else assumed."""
        if self._tokens_per_s:
            return self._tokens_per_s, "setting"
        usage = client.hmget(f"{self._prefix}:prov:{{{self._provider}}}", "completion_tokens", "busy_s")
        tokens, busy = float(usage[0] or 0), float(usage[1] or 0)
        if tokens and busy > 60:
            return tokens / busy / max(1, running), "measured"
        return ASSUMED_TOKENS_PER_S, "assumed"
