"""An answer's chunks as the OpenAI shapes the API returns: the whole `chat.completion` folded from its stream
(one code path for both modes, and for a stored answer read back from its journal)."""

from __future__ import annotations

from core.errors import ServiceUnavailable
from core.models import ChatChunk, ChatMessage, ChatResponse, Choice, Usage


def fold(chunks: list[ChatChunk], conversation_id: str | None = None) -> ChatResponse:
    """The `chat.completion` a stream of chunks adds up to."""
    text, finish, usage, head, tail = [], None, Usage(), None, None
    for chunk in chunks:
        head = head or chunk
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
        if chunk.usage is not None:
            usage, tail = chunk.usage, chunk
    if head is None:
        raise ServiceUnavailable("the answer has no output (yet)")
    return ChatResponse(
        id=head.id,
        created=head.created,
        model=head.model,
        choices=[Choice(message=ChatMessage(role="assistant", content="".join(text)), finish_reason=finish)],
        usage=usage,
        conversation_id=conversation_id if conversation_id is not None else head.conversation_id,
        citations=head.citations or [],
        provider=tail.provider if tail else head.provider,
        cost_usd=tail.cost_usd if tail else None,
    )
