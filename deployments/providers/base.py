"""What every provider is: `stream(messages, params, request_id)` yielding lists of EngineDelta, and the one
failure type the router acts on. A final assistant message in `messages` means "continue this answer"."""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from core.models import Usage
from core.pricing import Price


@dataclass(frozen=True)
class EngineDelta:
    """One step of one choice of a generation: new text or tool-call pieces (OpenAI's delta `tool_calls`),
    the tokens' log probabilities (OpenAI's choice `logprobs`), and on the last steps the finish reason and
    usage (usage is the whole answer's, over every choice)."""

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    index: int = 0
    tool_calls: list[dict[str, Any]] | None = None
    logprobs: dict[str, Any] | None = None

    @property
    def output(self) -> bool:
        return bool(self.text or self.tool_calls)

    @property
    def generated(self) -> str:
        """What the model wrote in this step (text and tool-call arguments), for counting tokens."""
        arguments = "".join((c.get("function") or {}).get("arguments") or "" for c in self.tool_calls or [])
        return self.text + arguments


@dataclass(frozen=True)
class GenerationParams:
    """What shapes the generation, in OpenAI's field names and JSON (so it passes through as it is)."""

    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    n: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None

    def fields(self) -> dict[str, Any]:
        """The fields that are set, as an OpenAI request body carries them."""
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @property
    def structured(self) -> bool:
        """A grammar shapes the answer, or it has several choices: it cannot be continued from its text."""
        tools = bool(self.tools) and self.tool_choice != "none"
        shaped = self.response_format is not None and self.response_format.get("type") != "text"
        return tools or shaped or (self.n or 1) > 1


def deltas_from_chunk(payload: dict) -> list[EngineDelta]:
    """An OpenAI `chat.completion.chunk` (or `text_completion`) payload as deltas, one per choice that carries
    something; the usage, if any, on the last."""
    deltas = []
    for choice in payload.get("choices") or []:
        delta = choice.get("delta") or {}
        found = EngineDelta(
            text=delta.get("content") or choice.get("text") or "",  # chat chunk, or text_completion chunk
            finish_reason=choice.get("finish_reason"),
            index=int(choice.get("index") or 0),
            tool_calls=delta.get("tool_calls") or None,
            logprobs=choice.get("logprobs") or None,
        )
        if found.output or found.finish_reason or found.logprobs:
            deltas.append(found)
    if payload.get("usage"):
        usage = Usage(**payload["usage"])
        deltas.append(EngineDelta(usage=usage) if not deltas else replace(deltas.pop(), usage=usage))
    return deltas


# Worth another attempt (OpenAI's and Anthropic's own SDKs retry the same set; 529 is Anthropic's overload).
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})


class ProviderError(Exception):
    """A provider could not serve an attempt. `retryable`: the same request may succeed if sent again;
    `retry_after_s`: how long the provider asked us to wait; `status`: its HTTP status, if any."""

    def __init__(
        self,
        provider: str,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = True,
        retry_after_s: float | None = None,
        client_error: bool = False,
        recovering: bool = False,
        breaker: bool = True,
    ):
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.status = status
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.client_error = client_error  # the request itself is bad: no other provider will do better
        # Its replica or engine died and is being replaced: worth waiting for, up to the request's deadline.
        self.recovering = recovering
        self.breaker = breaker  # counts against the provider's circuit breaker


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """`retry-after-ms` (OpenAI), else `retry-after` as seconds or an HTTP date."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def status_error(provider: str, status: int, headers: Mapping[str, str], body: str) -> ProviderError:
    return ProviderError(
        provider,
        f"HTTP {status}: {body[:300]}",
        status=status,
        retryable=status in RETRYABLE_STATUS,
        retry_after_s=parse_retry_after(headers),
        client_error=status in (400, 413, 422),
    )


class Provider(Protocol):
    """`messages`: chat messages, or a raw prompt (str) for providers that `complete` (a completions API)."""

    name: str
    kind: str
    price: Price
    completes: bool

    def serves(self, model: str) -> bool: ...

    def refuses(self, params: GenerationParams) -> str | None:
        """The first field of `params` this provider cannot honour (None: it serves them all)."""
        ...

    def stream(
        self, model: str, messages: list[dict[str, Any]] | str, params: GenerationParams, request_id: str
    ) -> AsyncIterator[list[EngineDelta]]: ...

    async def check_health(self) -> None: ...

    async def aclose(self) -> None: ...
