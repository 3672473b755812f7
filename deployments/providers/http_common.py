"""What the HTTP providers share: a pooled async client with timeouts, and reading an SSE stream with
failures turned into ProviderError (before or after the first event)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from core.provider_config import ProviderConfig
from deployments.providers.base import Price, ProviderError, status_error
from observability import tracing


def make_client(config: ProviderConfig) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=config.max_connections, max_keepalive_connections=config.max_connections)
    timeout = httpx.Timeout(connect=config.connect_timeout_s, read=config.idle_timeout_s, write=30.0, pool=30.0)
    return httpx.AsyncClient(base_url=(config.base_url or "").rstrip("/"), limits=limits, timeout=timeout)


async def sse_events(
    client: httpx.AsyncClient,
    provider: str,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str],
    traceparent: bool = True,
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """POST and yield (event name, JSON data) per server-sent event, stopping at `[DONE]`. The provider
    attempt's span goes along as `traceparent` unless the provider is configured not to get it."""
    if traceparent:
        headers = tracing.inject(dict(headers))
    try:
        async with aconnect_sse(client, "POST", path, json=body, headers=headers) as source:
            response = source.response
            if response.status_code != 200:
                text = (await response.aread()).decode("utf-8", "replace")
                raise status_error(provider, response.status_code, response.headers, text)
            async for event in source.aiter_sse():
                if event.data == "[DONE]":
                    return
                if not event.data:
                    continue
                try:
                    data = json.loads(event.data)
                except json.JSONDecodeError as exc:
                    raise ProviderError(provider, f"malformed stream event: {event.data[:200]!r}") from exc
                yield event.event, data
    except httpx.TimeoutException as exc:
        raise ProviderError(provider, f"timed out ({type(exc).__name__})", status=408) from exc
    except (httpx.TransportError, asyncio.IncompleteReadError) as exc:
        raise ProviderError(provider, f"connection failed: {type(exc).__name__}: {exc}") from exc


class HTTPProvider:
    """What the managed providers share: name, price, config, one pooled client."""

    kind = "http"

    def __init__(self, config: ProviderConfig, price: Price):
        self.name = config.name
        self.price = price
        self._config = config
        self._client = make_client(config)

    def serves(self, model: str) -> bool:
        return self._config.upstream_model(model) is not None

    async def aclose(self) -> None:
        await self._client.aclose()
