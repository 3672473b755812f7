"""Any OpenAI-compatible chat completions endpoint (OpenAI, vLLM servers, gateways), streamed over httpx."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from deployments.providers.base import EngineDelta, GenerationParams, ProviderError, deltas_from_chunk
from deployments.providers.http_common import HTTPProvider, sse_events


class OpenAIProvider(HTTPProvider):
    kind = "openai"
    completes = True

    def _headers(self) -> dict[str, str]:
        key = self._config.api_key()
        return {"Authorization": f"Bearer {key}"} if key else {}

    def refuses(self, params: GenerationParams) -> str | None:
        return None  # the same API: every field passes through

    def request_body(
        self, model: str, messages: list[dict[str, Any]] | str, params: GenerationParams
    ) -> dict[str, Any]:
        """A chat completions body, or a completions one for a raw prompt (str)."""
        prompt = {"prompt": messages} if isinstance(messages, str) else {"messages": messages}
        body: dict[str, Any] = {
            "model": self._config.upstream_model(model),
            **prompt,
            "stream": True,
            "stream_options": {"include_usage": True},
            **params.fields(),
        }
        chat = not isinstance(messages, str)
        if chat and messages and messages[-1]["role"] == "assistant" and self._config.continuation == "vllm":
            body.update(continue_final_message=True, add_generation_prompt=False)
        return body

    async def stream(
        self, model: str, messages: list[dict[str, Any]] | str, params: GenerationParams, request_id: str
    ) -> AsyncIterator[list[EngineDelta]]:
        headers = {**self._headers(), "x-request-id": request_id}
        body = self.request_body(model, messages, params)
        path = "/completions" if isinstance(messages, str) else "/chat/completions"
        async for _, data in sse_events(self._client, self.name, path, body, headers, self._config.send_traceparent):
            if "error" in data:
                error = data["error"] or {}
                raise ProviderError(self.name, f"stream error: {error.get('message') or error}")
            deltas = deltas_from_chunk(data)
            if deltas:
                yield deltas

    async def check_health(self) -> None:
        response = await self._client.get("/models", headers=self._headers())
        if response.status_code >= 500:
            raise ProviderError(self.name, f"health check: HTTP {response.status_code}", status=response.status_code)
