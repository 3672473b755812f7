"""The providers' measured economics (GET /admin/providers, `llmserve cost`): usage and cost per provider,
what each cost per 1M tokens, and the utilisation above which the self-hosted engine is the cheaper one."""

from __future__ import annotations

import redis.asyncio as aioredis

from core.pricing import price_of
from core.setting_groups import PricingSettings, RoutingSettings
from deployments.providers.factory import breaker_policy
from state.breaker import CircuitBreaker
from state.provider_usage import ProviderUsage, self_hosted_economics
from state.scaling_signals import ScalingSignals


async def provider_report(
    routing: RoutingSettings,
    pricing: PricingSettings,
    gpus_per_replica: int,
    client: aioredis.Redis,
    redis_prefix: str,
    gpu_hour_usd: float | None = None,
    accelerator: str = "gpu",
    self_hosted_models: list[str] | None = None,
) -> dict:
    """Per provider: usage, measured $/1M tokens, breaker; and the self-hosted economics. `accelerator`: what a
    self-hosted replica runs on (on CPU, `gpu_hour_usd` is the price of a replica-hour)."""
    usage = ProviderUsage(client, redis_prefix)
    breaker = CircuitBreaker(client, redis_prefix, breaker_policy(routing))
    gpu_hour = pricing.gpu_hour_usd if gpu_hour_usd is None else gpu_hour_usd
    rows, own_usage = [], None
    # A self-hosted entry is one provider per model: the first model's has its name, the others '<name>/<model>'.
    named = [
        (f"{c.name}/{m}" if i else c.name, c)
        for c in routing.providers
        for i, m in enumerate((self_hosted_models or [""]) if c.kind == "self_hosted" else [""])
    ]
    for name, config in named:
        u = await usage.get(name)
        tokens = u["prompt_tokens"] + u["completion_tokens"]
        price = price_of(config, pricing)
        rows.append(
            {
                "name": name,
                "kind": config.kind,
                "price_input_per_mtok": price.input_per_mtok,
                "price_output_per_mtok": price.output_per_mtok,
                "usage": u,
                "usd_per_mtok": u["cost_usd"] / tokens * 1e6 if tokens else None,
                "breaker": await breaker.state(name),
            }
        )
        if config.kind == "self_hosted" and own_usage is None:  # the economics: the first model's
            own_usage = u
    report: dict = {
        "object": "list",
        "data": rows,
        "gpu_hour_usd": gpu_hour,
        "gpus_per_replica": gpus_per_replica,
        "accelerator": accelerator,
    }
    if own_usage is not None:
        managed = [r for r in rows if r["kind"] != "self_hosted"]
        mix = _output_share(own_usage)
        for r in managed:  # measured $/1M when it had traffic, else its list price at our input/output mix
            if r["usd_per_mtok"] is None:
                r["usd_per_mtok_list"] = (1 - mix) * r["price_input_per_mtok"] + mix * r["price_output_per_mtok"]
        cheapest = min(managed, key=_per_mtok, default=None)
        managed_price = _per_mtok(cheapest) if cheapest else None
        economics = self_hosted_economics(own_usage, gpu_hour, gpus_per_replica, managed_price)
        report["self_hosted"] = {**economics, "compared_with": cheapest["name"] if cheapest else None}
    report["scaling"] = await ScalingSignals(client, redis_prefix).decisions()  # engine.autoscaling: scale_or_spill
    return report


def _per_mtok(row: dict) -> float:
    return row["usd_per_mtok"] if row["usd_per_mtok"] is not None else row["usd_per_mtok_list"]


def _output_share(usage: dict[str, float]) -> float:
    tokens = usage["prompt_tokens"] + usage["completion_tokens"]
    return usage["completion_tokens"] / tokens if tokens else 0.5
