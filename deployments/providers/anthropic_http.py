"""Anthropic's Messages API, translated both ways: OpenAI-style messages, system prompt, stop and sampling
parameters out; its stream events, stop reasons and usage back as EngineDelta."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from core.models import Usage
from deployments.providers.base import EngineDelta, GenerationParams, ProviderError
from deployments.providers.http_common import HTTPProvider, sse_events

STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}
_RETRYABLE_ERRORS = {"overloaded_error", "rate_limit_error", "api_error", "timeout_error"}


def to_anthropic(messages: list[dict[str, str]], params: GenerationParams) -> dict[str, Any]:
    """System and developer messages become `system`; consecutive turns of one role are merged (the API wants
    user and assistant to alternate, starting with user); a final assistant message is a prefill it continues."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] in ("system", "developer"))
    turns: list[dict[str, str]] = []
    for m in messages:
        if m["role"] in ("system", "developer"):
            continue
        if turns and turns[-1]["role"] == m["role"]:
            turns[-1] = {"role": m["role"], "content": turns[-1]["content"] + "\n\n" + m["content"]}
        else:
            turns.append({"role": m["role"], "content": m["content"]})
    if not turns or turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": "(continue)"})
    if turns[-1]["role"] == "assistant":  # the API rejects a prefill that ends in whitespace
        turns[-1] = {"role": "assistant", "content": turns[-1]["content"].rstrip()}
    body: dict[str, Any] = {"messages": turns, "max_tokens": params.max_tokens, "stream": True}
    if system:
        body["system"] = system
    if params.temperature is not None:
        body["temperature"] = min(params.temperature, 1.0)  # Anthropic's range is 0-1
    if params.top_p is not None:
        body["top_p"] = params.top_p
    if params.stop:
        body["stop_sequences"] = [params.stop] if isinstance(params.stop, str) else list(params.stop)
    return body


class AnthropicProvider(HTTPProvider):
    kind = "anthropic"

    def _headers(self) -> dict[str, str]:
        headers = {"anthropic-version": self._config.anthropic_version}
        key = self._config.api_key()
        if key:
            headers["x-api-key"] = key
        return headers

    async def stream(
        self, model: str, messages: list[dict[str, str]], params: GenerationParams, request_id: str
    ) -> AsyncIterator[list[EngineDelta]]:
        body = {"model": self._config.upstream_model(model), **to_anthropic(messages, params)}
        # A prefill that ended in whitespace was trimmed; put back what the continuation would otherwise lose.
        trimmed = (
            messages[-1]["content"][len(messages[-1]["content"].rstrip()) :]
            if messages[-1]["role"] == "assistant"
            else ""
        )
        prompt_tokens = 0
        async for event, data in sse_events(self._client, self.name, "/v1/messages", body, self._headers()):
            kind = data.get("type", event)
            if kind == "message_start":
                prompt_tokens = int(((data.get("message") or {}).get("usage") or {}).get("input_tokens", 0))
            elif kind == "content_block_delta":
                text = (data.get("delta") or {}).get("text") or ""
                if trimmed:
                    text = text[len(trimmed) :] if text.startswith(trimmed) else text
                    trimmed = ""
                if text:
                    yield [EngineDelta(text=text)]
            elif kind == "message_delta":
                reason = (data.get("delta") or {}).get("stop_reason")
                output = int((data.get("usage") or {}).get("output_tokens", 0))
                usage = Usage(
                    prompt_tokens=prompt_tokens, completion_tokens=output, total_tokens=prompt_tokens + output
                )
                yield [EngineDelta(finish_reason=STOP_REASONS.get(reason or "", "stop"), usage=usage)]
            elif kind == "error":
                error = data.get("error") or {}
                raise ProviderError(
                    self.name, f"stream error: {error.get('message')}", retryable=error.get("type") in _RETRYABLE_ERRORS
                )

    async def check_health(self) -> None:
        return None  # the Messages API has no free health endpoint; the circuit breaker watches real traffic
