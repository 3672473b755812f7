"""Anthropic's Messages API as an ingress (`POST /v1/messages`): its request as the chat request it runs as (text,
tool_use and tool_result blocks, tools, tool_choice, system, stop_sequences), and the whole answer back as a
`message`. Claude clients point at us unchanged and reach any provider, the self-hosted one included. The stream's
event sequence is built in deployments/messages_api.py.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from core.models import ChatRequest, ChatResponse, RagOptions
from core.refusals import OffValues, refuse_unless_off

_REFUSED = "not supported by this server yet"
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cache_control: dict[str, Any] | None = Field(None, description="Accepted; prefix caching is the engine's.")


class TextBlock(_Block):
    type: Literal["text"]
    text: str
    citations: list[Any] | None = None


class ToolUseBlock(_Block):
    type: Literal["tool_use"]
    id: str = Field(..., min_length=1, max_length=128)
    name: str
    input: dict[str, Any]


class ToolResultBlock(_Block):
    type: Literal["tool_result"]
    tool_use_id: str = Field(..., min_length=1, max_length=128)
    content: str | list[TextBlock] = ""
    is_error: bool | None = None

    @property
    def text(self) -> str:
        text = self.content if isinstance(self.content, str) else "".join(b.text for b in self.content)
        return f"Error: {text}" if self.is_error else text


Block = TextBlock | ToolUseBlock | ToolResultBlock


class MessageParam(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: str | list[Block]

    @model_validator(mode="after")
    def _blocks_of_the_role(self) -> MessageParam:
        wrong = ToolResultBlock if self.role == "assistant" else ToolUseBlock
        if isinstance(self.content, list) and any(isinstance(b, wrong) for b in self.content):
            raise ValueError(
                f"{wrong.model_fields['type'].annotation.__args__[0]} blocks do not belong in {self.role} messages"
            )
        return self


class AnthropicTool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None
    cache_control: dict[str, Any] | None = None


class AnthropicToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Metadata(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str | None = None


class OutputFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(..., alias="schema")


class OutputConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: OutputFormat | None = None
    effort: Any = Field(None, description=f"{_REFUSED}: 400 unless null.")

    @field_validator("effort", mode="before")
    @classmethod
    def _effort(cls, value: Any) -> Any:
        if value is not None:
            raise PydanticCustomError("unsupported_parameter", "effort is " + _REFUSED)
        return value


_OFF_VALUES: OffValues = {
    "top_k": lambda v: v is None,
    "thinking": lambda v: v is None or v.get("type") == "disabled",
    "container": lambda v: v is None,
    "mcp_servers": lambda v: not v,
    "diagnostics": lambda v: v is None,
    "inference_geo": lambda v: v is None,
    "speed": lambda v: v in (None, "standard"),
    "user_profile_id": lambda v: v is None,
    "workspace_id": lambda v: v is None,
}


class MessagesRequest(BaseModel):
    """Anthropic's `POST /v1/messages` body; our `conversation_id` and `rag` extensions work here too."""

    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int = Field(..., ge=1)
    messages: list[MessageParam] = Field(..., min_length=1)
    system: str | list[TextBlock] | None = None
    stop_sequences: list[str] | None = Field(None, max_length=4)
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, gt=0, le=1)
    tools: list[AnthropicTool] | None = None
    tool_choice: AnthropicToolChoice | None = None
    metadata: Metadata | None = None
    output_config: OutputConfig | None = Field(None, description="format (a JSON schema) is served; effort is not.")
    cache_control: dict[str, Any] | None = Field(None, description="Accepted; prefix caching is the engine's.")
    service_tier: str | None = None
    top_k: Any = Field(None, description=f"{_REFUSED}: 400 unless null.")
    thinking: Any = Field(None, description=f"{_REFUSED}: 400 unless disabled.")
    container: Any = Field(None, description=f"{_REFUSED}.")
    mcp_servers: Any = Field(None, description=f"{_REFUSED}.")
    diagnostics: Any = Field(None, description=f"{_REFUSED}.")
    inference_geo: Any = Field(None, description=f"{_REFUSED}.")
    speed: Any = Field(None, description=f"{_REFUSED}: 400 unless standard.")
    user_profile_id: Any = Field(None, description=f"{_REFUSED}.")
    workspace_id: Any = Field(None, description=f"{_REFUSED}.")
    conversation_id: str | None = None
    rag: RagOptions | bool | None = None

    @field_validator(*_OFF_VALUES, mode="before")
    @classmethod
    def _unserved(cls, value: Any, info: ValidationInfo) -> None:
        return refuse_unless_off(_OFF_VALUES, value, info.field_name, _REFUSED)

    def as_chat(self, request_id: str | None) -> ChatRequest:
        """The chat request it runs as (raises pydantic's ValidationError for what only chat checks)."""
        messages: list[dict[str, Any]] = []
        if self.system:
            system = self.system if isinstance(self.system, str) else "".join(b.text for b in self.system)
            messages.append({"role": "system", "content": system})
        for m in self.messages:
            messages.extend(_chat_messages(m))
        fields: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "stream": self.stream,
            "stream_options": {"include_usage": True} if self.stream else None,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": self.stop_sequences,
            "user": self.metadata.user_id if self.metadata else None,
            "conversation_id": self.conversation_id,
            "rag": self.rag,
            "request_id": request_id,
        }
        if self.output_config is not None and self.output_config.format is not None:
            schema = {"name": "output", "schema": self.output_config.format.schema_, "strict": True}
            fields["response_format"] = {"type": "json_schema", "json_schema": schema}
        if self.tools:
            fields["tools"] = [
                {"type": "function", "function": {"name": t.name, "description": t.description,
                                                  "parameters": t.input_schema}}
                for t in self.tools
            ]  # fmt: skip
        choice = self.tool_choice
        if choice is not None:
            if choice.type == "tool":
                fields["tool_choice"] = {"type": "function", "function": {"name": choice.name or ""}}
            else:
                fields["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
            if choice.disable_parallel_tool_use:
                fields["parallel_tool_calls"] = False
        return ChatRequest.model_validate({k: v for k, v in fields.items() if v is not None})


def _chat_messages(m: MessageParam) -> list[dict[str, Any]]:
    """One Anthropic message as chat messages: tool results become tool messages (before the user's text),
    tool_use blocks the assistant's tool calls."""
    if isinstance(m.content, str):
        return [{"role": m.role, "content": m.content}]
    text = "".join(b.text for b in m.content if isinstance(b, TextBlock))
    if m.role == "assistant":
        calls = [
            {"id": b.id, "type": "function", "function": {"name": b.name, "arguments": json.dumps(b.input)}}
            for b in m.content
            if isinstance(b, ToolUseBlock)
        ]
        return [{"role": "assistant", "content": text, **({"tool_calls": calls} if calls else {})}]
    out: list[dict[str, Any]] = [
        {"role": "tool", "tool_call_id": b.tool_use_id, "content": b.text}
        for b in m.content
        if isinstance(b, ToolResultBlock)
    ]
    if text or not out:
        out.append({"role": "user", "content": text})
    return out


def stop_reason(finish: str | None, called: bool) -> str:
    """Anthropic's stop reason: max_tokens first (a call cut off there is not a call to run), then tool_use."""
    if finish == "length":
        return "max_tokens"
    return "tool_use" if called else STOP_REASONS.get(finish or "stop", "end_turn")


def tool_input(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"value": value}


def message_id(response_id: str) -> str:
    return "msg_" + response_id.split("-", 1)[-1]


def whole_message(answer: ChatResponse) -> dict[str, Any]:
    """A whole chat answer as Anthropic's `message`."""
    choice = answer.choices[0]
    content: list[dict[str, Any]] = []
    if choice.message.content:
        content.append({"type": "text", "text": choice.message.content})
    for call in choice.message.tool_calls or []:
        content.append(
            {
                "type": "tool_use",
                "id": call.id,
                "name": call.function.name,
                "input": tool_input(call.function.arguments),
            }
        )
    stop = stop_reason(choice.finish_reason, bool(choice.message.tool_calls))
    return {
        "id": message_id(answer.id),
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": answer.usage.prompt_tokens, "output_tokens": answer.usage.completion_tokens},
    }
