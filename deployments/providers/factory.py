"""Providers and the router, built from the routing and pricing settings."""

from __future__ import annotations

import redis.asyncio as aioredis
from ray.serve.handle import DeploymentHandle

from core.pricing import price_of
from core.setting_groups import PricingSettings, RoutingSettings
from core.tokens import TokenCounter
from deployments.providers.anthropic_http import AnthropicProvider
from deployments.providers.base import Provider
from deployments.providers.openai_http import OpenAIProvider
from deployments.providers.retry import RetryPolicy
from deployments.providers.router import ProviderRouter
from deployments.providers.routing import LoadStats, strategy
from deployments.providers.self_hosted import ServeLLMEngine
from state.breaker import BreakerPolicy, CircuitBreaker


def build_providers(
    routing: RoutingSettings,
    pricing: PricingSettings,
    llms: dict[str, DeploymentHandle],
    adapters: dict[str, str] | None = None,
) -> list[Provider]:
    """`llms`: the self-hosted models' deployments by model name; `adapters`: every name of their LoRA adapters
    -> the adapter's id on the engine ('<model>:<adapter>')."""
    providers: list[Provider] = []
    for config in routing.providers:
        price = price_of(config, pricing)
        if config.kind == "self_hosted":
            # One provider per model (its own breaker, load and TTFT): the first keeps the configured name, the
            # others are '<name>/<model>'.
            for i, (model, handle) in enumerate(llms.items()):
                own = {name: id_ for name, id_ in (adapters or {}).items() if id_.split(":", 1)[0] == model}
                name = config.name if i == 0 else f"{config.name}/{model}"
                health = "engine" if i == 0 else f"engine:{model}"
                providers.append(ServeLLMEngine(handle, model, own, name=name, price=price, health_name=health))
        elif config.kind == "openai":
            providers.append(OpenAIProvider(config, price))
        else:
            providers.append(AnthropicProvider(config, price))
    return providers


def breaker_policy(routing: RoutingSettings) -> BreakerPolicy:
    return BreakerPolicy(routing.breaker_failures, routing.breaker_window_s, routing.breaker_open_s)


def build_router(
    routing: RoutingSettings,
    providers: list[Provider],
    client: aioredis.Redis | None,
    redis_prefix: str,
    self_hosted_slots: int | dict[str, int],
    tokens: TokenCounter | None = None,
) -> ProviderRouter:
    """`self_hosted_slots`: requests this orchestrator replica may keep on the self-hosted replicas before they
    queue (cost_aware spills past it), in all or per model."""
    breaker = CircuitBreaker(client, redis_prefix, breaker_policy(routing)) if client is not None else None
    per_model = self_hosted_slots if isinstance(self_hosted_slots, dict) else {}
    stats = LoadStats(
        self_hosted_slots=max(1, sum(per_model.values()) if per_model else int(self_hosted_slots)),
        ttft_target_s=routing.ttft_target_s,
        slots={p.name: per_model[p.model] for p in providers if getattr(p, "model", None) in per_model},
    )
    configs = {c.name: c for c in routing.providers}
    config_of = {p.name: configs[p.name.split("/", 1)[0] if p.name not in configs else p.name] for p in providers}
    return ProviderRouter(
        providers,
        strategy(routing.strategy),
        stats,
        breaker,
        RetryPolicy(routing.retry_max_attempts, routing.retry_base_s, routing.retry_max_wait_s),
        routing.request_deadline_s,
        {name: c.first_token_timeout_s for name, c in config_of.items()},
        tokens or TokenCounter(),
        {name: c.idle_timeout_s for name, c in config_of.items()},
    )
