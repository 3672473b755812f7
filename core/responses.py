"""OpenAI's Responses API (`/v1/responses`): the request, its input items as the chat messages they run as, and
a finished answer as a `response` object with its output items (message, function_call)."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from core.chat_features import FunctionDefinition
from core.models import ChatResponse
from core.refusals import OffValues, refuse_unless_off

_REFUSED = "not supported by this server yet"


def new_response_id() -> str:
    return f"resp_{uuid.uuid4().hex}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputText(_Strict):
    type: Literal["input_text", "output_text"]
    text: str
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


class MessageItem(_Strict):
    type: Literal["message"] = "message"
    id: str | None = None
    status: str | None = None
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputText]

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class FunctionCallItem(_Strict):
    type: Literal["function_call"]
    id: str | None = None
    status: str | None = None
    call_id: str = Field(..., min_length=1, max_length=128)
    name: str
    arguments: str


class FunctionCallOutputItem(_Strict):
    type: Literal["function_call_output"]
    id: str | None = None
    status: str | None = None
    call_id: str = Field(..., min_length=1, max_length=128)
    output: str


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem


class FunctionTool(FunctionDefinition):
    """A Responses API function tool: chat's function definition, flat, with its type."""

    type: Literal["function"]


class NamedFunction(_Strict):
    type: Literal["function"]
    name: str


class ConversationRef(_Strict):
    id: str


class TextFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(_Strict):
    format: TextFormat | None = None
    verbosity: Literal["medium"] | None = None


_OFF_VALUES: OffValues = {
    "reasoning": lambda v: v is None,
    "include": lambda v: not v,
    "prompt": lambda v: v is None,
    "max_tool_calls": lambda v: v is None,
    "top_logprobs": lambda v: not v,
    "truncation": lambda v: v in (None, "disabled"),
}


class ResponsesRequest(BaseModel):
    """`POST /v1/responses`. Our `rag` extension works here too."""

    model_config = ConfigDict(extra="forbid")

    model: str
    input: str | list[InputItem]
    instructions: str | None = None
    previous_response_id: str | None = Field(None, max_length=200)
    store: bool = True
    stream: bool = False
    tools: list[FunctionTool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    text: TextConfig | None = None
    metadata: dict[str, str] | None = Field(None, max_length=16)
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = Field(None, description="Accepted; prefix caching is the engine's.")
    service_tier: str | None = None
    background: bool = Field(False, description="Run detached: poll GET, stream it from GET, cancel it.")
    reasoning: Any = Field(None, description=f"{_REFUSED}.")
    include: Any = Field(None, description=f"{_REFUSED}: 400 unless empty.")
    conversation: str | ConversationRef | None = Field(
        None, description="A conversation (ours: /v1/conversations): its turns go first, this one is kept in it."
    )
    prompt: Any = Field(None, description=f"{_REFUSED}.")
    max_tool_calls: Any = Field(None, description=f"{_REFUSED}.")
    top_logprobs: Any = Field(None, description=f"{_REFUSED}.")
    truncation: Any = Field(None, description=f"{_REFUSED}: 400 unless disabled.")
    rag: Any = Field(None, description="Ours: retrieval options, or false.")

    @field_validator(*_OFF_VALUES, mode="before")
    @classmethod
    def _unserved(cls, value: Any, info: ValidationInfo) -> None:
        return refuse_unless_off(_OFF_VALUES, value, info.field_name, _REFUSED)

    @field_validator("conversation")
    @classmethod
    def _one_history(cls, value: str | ConversationRef | None, info: ValidationInfo) -> str | ConversationRef | None:
        if value is not None and info.data.get("previous_response_id"):
            raise ValueError("conversation and previous_response_id cannot both be given")
        return value

    @property
    def conversation_id(self) -> str | None:
        return (
            self.conversation
            if isinstance(self.conversation, str) or self.conversation is None
            else self.conversation.id
        )

    def own_messages(self) -> list[dict[str, Any]]:
        """This request's input items as chat messages (function calls merged into one assistant message)."""
        items = [MessageItem(role="user", content=self.input)] if isinstance(self.input, str) else self.input
        out: list[dict[str, Any]] = []
        for item in items:
            if isinstance(item, MessageItem):
                out.append({"role": item.role, "content": item.text})
            elif isinstance(item, FunctionCallOutputItem):
                out.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output})
            else:
                call = {"id": item.call_id, "type": "function",
                        "function": {"name": item.name, "arguments": item.arguments}}  # fmt: skip
                if out and out[-1]["role"] == "assistant" and not out[-1]["content"]:
                    out[-1].setdefault("tool_calls", []).append(call)
                else:
                    out.append({"role": "assistant", "content": "", "tool_calls": [call]})
        return out

    def chat_fields(self) -> dict[str, Any]:
        """Everything but the messages, as chat request fields."""
        fields: dict[str, Any] = {
            "model": self.model, "stream": self.stream, "max_tokens": self.max_output_tokens,
            "temperature": self.temperature, "top_p": self.top_p, "user": self.user or self.safety_identifier,
            "metadata": self.metadata, "store": self.store, "parallel_tool_calls": self.parallel_tool_calls,
            "rag": self.rag if self.rag is not None else False, "conversation_id": self.conversation_id,
        }  # fmt: skip
        if self.stream:
            fields["stream_options"] = {"include_usage": True}
        if self.tools:
            fields["tools"] = [
                {"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True)} for t in self.tools
            ]
        choice = self.tool_choice
        if choice is not None:
            named = {"type": "function", "function": {"name": getattr(choice, "name", "")}}
            fields["tool_choice"] = choice if isinstance(choice, str) else named
        form = self.text.format if self.text else None
        if form is not None and form.type == "json_schema":
            schema = {"name": form.name or "output", "schema": form.schema_ or {}, "strict": form.strict}
            fields["response_format"] = {"type": "json_schema", "json_schema": {k: v for k, v in schema.items()
                                                                                 if v is not None}}  # fmt: skip
        elif form is not None and form.type == "json_object":
            fields["response_format"] = {"type": "json_object"}
        return {k: v for k, v in fields.items() if v is not None}


def input_items(messages: list[dict[str, Any]], response_id: str) -> list[dict[str, Any]]:
    """Stored chat messages as the Responses API lists input items."""
    items: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        item_id = f"{response_id}_in{i}"
        if m["role"] == "tool":
            items.append({"type": "function_call_output", "id": item_id, "call_id": m["tool_call_id"],
                          "output": m["content"], "status": "completed"})  # fmt: skip
            continue
        if m.get("content") or not m.get("tool_calls"):
            kind = "output_text" if m["role"] == "assistant" else "input_text"
            items.append({"type": "message", "id": item_id, "role": m["role"], "status": "completed",
                          "content": [{"type": kind, "text": m["content"]}]})  # fmt: skip
        for j, call in enumerate(m.get("tool_calls") or []):
            items.append({"type": "function_call", "id": f"{item_id}_{j}", "call_id": call["id"],
                          "name": call["function"]["name"], "arguments": call["function"]["arguments"],
                          "status": "completed"})  # fmt: skip
    return items


def output_items(answer: ChatResponse) -> list[dict[str, Any]]:
    choice = answer.choices[0]
    items: list[dict[str, Any]] = []
    if choice.message.content:
        items.append(message_item(answer.id, choice.message.content, "completed"))
    for call in choice.message.tool_calls or []:
        items.append(call_item(call.id, call.function.name, call.function.arguments, "completed"))
    return items


def message_item(response_id: str, text: str, status: str) -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"type": "message", "id": f"msg_{response_id.removeprefix('resp_')}", "status": status,
            "role": "assistant", "content": [part] if status == "completed" else []}  # fmt: skip


def call_item(call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"type": "function_call", "id": f"fc_{call_id}", "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}  # fmt: skip


def response_object(
    response_id: str, request: dict[str, Any], status: str, created_at: int | None = None,
    output: list[dict[str, Any]] | None = None, usage: dict[str, Any] | None = None, error: dict | None = None,
    incomplete: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The `response` object: `request` is the stored record (what the request asked, echoed back)."""
    asked = request.get("asked", {})
    return {
        "id": response_id, "object": "response", "created_at": created_at or int(time.time()), "status": status,
        "model": asked.get("model"), "output": output or [], "instructions": request.get("instructions"),
        "previous_response_id": request.get("previous_response_id"), "tools": asked.get("tools") or [],
        "tool_choice": asked.get("tool_choice") or "auto",
        "parallel_tool_calls": asked.get("parallel_tool_calls", True),
        "temperature": asked.get("temperature"), "top_p": asked.get("top_p"),
        "max_output_tokens": asked.get("max_output_tokens"), "metadata": asked.get("metadata") or {},
        "text": asked.get("text") or {"format": {"type": "text"}}, "store": request.get("store", True),
        "truncation": "disabled", "background": bool(asked.get("background")), "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None, "usage": usage,
    }  # fmt: skip


def finished_response(response_id: str, record: dict[str, Any], whole: ChatResponse) -> dict[str, Any]:
    """A whole answer as its response object: completed, or incomplete at max_output_tokens."""
    output = output_items(whole) if whole.choices else []
    usage = usage_object(whole.usage.prompt_tokens, whole.usage.completion_tokens)
    created = record.get("created_at")
    if whole.choices and whole.choices[0].finish_reason == "length":
        return response_object(
            response_id, record, "incomplete", created, output, usage, incomplete="max_output_tokens"
        )
    return response_object(response_id, record, "completed", created, output, usage)


def usage_object(prompt: int, completion: int) -> dict[str, Any]:
    return {"input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion,
            "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}  # fmt: skip
