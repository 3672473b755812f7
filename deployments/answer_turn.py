"""What an answer's run is made of: the turn prepare decided (everything a takeover needs, journaled) and the
services every run of an orchestrator replica shares."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.models import Caller, ChatChunk, ChatRequest, ChunkChoice, Citation
from core.tokens import TokenCounter
from deployments.providers.base import EngineDelta, GenerationParams
from deployments.providers.router import ProviderRouter, RoutedStream
from deployments.run_metrics import Timing
from state.conversations import ConversationStore
from state.journal import Built, Journal
from state.limits import Limiter
from state.response_cache import ResponseCache


@dataclass
class Turn:
    """What prepare decided for one answer; everything a takeover needs is in `record()` (journaled)."""

    request: ChatRequest
    caller: Caller
    chunk_id: str
    prompt: list[dict[str, Any]] | str  # chat messages, or a raw /v1/completions prompt
    params: GenerationParams
    citations: list[Citation]
    created: int = field(default_factory=lambda: int(time.time()))
    timing: Timing = field(default_factory=Timing)
    cache_key: str | None = None  # a deterministic request's key in the response cache
    cached: list[dict[str, Any]] | None = None  # the cached answer's chunks (a hit)

    @property
    def conversation_id(self) -> str | None:
        return self.request.conversation_id

    def chunk(self, **fields: Any) -> ChatChunk:
        return ChatChunk(id=self.chunk_id, created=self.created, model=self.request.model, **fields)

    def delta_chunk(self, d: EngineDelta) -> ChatChunk | Built:
        """One step of one choice as a chunk. A text step (nearly every token) is built as the dict and the JSON
        that `ChatChunk.model_dump(_json)(exclude_none=True)` would give, without a model per token; a step with
        tool calls or log probabilities goes through the models."""
        if d.tool_calls or d.logprobs:
            return self.chunk(choices=[_choice(d)])
        choice: dict[str, Any] = {"index": d.index, "delta": {"content": d.text} if d.text else {}}
        if d.finish_reason is not None:
            choice["finish_reason"] = d.finish_reason
        body = {
            "id": self.chunk_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.request.model,
            "choices": [choice],
        }
        return body, json.dumps(body, ensure_ascii=False, separators=(",", ":"))

    def record(self) -> dict[str, Any]:
        return {
            "request": self.request.model_dump(mode="json", exclude_none=True),
            "prompt": self.prompt,
            "params": self.params.__dict__,
            "citations": [c.model_dump() for c in self.citations],
            "created": self.created,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any], caller: Caller, chunk_id: str) -> Turn:
        return cls(
            request=ChatRequest.model_validate(record["request"]),
            caller=caller,
            chunk_id=chunk_id,
            prompt=record["prompt"],
            params=GenerationParams(**record["params"]),
            citations=[Citation(**c) for c in record["citations"]],
            created=int(record["created"]),
        )


@dataclass
class RunServices:
    """What runs use, made once per orchestrator replica."""

    router: ProviderRouter
    journal: Journal
    conversations: ConversationStore
    limiter: Limiter
    tokens: TokenCounter
    finished: Callable[[Turn, RoutedStream, str], None]  # metrics and provider usage
    cache: ResponseCache | None = None  # answers of deterministic requests, kept and replayed
    hit_cost: float = 0.0  # what a cache hit is charged, as a fraction of what its answer first cost
    grace_s: float = 30.0
    retry_s: float = 120.0  # how long a Redis write (journal, commit, settle) is retried before it is given up
    coalesce_s: float = 0.0  # chunks within this of the previous journal write wait to go with the next one


def _choice(d: EngineDelta) -> ChunkChoice:
    delta = {"content": d.text or None, "tool_calls": d.tool_calls}
    return ChunkChoice.model_validate(
        {"index": d.index, "delta": delta, "logprobs": d.logprobs, "finish_reason": d.finish_reason}
    )
