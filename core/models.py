"""Typed request/response models: the contract for HTTP (OpenAI-compatible JSON) and Python handle callers.

Our extensions to the OpenAI schema (`conversation_id`, `rag`, `citations`) travel as extra body fields
and are echoed in responses, so the stock `openai` SDK works unchanged (`extra_body=`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from core.chat_features import (
    MAX_CHOICES,
    MAX_TOOLS,
    ChoiceLogprobs,
    ResponseFormat,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
)
from core.names import CONVERSATION_ID_RE, CONVERSATION_ID_RULE
from core.refusals import UNSERVED, refuse_unless_off

# OpenAI request fields this server does not serve yet, each with the test for its "off" value: sent off, a field
# is accepted (clients and frameworks send defaults); sent on, it is a 400 naming it (`unsupported_parameter`),
# never silently dropped (a structured-output library would get a wrong answer, not an error).
_OFF_VALUES: dict[str, Callable[[Any], bool]] = {
    "functions": lambda v: v in (None, []),
    "function_call": lambda v: v in (None, "none", "auto"),
    "audio": lambda v: v is None,
    "modalities": lambda v: v in (None, ["text"]),
    "prediction": lambda v: v is None,
    "reasoning_effort": lambda v: v is None,
    "web_search_options": lambda v: v is None,
}
_MESSAGE_OFF_VALUES: dict[str, Callable[[Any], bool]] = {
    "function_call": lambda v: v is None,
    "audio": lambda v: v is None,
    "refusal": lambda v: v is None,
}
_UNSERVED = UNSERVED


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class Caller(BaseModel):
    """Who a request acts for, and what its answer is filed under: decided by the ingress from the API key, never
    from the request body. In-cluster Python callers (trusted, no key) act for the tenant they name."""

    tenant: str
    key_id: str = "internal"
    admin: bool = False
    response_id: str = Field(default_factory=lambda: new_id("chatcmpl"), description="The answer's id (journal).")
    reservation_id: str | None = Field(None, description="The limit reservation its answer settles, if any.")
    journal: bool = Field(True, description="Journal the answer (resumable); batch requests are not.")
    detached: bool = Field(False, description="Runs to its end though nobody follows it (background responses).")
    kind: Literal["chat", "text", "messages", "responses"] = Field(
        "chat",
        description="The API it came by (the shape of its answer); text: a /v1/completions prompt, sent raw.",
    )
    traceparent: str | None = Field(None, description="W3C traceparent of the span that asked for it (tracing).")
    request_id: str | None = Field(None, description="The HTTP request's x-request-id (logs and W&B rows).")
    response_cache: bool | None = Field(
        None, description="Its deterministic answers may come from the response cache (None: the server's default)."
    )
    unjournaled: bool = Field(
        False,
        description="Its response id was minted for this very request: no journal can hold it yet, so the "
        "orchestrator does not look before it opens one (never journaled itself).",
    )


class ChatMessage(BaseModel):
    """One chat message. Content parts (lists of {type: text}) are flattened to text; an assistant message that
    only calls tools has empty content. A `tool` message answers one of the assistant's calls by its id."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str = Field("", max_length=1_000_000)
    name: str | None = None
    tool_calls: list[ToolCall] | None = Field(None, max_length=MAX_TOOLS)
    tool_call_id: str | None = Field(None, min_length=1, max_length=128)
    function_call: Any = Field(None, description=f"{_UNSERVED}.")
    audio: Any = Field(None, description=f"{_UNSERVED}.")
    refusal: Any = Field(None, description=f"{_UNSERVED}.")

    @field_validator("role", mode="before")
    @classmethod
    def _function_role(cls, value: Any) -> Any:
        if value == "function":
            raise PydanticCustomError("unsupported_parameter", "function messages (deprecated) are " + _UNSERVED)
        return value

    @model_validator(mode="after")
    def _tool_fields(self) -> ChatMessage:
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        if self.role != "tool" and self.tool_call_id is not None:
            raise ValueError("tool_call_id is only for tool messages")
        if self.role != "assistant" and self.tool_calls:
            raise ValueError("tool_calls are only for assistant messages")
        return self

    def engine_message(self) -> dict[str, Any]:
        """As the engine and the OpenAI-compatible providers take it (developer is system for them)."""
        message: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message

    @field_validator(*_MESSAGE_OFF_VALUES, mode="before")
    @classmethod
    def _unserved(cls, value: Any, info: ValidationInfo) -> None:
        return refuse_unless_off(_MESSAGE_OFF_VALUES, value, info.field_name)

    @field_validator("content", mode="before")
    @classmethod
    def _flatten_parts(cls, value: Any) -> Any:
        if value is None:
            return ""
        if isinstance(value, list):
            texts = []
            for part in value:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError("only text content parts ({'type': 'text', 'text': ...}) are supported")
                texts.append(part["text"])
            return "".join(texts)
        return value


class RagOptions(BaseModel):
    """Retrieval options for one request. `rag: false` in the body turns retrieval off."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    collection: str | None = Field(None, description="Chroma collection; default from settings.")
    top_k: int | None = Field(None, ge=1, le=50)
    min_score: float | None = Field(None, ge=-1, le=1)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """OpenAI chat completion request plus our extensions. An unknown field is a 400 naming it, as OpenAI answers
    ("Unrecognized request argument supplied"); an OpenAI field this server does not serve yet is a 400 unless
    sent with its off value (`_OFF_VALUES`)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    messages: list[ChatMessage] = Field(..., min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    n: int | None = Field(None, ge=1, le=MAX_CHOICES, description="Choices, each reserved against the limits.")
    user: str | None = None
    metadata: dict[str, str] | None = Field(None, max_length=16, description="Kept with the stored answer.")
    store: bool | None = Field(None, description="Answers are always stored for state.journal_ttl_s (resume).")
    tools: list[Tool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: Any = Field(None, description=f"{_UNSERVED}: 400 unless empty.")
    function_call: Any = Field(None, description=f"{_UNSERVED}: 400 unless 'none' or 'auto'.")
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    logit_bias: dict[str, float] | None = Field(None, max_length=300)
    audio: Any = Field(None, description=f"{_UNSERVED}.")
    modalities: Any = Field(None, description=f"{_UNSERVED}: 400 unless ['text'].")
    prediction: Any = Field(None, description=f"{_UNSERVED}.")
    reasoning_effort: Any = Field(None, description=f"{_UNSERVED}.")
    web_search_options: Any = Field(None, description=f"{_UNSERVED}.")
    # --- extensions -------------------------------------------------------------------------------
    conversation_id: str | None = Field(None, description="Stored turns are prepended; the turn is saved.")
    rag: RagOptions | None = None
    request_id: str | None = Field(None, description="Set by the ingress from x-request-id.")

    @field_validator(*_OFF_VALUES, mode="before")
    @classmethod
    def _unserved(cls, value: Any, info: ValidationInfo) -> None:
        return refuse_unless_off(_OFF_VALUES, value, info.field_name)

    @field_validator("rag", mode="before")
    @classmethod
    def _rag_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return {"enabled": value}
        return value

    @field_validator("conversation_id")
    @classmethod
    def _conversation_id(cls, value: str | None) -> str | None:
        if value is not None and not CONVERSATION_ID_RE.match(value):
            raise ValueError(f"conversation_id must be {CONVERSATION_ID_RULE}")
        return value

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for token, bias in (value or {}).items():
            if not token.isdigit() or not -100 <= bias <= 100:
                raise ValueError("logit_bias maps token ids (digits) to a bias from -100 to 100")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return value

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice(cls, value: ToolChoice | None, info: ValidationInfo) -> ToolChoice | None:
        tools = info.data.get("tools") or []
        if value not in (None, "none", "auto") and not tools:
            raise ValueError(f"tool_choice {value if isinstance(value, str) else 'naming a function'} needs tools")
        if (
            value is not None
            and not isinstance(value, str)
            and value.function.name not in {t.function.name for t in tools}
        ):
            raise ValueError(f"tool_choice names {value.function.name!r}, which is not among the tools")
        return value

    @model_validator(mode="after")
    def _one_max_tokens(self) -> ChatRequest:
        if self.max_tokens is None and self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self

    @property
    def choices(self) -> int:
        return self.n or 1

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class Citation(BaseModel):
    """A retrieved chunk that went into the prompt."""

    source: str
    chunk_id: str
    score: float
    text: str | None = None


class AnswerMessage(BaseModel):
    """The assistant's message in a whole answer: content null when it only calls tools (as OpenAI answers)."""

    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None

    def stored(self) -> ChatMessage:
        return ChatMessage(role="assistant", content=self.content or "", tool_calls=self.tool_calls or None)


class Choice(BaseModel):
    index: int = 0
    message: AnswerMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatResponse(BaseModel):
    """OpenAI `chat.completion` plus `conversation_id` and `citations`."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    conversation_id: str | None = None
    citations: list[Citation] = Field(default_factory=list)
    provider: str | None = Field(None, description="Who answered ('a+b' when one failed over to the other).")
    cost_usd: float | None = Field(None, description="What the answer cost, over every provider that worked on it.")


class Delta(BaseModel):
    role: str | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatChunk(BaseModel):
    """OpenAI `chat.completion.chunk`. The first chunk carries `conversation_id` and `citations`;
    the usage-only chunk has no choices (as OpenAI's `include_usage` does)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChunkChoice] = Field(default_factory=list)
    usage: Usage | None = None
    conversation_id: str | None = None
    citations: list[Citation] | None = None
    provider: str | None = None
    cost_usd: float | None = None


class ConversationMessages(BaseModel):
    id: str
    object: Literal["conversation"] = "conversation"
    messages: list[ChatMessage]


class ConversationSummary(BaseModel):
    id: str
    object: Literal["conversation"] = "conversation"
    updated_at: int = Field(..., description="When its last turn was stored (unix seconds).")
    messages: int = Field(..., description="Messages kept (older ones are trimmed past the retention caps).")


class ConversationList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ConversationSummary]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class IngestDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = Field(..., min_length=1, max_length=1024)
    text: str = Field(..., max_length=20_000_000)


class IngestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    collection: str | None = None
    documents: list[IngestDocument] = Field(..., min_length=1, max_length=1000)


class IngestResult(BaseModel):
    source: str
    status: Literal["added", "replaced", "unchanged", "empty"]
    chunks: int


class IngestResponse(BaseModel):
    object: Literal["list"] = "list"
    collection: str
    data: list[IngestResult]


class CollectionInfo(BaseModel):
    id: str = Field(..., description="The name requests use: the tenant's own, or 'shared.<name>'.")
    object: Literal["rag.collection"] = "rag.collection"
    shared: bool = False
    chunks: int


class DocumentInfo(BaseModel):
    source: str
    object: Literal["rag.document"] = "rag.document"
    chunks: int
    content_sha256: str


class DocumentChunk(BaseModel):
    chunk_id: str
    index: int
    text: str


class DocumentDetail(DocumentInfo):
    collection: str
    data: list[DocumentChunk]
