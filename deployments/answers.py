"""An answer's chunks as the OpenAI shapes the API returns: the whole `chat.completion` folded from its stream
(one code path for both modes, and for a stored answer read back from its journal)."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.chat_features import ChoiceLogprobs, TokenLogprob, ToolCallDelta, merge_tool_call_deltas
from core.errors import ServiceUnavailable
from core.models import AnswerMessage, ChatChunk, ChatResponse, Choice, ChunkChoice, Usage


@dataclass
class _Folding:
    """One choice as it adds up."""

    text: list[str] = field(default_factory=list)
    calls: list[ToolCallDelta] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish: str | None = None

    def add(self, choice: ChunkChoice) -> None:
        self.text.append(choice.delta.content or "")
        self.calls.extend(choice.delta.tool_calls or [])
        if choice.logprobs is not None:
            self.logprobs = [*(self.logprobs or []), *(choice.logprobs.content or [])]
        self.finish = choice.finish_reason or self.finish

    def choice(self, index: int) -> Choice:
        text = "".join(self.text)
        calls = merge_tool_call_deltas(self.calls) or None
        message = AnswerMessage(content=text if text or not calls else None, tool_calls=calls)
        logprobs = ChoiceLogprobs(content=self.logprobs) if self.logprobs is not None else None
        return Choice(index=index, message=message, logprobs=logprobs, finish_reason=self.finish)


def fold(chunks: list[ChatChunk], conversation_id: str | None = None) -> ChatResponse:
    """The `chat.completion` a stream of chunks adds up to."""
    choices: dict[int, _Folding] = {}
    usage, head, tail = Usage(), None, None
    for chunk in chunks:
        head = head or chunk
        for choice in chunk.choices:
            choices.setdefault(choice.index, _Folding()).add(choice)
        if chunk.usage is not None:
            usage, tail = chunk.usage, chunk
    if head is None:
        raise ServiceUnavailable("the answer has no output (yet)")
    return ChatResponse(
        id=head.id,
        created=head.created,
        model=head.model,
        choices=[folding.choice(index) for index, folding in sorted(choices.items())] or [_Folding().choice(0)],
        usage=usage,
        conversation_id=conversation_id if conversation_id is not None else head.conversation_id,
        citations=head.citations or [],
        provider=tail.provider if tail else head.provider,
        cost_usd=tail.cost_usd if tail else None,
    )
