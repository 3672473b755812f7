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
            if llms:
                providers.append(ServeLLMEngine(llms, adapters or {}, name=config.name, price=price))
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
    self_hosted_slots: int,
    tokens: TokenCounter | None = None,
) -> ProviderRouter:
    """`self_hosted_slots`: requests this orchestrator replica may keep on the self-hosted replicas before they
    queue (cost_aware spills past it)."""
    breaker = CircuitBreaker(client, redis_prefix, breaker_policy(routing)) if client is not None else None
    return ProviderRouter(
        providers,
        strategy(routing.strategy),
        LoadStats(self_hosted_slots=max(1, self_hosted_slots), ttft_target_s=routing.ttft_target_s),
        breaker,
        RetryPolicy(routing.retry_max_attempts, routing.retry_base_s, routing.retry_max_wait_s),
        routing.request_deadline_s,
        {c.name: c.first_token_timeout_s for c in routing.providers},
        tokens or TokenCounter(),
        {c.name: c.idle_timeout_s for c in routing.providers},
    )
