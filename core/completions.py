"""OpenAI's legacy `/v1/completions` (a raw prompt continued, no chat template): request and response models,
and the chat request it runs as. It runs through the same answer path as chat (admission, limits, failover,
the journal), with the prompt sent to the engine untouched; its chunks are reshaped at the edge."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from core.chat_features import MAX_CHOICES
from core.models import ChatChunk, ChatRequest, ChatResponse, StreamOptions, Usage
from core.refusals import OffValues, refuse_unless_off

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions
_REFUSED = "not supported by this server's completions yet"
_OFF_VALUES: OffValues = {
    "logprobs": lambda v: v is None,
    "echo": lambda v: not v,
    "suffix": lambda v: v is None,
    "best_of": lambda v: v in (None, 1),
}


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    prompt: str | list[str] = Field(..., description="One prompt (a list of one is accepted).")
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(DEFAULT_MAX_TOKENS, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1, le=MAX_CHOICES)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = Field(None, max_length=300)
    user: str | None = None
    logprobs: int | None = Field(None, description=f"{_REFUSED}: 400 unless null.")
    echo: bool | None = Field(None, description=f"{_REFUSED}: 400 unless false.")
    suffix: str | None = Field(None, description=f"{_REFUSED}: 400 unless null.")
    best_of: int | None = Field(None, description=f"{_REFUSED}: 400 unless 1.")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("one prompt per request (send a list of one, or a string)")
        return value

    @field_validator(*_OFF_VALUES, mode="before")
    @classmethod
    def _refused(cls, value: Any, info: ValidationInfo) -> None:
        return refuse_unless_off(_OFF_VALUES, value, info.field_name, _REFUSED)

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def as_chat(self, request_id: str | None) -> ChatRequest:
        """The chat request it runs as: its prompt as the one user message (the orchestrator sends it raw, for a
        caller of kind `text`), no retrieval, no conversation."""
        fields = self.model_dump(
            exclude_none=True, exclude={"prompt", "logprobs", "echo", "suffix", "best_of", "stream_options"}
        )
        if self.stream_options is not None:
            fields["stream_options"] = self.stream_options
        return ChatRequest(
            **fields, messages=[{"role": "user", "content": self.text}], rag=False, request_id=request_id
        )


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    provider: str | None = None
    cost_usd: float | None = None


def completion_chunk(chunk: ChatChunk) -> Completion:
    """A chat chunk as the `text_completion` chunk OpenAI streams (the role-only first chunk has empty text)."""
    choices = [
        CompletionChoice(index=c.index, text=c.delta.content or "", finish_reason=c.finish_reason)
        for c in chunk.choices
    ]
    return Completion(
        id=chunk.id, created=chunk.created, model=chunk.model, choices=choices, usage=chunk.usage,
        provider=chunk.provider, cost_usd=chunk.cost_usd,
    )  # fmt: skip


def whole_completion(answer: ChatResponse) -> Completion:
    choices = [
        CompletionChoice(index=c.index, text=c.message.content or "", finish_reason=c.finish_reason)
        for c in answer.choices
    ]
    return Completion(
        id=answer.id, created=answer.created, model=answer.model, choices=choices,
        usage=answer.usage, provider=answer.provider, cost_usd=answer.cost_usd,
    )  # fmt: skip
