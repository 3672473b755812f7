"""Prompt building: stored history + retrieved context + the request's messages, within the context window.

Retrieved context goes into the *last user message* (not a system message): small instruct models follow
context next to the question far better, and the request's own system prompt stays untouched. The stored
turn keeps the user's original words, so context never accumulates in the history.

The window is measured in the model's own tokens (core/tokens.py): the oldest history is dropped until the
rendered prompt plus `max_tokens` fits `max_model_len`.
"""

from __future__ import annotations

from typing import Any

from core.models import ChatMessage, ChatRequest, Citation
from core.tokens import TokenCounter
from deployments.providers.base import GenerationParams


def format_context(citations: list[Citation]) -> str:
    blocks = [f"[{i}] (source: {c.source})\n{c.text}" for i, c in enumerate(citations, start=1)]
    return "\n\n".join(blocks)


def augment_question(question: str, citations: list[Citation]) -> str:
    if not citations:
        return question
    return (
        "Use the context below to answer the question. If the context does not help, answer from what you "
        "know.\n\nContext:\n"
        f"{format_context(citations)}\n\nQuestion: {question}"
    )


def _engine_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    return [m.engine_message() for m in messages]


def _start_on_user(history: list[ChatMessage], start: int) -> int:
    """History kept from `start` never begins with an assistant or tool message (its question was dropped)."""
    while start < len(history) and history[start].role in ("assistant", "tool"):
        start += 1
    return start


def build_prompt(
    history: list[ChatMessage],
    messages: list[ChatMessage],
    citations: list[Citation],
    *,
    max_model_len: int,
    max_tokens: int,
    tokens: TokenCounter,
) -> list[dict[str, Any]]:
    """Messages for the engine: request system messages first, then as much of the history (newest kept) as
    fits, then the new turn. A turn that alone does not fit is sent whole: the engine answers with its
    context-length error."""
    system = [m for m in messages if m.role in ("system", "developer")]
    turn = [m for m in messages if m.role not in ("system", "developer")]
    if citations:
        last_user = max((i for i, m in enumerate(turn) if m.role == "user"), default=None)
        if last_user is not None:
            original = turn[last_user]
            turn[last_user] = original.model_copy(update={"content": augment_question(original.content, citations)})
    budget = max_model_len - max_tokens

    def prompt(start: int) -> list[dict[str, Any]]:
        return _engine_messages([*system, *history[_start_on_user(history, start) :], *turn])

    # The smallest number of oldest messages to drop: the prompt shrinks as more are dropped, so a binary
    # search needs about log2(len(history)) counts; the usual case (it fits) needs one.
    low, high = 0, len(history)
    while low < high:
        middle = (low + high) // 2
        if tokens.count_messages(prompt(middle)) <= budget:
            high = middle
        else:
            low = middle + 1
    return prompt(low)


def retrieval_query(messages: list[ChatMessage]) -> str | None:
    """What we search for: the request's last user message."""
    for m in reversed(messages):
        if m.role == "user" and m.content.strip():
            return m.content
    return None


def generation_params(request: ChatRequest, max_tokens: int) -> GenerationParams:
    """The request's generation fields as the providers take them (OpenAI's names and JSON)."""
    fields = request.model_dump(
        mode="json",
        exclude_none=True,
        include={
            "temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty", "n", "logprobs",
            "top_logprobs", "logit_bias", "tools", "tool_choice", "parallel_tool_calls", "response_format",
        },
    )  # fmt: skip
    # Off values are not sent: engines reject some (vLLM: "tools must not be an empty array").
    if fields.get("n") == 1:
        del fields["n"]
    if not fields.get("tools"):
        for name in ("tools", "tool_choice", "parallel_tool_calls"):
            fields.pop(name, None)
    if fields.get("response_format") == {"type": "text"}:
        del fields["response_format"]
    if not fields.get("logprobs"):
        fields.pop("logprobs", None)
        fields.pop("top_logprobs", None)
    if not fields.get("logit_bias"):
        fields.pop("logit_bias", None)
    return GenerationParams(max_tokens=max_tokens, **fields)
