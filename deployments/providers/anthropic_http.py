"""Anthropic's Messages API, translated both ways: OpenAI-style messages (tool calls and tool results
included), system prompt, tools and tool choice, stop and sampling parameters out; its stream events (text and
tool_use blocks), stop reasons and usage back as EngineDelta. What it cannot honour (structured outputs,
logprobs, logit_bias, several choices, seed, penalties) it refuses by name, so the router picks another
provider or answers 400."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from core.models import Usage
from deployments.providers.base import EngineDelta, GenerationParams, ProviderError
from deployments.providers.http_common import HTTPProvider, sse_events

STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}
_RETRYABLE_ERRORS = {"overloaded_error", "rate_limit_error", "api_error", "timeout_error"}


# GenerationParams fields the Messages API has no equivalent for, each with the test for its off value.
_NOT_HONOURED: dict[str, Callable[[Any], bool]] = {
    "response_format": lambda v: v is None or v.get("type") == "text",
    "logprobs": lambda v: v is None or v is False,
    "top_logprobs": lambda v: v is None or v == 0,
    "logit_bias": lambda v: not v,
    "n": lambda v: v is None or v == 1,
    "seed": lambda v: v is None,
    "presence_penalty": lambda v: not v,
    "frequency_penalty": lambda v: not v,
}


def refused_field(params: GenerationParams) -> str | None:
    return next((name for name, off in _NOT_HONOURED.items() if not off(getattr(params, name))), None)


def _blocks(m: dict[str, Any]) -> list[dict[str, Any]]:
    """One OpenAI message as Anthropic content blocks: text, tool_use (assistant calls), tool_result (tool)."""
    if m["role"] == "tool":
        return [{"type": "tool_result", "tool_use_id": m["tool_call_id"], "content": m["content"]}]
    blocks: list[dict[str, Any]] = [{"type": "text", "text": m["content"]}] if m["content"] else []
    for call in m.get("tool_calls") or []:
        try:
            arguments = json.loads(call["function"]["arguments"] or "{}")
        except json.JSONDecodeError:
            arguments = {"arguments": call["function"]["arguments"]}
        blocks.append({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": arguments})
    return blocks


def _tools(params: GenerationParams) -> dict[str, Any]:
    if not params.tools:
        return {}
    tools = [
        {
            "name": t["function"]["name"],
            "description": t["function"].get("description") or "",
            "input_schema": t["function"].get("parameters") or {"type": "object", "properties": {}},
        }
        for t in params.tools
    ]
    choice = params.tool_choice or "auto"
    if isinstance(choice, dict):
        tool_choice: dict[str, Any] = {"type": "tool", "name": choice["function"]["name"]}
    else:
        tool_choice = {"type": {"auto": "auto", "required": "any", "none": "none"}[choice]}
    if params.parallel_tool_calls is False and tool_choice["type"] != "none":
        tool_choice["disable_parallel_tool_use"] = True
    return {"tools": tools, "tool_choice": tool_choice}


def to_anthropic(messages: list[dict[str, Any]], params: GenerationParams) -> dict[str, Any]:
    """System and developer messages become `system`; tool results are the user's turn; consecutive turns of one
    role are merged (the API wants user and assistant to alternate, starting with user); a final assistant
    message is a prefill it continues."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] in ("system", "developer"))
    turns: list[dict[str, Any]] = []
    for m in messages:
        if m["role"] in ("system", "developer"):
            continue
        role = "user" if m["role"] == "tool" else m["role"]
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(_blocks(m))
        else:
            turns.append({"role": role, "content": _blocks(m)})
    if not turns or turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": [{"type": "text", "text": "(continue)"}]})
    last = turns[-1]
    if last["role"] == "assistant" and last["content"] and last["content"][-1]["type"] == "text":
        # the API rejects a prefill that ends in whitespace
        last["content"][-1] = {"type": "text", "text": last["content"][-1]["text"].rstrip()}
    for turn in turns:  # plain text turns as plain strings, as most Anthropic clients send them
        if all(b["type"] == "text" for b in turn["content"]):
            turn["content"] = "\n\n".join(b["text"] for b in turn["content"])
    body: dict[str, Any] = {"messages": turns, "max_tokens": params.max_tokens, "stream": True, **_tools(params)}
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
    completes = False  # the Messages API has no raw-prompt completions

    def refuses(self, params: GenerationParams) -> str | None:
        return refused_field(params)

    def _headers(self) -> dict[str, str]:
        headers = {"anthropic-version": self._config.anthropic_version}
        key = self._config.api_key()
        if key:
            headers["x-api-key"] = key
        return headers

    async def stream(
        self, model: str, messages: list[dict[str, Any]], params: GenerationParams, request_id: str
    ) -> AsyncIterator[list[EngineDelta]]:
        body = {"model": self._config.upstream_model(model), **to_anthropic(messages, params)}
        # A prefill that ended in whitespace was trimmed; put back what the continuation would otherwise lose.
        trimmed = (
            messages[-1]["content"][len(messages[-1]["content"].rstrip()) :]
            if messages[-1]["role"] == "assistant"
            else ""
        )
        prompt_tokens = 0
        calls: dict[int, int] = {}  # content block index -> tool call index
        given: set[int] = set()  # tool_use blocks whose input came
        trace = self._config.send_traceparent
        async for event, data in sse_events(self._client, self.name, "/v1/messages", body, self._headers(), trace):
            kind = data.get("type", event)
            if kind == "message_start":
                prompt_tokens = int(((data.get("message") or {}).get("usage") or {}).get("input_tokens", 0))
            elif kind == "content_block_start" and (data.get("content_block") or {}).get("type") == "tool_use":
                block = data["content_block"]
                calls[data.get("index", 0)] = len(calls)
                named = {"name": block.get("name"), "arguments": ""}
                yield [EngineDelta(tool_calls=[{"index": len(calls) - 1, "id": block.get("id"), "type": "function",
                                                "function": named}])]  # fmt: skip
            elif kind == "content_block_delta" and (data.get("delta") or {}).get("type") == "input_json_delta":
                piece = {"arguments": data["delta"].get("partial_json") or ""}
                given.add(data.get("index", 0))
                yield [EngineDelta(tool_calls=[{"index": calls.get(data.get("index", 0), 0), "function": piece}])]
            elif kind == "content_block_stop" and data.get("index", 0) in calls and data.get("index", 0) not in given:
                empty = {"index": calls[data.get("index", 0)], "function": {"arguments": "{}"}}  # a call without input
                yield [EngineDelta(tool_calls=[empty])]
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
