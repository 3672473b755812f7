"""An answer's chat chunks as Anthropic's Messages stream: message_start, content blocks (text, tool_use) with
their deltas, message_delta with the stop reason and usage, message_stop; an error after the first event is an
`error` event, as Anthropic sends it."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from core.anthropic_messages import message_id, stop_reason
from core.models import ChatChunk
from deployments.frames import Batch
from deployments.http_errors import anthropic_error_body, error_body

logger = logging.getLogger("llmserve.ingress")


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n"


class _Blocks:
    """The content blocks opened so far, and the one open now."""

    def __init__(self) -> None:
        self.index = -1
        self.open: str | None = None
        self.tool_use = False
        self.calls: set[int] = set()  # tool calls (by their index) given a block

    def start(self, kind: str, block: dict[str, Any]) -> list[str]:
        out = self.close()
        self.index += 1
        self.open = kind
        self.tool_use |= kind == "tool_use"
        return [*out, _event("content_block_start", {"index": self.index, "content_block": block})]

    def delta(self, delta: dict[str, Any]) -> str:
        return _event("content_block_delta", {"index": self.index, "delta": delta})

    def close(self) -> list[str]:
        if self.open is None:
            return []
        self.open = None
        return [_event("content_block_stop", {"index": self.index})]


def _chunk_events(chunk: ChatChunk, blocks: _Blocks) -> tuple[list[str], str | None]:
    out: list[str] = []
    finish = None
    for choice in chunk.choices:
        if choice.index:  # the Messages API has one answer
            continue
        delta = choice.delta
        if delta.content:
            if blocks.open != "text":
                out += blocks.start("text", {"type": "text", "text": ""})
            out.append(blocks.delta({"type": "text_delta", "text": delta.content}))
        for call in delta.tool_calls or []:
            if call.index not in blocks.calls:  # a new call (some upstreams repeat the id on every piece)
                blocks.calls.add(call.index)
                name = call.function.name if call.function else ""
                block = {"type": "tool_use", "id": call.id or f"toolu_{call.index}", "name": name, "input": {}}
                out += blocks.start("tool_use", block)
            if call.function and call.function.arguments:
                out.append(blocks.delta({"type": "input_json_delta", "partial_json": call.function.arguments}))
        finish = choice.finish_reason or finish
    return out, finish


async def messages_sse(batches: AsyncIterator[Batch], request_id: str | None) -> AsyncIterator[str]:
    blocks, started, finish, usage = _Blocks(), False, None, None
    try:
        async for batch in batches:
            out: list[str] = []
            for _, frame in batch:
                chunk = frame.chunk
                if not started:
                    message = {"id": message_id(chunk.id), "type": "message", "role": "assistant",
                               "model": chunk.model, "content": [], "stop_reason": None, "stop_sequence": None,
                               "usage": {"input_tokens": 0, "output_tokens": 0}}  # fmt: skip
                    out.append(_event("message_start", {"message": message}))
                    started = True
                events, finished = _chunk_events(chunk, blocks)
                out += events
                finish = finished or finish
                usage = chunk.usage or usage
            if out:
                yield "".join(out)
        stop = stop_reason(finish, blocks.tool_use)
        counted = {"input_tokens": usage.prompt_tokens if usage else 0,
                   "output_tokens": usage.completion_tokens if usage else 0}  # fmt: skip
        closing = [*blocks.close(), _event("message_delta", {"delta": {"stop_reason": stop, "stop_sequence": None},
                                                             "usage": counted})]  # fmt: skip
        yield "".join([*closing, _event("message_stop", {})])
    except Exception as exc:
        logger.warning("stream %s failed after the first event: %r", request_id, exc)
        status, body = error_body(exc, request_id)
        yield _event("error", {"error": anthropic_error_body(status, body)["error"]})
