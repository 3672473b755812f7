"""What a journaled answer's chunks (dicts, as `ChatChunk.model_dump` wrote them) hold: the first choice's text
and finish reason, every choice's generated text, the message a conversation keeps. Read by runs, takeovers and
the response cache."""

from __future__ import annotations

from core.chat_features import ToolCallDelta, merge_tool_call_deltas
from core.models import ChatMessage
from state.journal import Event


def first_answer(events: list[Event]) -> ChatMessage:
    """The assistant message the first choice adds up to (text and tool calls), as the conversation keeps it."""
    choices = [c for e in events for c in first_choices(e.chunk)]
    calls = [ToolCallDelta.model_validate(t) for c in choices for t in (c.get("delta") or {}).get("tool_calls") or []]
    text = "".join((c.get("delta") or {}).get("content") or "" for c in choices)
    return ChatMessage(role="assistant", content=text, tool_calls=merge_tool_call_deltas(calls) or None)


def first_choices(chunk: dict) -> list[dict]:
    return [c for c in chunk.get("choices") or [] if not c.get("index")]


def text(chunk: dict) -> str:
    """The first choice's text in a journaled chunk (what a takeover continues)."""
    return "".join((c.get("delta") or {}).get("content") or "" for c in first_choices(chunk))


def generated(chunk: dict) -> str:
    """Every choice's text and tool-call arguments in a journaled chunk."""
    out = []
    for c in chunk.get("choices") or []:
        delta = c.get("delta") or {}
        out.append(delta.get("content") or "")
        out += [(t.get("function") or {}).get("arguments") or "" for t in delta.get("tool_calls") or []]
    return "".join(out)


def finished(events: list[Event]) -> set[int]:
    """The choices that have their finish reason."""
    return {c.get("index") or 0 for e in events for c in e.chunk.get("choices") or [] if c.get("finish_reason")}


def output(chunk: dict) -> bool:
    return any((c.get("delta") or {}).get("content") or (c.get("delta") or {}).get("tool_calls") for c in
               chunk.get("choices") or [])  # fmt: skip


def finish(chunk: dict) -> str | None:
    """The first choice's finish reason (the answer is whole, for the conversation, when it is)."""
    for c in chunk.get("choices") or ():  # (a loop: this runs for every token)
        if not c.get("index") and c.get("finish_reason"):
            return c["finish_reason"]
    return None
