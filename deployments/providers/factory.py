"""Providers and the router, built from settings."""

from __future__ import annotations

import redis.asyncio as aioredis
from ray.serve.handle import DeploymentHandle

from deployments.llm import ServeLLMEngine
from deployments.providers.anthropic_http import AnthropicProvider
from deployments.providers.base import Price, Provider
from deployments.providers.openai_http import OpenAIProvider
from deployments.providers.retry import RetryPolicy
from deployments.providers.router import ProviderRouter
from deployments.providers.routing import LoadStats, strategy
from serve_app.provider_config import ProviderConfig
from serve_app.settings import Settings
from state.breaker import BreakerPolicy, CircuitBreaker


def price_of(config: ProviderConfig, settings: Settings) -> Price:
    own = config.kind == "self_hosted"
    return Price(
        input_per_mtok=config.price_input_per_mtok
        if config.price_input_per_mtok is not None
        else (settings.price_input_per_mtok if own else 0.0),
        output_per_mtok=config.price_output_per_mtok
        if config.price_output_per_mtok is not None
        else (settings.price_output_per_mtok if own else 0.0),
    )


def build_providers(settings: Settings, llm: DeploymentHandle | None) -> list[Provider]:
    providers: list[Provider] = []
    for config in settings.providers:
        price = price_of(config, settings)
        if config.kind == "self_hosted":
            if llm is not None:
                providers.append(ServeLLMEngine(llm, settings.model_name, name=config.name, price=price))
        elif config.kind == "openai":
            providers.append(OpenAIProvider(config, price))
        else:
            providers.append(AnthropicProvider(config, price))
    return providers


def build_router(settings: Settings, providers: list[Provider], client: aioredis.Redis | None) -> ProviderRouter:
    breaker = None
    if client is not None:
        policy = BreakerPolicy(settings.breaker_failures, settings.breaker_window_s, settings.breaker_open_s)
        breaker = CircuitBreaker(client, settings.redis_prefix, policy)
    slots = settings.llm_max_replicas * settings.llm_target_ongoing_requests // max(1, settings.orchestrator_replicas)
    return ProviderRouter(
        providers,
        strategy(settings.routing),
        LoadStats(self_hosted_slots=max(1, slots), ttft_target_s=settings.ttft_target_s),
        breaker,
        RetryPolicy(settings.retry_max_attempts, settings.retry_base_s, settings.retry_max_wait_s),
        settings.request_deadline_s,
        {c.name: c.first_token_timeout_s for c in settings.providers},
    )
