"""Prompt building: stored history + retrieved context + the request's messages, within the context window.

Retrieved context goes into the *last user message* (not a system message): small instruct models follow
context next to the question far better, and the request's own system prompt stays untouched. The stored
turn keeps the user's original words, so context never accumulates in the history.
"""

from __future__ import annotations

from serve_app.models import ChatMessage, Citation

# A deliberately conservative characters-per-token estimate (English BPE averages ~4): trimming a little
# too much history is better than a context-length error from the engine.
CHARS_PER_TOKEN = 3


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


def _chars(messages: list[ChatMessage]) -> int:
    return sum(len(m.content) + 8 for m in messages)  # + role and template tokens


def trim_history(history: list[ChatMessage], budget_chars: int) -> list[ChatMessage]:
    """Drop the oldest messages until the history fits; never start on an assistant message."""
    kept = list(history)
    while kept and (_chars(kept) > budget_chars or kept[0].role == "assistant"):
        kept.pop(0)
    return kept


def build_prompt(
    history: list[ChatMessage],
    messages: list[ChatMessage],
    citations: list[Citation],
    *,
    max_model_len: int,
    max_tokens: int,
) -> list[dict[str, str]]:
    """Messages for the engine: request system messages first, then history, then the new turn."""
    system = [m for m in messages if m.role in ("system", "developer")]
    turn = [m for m in messages if m.role not in ("system", "developer")]
    if citations:
        last_user = max((i for i, m in enumerate(turn) if m.role == "user"), default=None)
        if last_user is not None:
            original = turn[last_user]
            turn[last_user] = original.model_copy(update={"content": augment_question(original.content, citations)})
    budget = (max_model_len - max_tokens) * CHARS_PER_TOKEN - _chars(system) - _chars(turn)
    kept = trim_history(history, max(0, budget))
    out = []
    for m in [*system, *kept, *turn]:
        role = "system" if m.role == "developer" else m.role
        out.append({"role": role, "content": m.content})
    return out


def retrieval_query(messages: list[ChatMessage]) -> str | None:
    """What we search for: the request's last user message."""
    for m in reversed(messages):
        if m.role == "user" and m.content.strip():
            return m.content
    return None
