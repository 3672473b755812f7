"""What every provider is: `stream(messages, params, request_id)` yielding lists of EngineDelta, and the one
failure type the router acts on. A final assistant message in `messages` means "continue this answer"."""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from core.models import Usage
from core.pricing import Price


@dataclass(frozen=True)
class EngineDelta:
    """One step of a generation: new text, and on the last steps the finish reason and usage."""

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


def delta_from_chunk(payload: dict) -> EngineDelta | None:
    """An OpenAI `chat.completion.chunk` payload as one delta (None when it carries nothing)."""
    usage = Usage(**payload["usage"]) if payload.get("usage") else None
    text, finish = "", None
    for choice in payload.get("choices") or []:
        text += (choice.get("delta") or {}).get("content") or ""
        finish = choice.get("finish_reason") or finish
    return EngineDelta(text=text, finish_reason=finish, usage=usage) if text or finish or usage else None


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
    ):
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.status = status
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.client_error = client_error  # the request itself is bad: no other provider will do better
        # Its replica or engine died and is being replaced: worth waiting for, up to the request's deadline.
        self.recovering = recovering


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
    name: str
    kind: str
    price: Price

    def serves(self, model: str) -> bool: ...

    def stream(
        self, model: str, messages: list[dict[str, str]], params: GenerationParams, request_id: str
    ) -> AsyncIterator[list[EngineDelta]]: ...

    async def check_health(self) -> None: ...

    async def aclose(self) -> None: ...
