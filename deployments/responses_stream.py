"""An answer's chat chunks as the Responses API's event stream, numbered by `sequence_number`:
response.created, response.in_progress, then per output item (a message, or a function call) its added / delta /
done events, then response.completed (or response.incomplete at max_output_tokens); an error after the first
event is response.failed."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from core.models import ChatChunk
from core.responses import call_item, message_item, response_object, usage_object
from deployments.frames import Batch
from deployments.http_errors import error_body

logger = logging.getLogger("llmserve.ingress")


class _Events:
    """`after`: the events up to this sequence number were sent before (a resumed stream): built, not sent."""

    def __init__(self, response_id: str, record: dict[str, Any], after: int = -1):
        self.response_id, self.record = response_id, record
        self.seq = 0
        self.after = after
        self.output: list[dict[str, Any]] = []  # finished items
        self.item: dict[str, Any] | None = None  # the item being streamed
        self.text = ""
        self.calls: set[int] = set()
        self.created_at = int(record.get("created_at") or 0) or None

    def event(self, kind: str, **data: Any) -> str:
        payload = {"type": kind, "sequence_number": self.seq, **data}
        self.seq += 1
        if payload["sequence_number"] <= self.after:
            return ""
        return f"id: {payload['sequence_number']}\nevent: {kind}\ndata: {json.dumps(payload)}\n\n"

    def response(self, status: str, **extra: Any) -> dict[str, Any]:
        return response_object(self.response_id, self.record, status, self.created_at, list(self.output), **extra)

    def start(self) -> list[str]:
        return [self.event("response.created", response=self.response("in_progress")),
                self.event("response.in_progress", response=self.response("in_progress"))]  # fmt: skip

    def open(self, item: dict[str, Any]) -> list[str]:
        out = self.close()
        self.item, self.text = item, ""
        index = len(self.output)
        out.append(self.event("response.output_item.added", output_index=index, item=item))
        if item["type"] == "message":
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            out.append(self.event("response.content_part.added", item_id=item["id"], output_index=index,
                                  content_index=0, part=part))  # fmt: skip
        return out

    def delta(self, piece: str) -> str:
        assert self.item is not None
        self.text += piece
        index = len(self.output)
        if self.item["type"] == "message":
            return self.event("response.output_text.delta", item_id=self.item["id"], output_index=index,
                              content_index=0, delta=piece, logprobs=[])  # fmt: skip
        return self.event("response.function_call_arguments.delta", item_id=self.item["id"], output_index=index,
                          delta=piece)  # fmt: skip

    def close(self) -> list[str]:
        item, index = self.item, len(self.output)
        if item is None:
            return []
        self.item = None
        if item["type"] == "message":
            done = message_item(self.response_id, self.text, "completed")
            part = done["content"][0]
            out = [self.event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                              text=self.text, logprobs=[]),
                   self.event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                              part=part)]  # fmt: skip
        else:
            done = call_item(item["call_id"], item["name"], self.text, "completed")
            out = [self.event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                              arguments=self.text, name=item["name"])]  # fmt: skip
        self.output.append(done)
        out.append(self.event("response.output_item.done", output_index=index, item=done))
        return out

    def chunk(self, chunk: ChatChunk) -> tuple[list[str], str | None]:
        out: list[str] = []
        finish = None
        for choice in chunk.choices:
            if choice.index:
                continue
            if choice.delta.content:
                if self.item is None or self.item["type"] != "message":
                    out += self.open(message_item(self.response_id, "", "in_progress"))
                out.append(self.delta(choice.delta.content))
            for call in choice.delta.tool_calls or []:
                if call.index not in self.calls:  # a new call (some upstreams repeat the id on every piece)
                    self.calls.add(call.index)
                    name = call.function.name if call.function and call.function.name else ""
                    out += self.open(call_item(call.id or f"call_{call.index}", name, "", "in_progress"))
                if call.function and call.function.arguments and self.item is not None:
                    out.append(self.delta(call.function.arguments))
            finish = choice.finish_reason or finish
        return out, finish


async def responses_sse(
    batches: AsyncIterator[Batch], request_id: str | None, response_id: str, record: dict[str, Any], after: int = -1
) -> AsyncIterator[str]:
    """The events; from the answer's first chunk on, those after sequence number `after` (a resumed stream is
    built again from the journal, so its numbers are the first stream's)."""
    events = _Events(response_id, record, after)
    started, finish, usage = False, None, None
    try:
        async for batch in batches:
            out: list[str] = []
            for _, frame in batch:
                chunk = frame.chunk
                if not started:
                    out += events.start()
                    started = True
                frames, finished = events.chunk(chunk)
                out += frames
                finish = finished or finish
                usage = chunk.usage or usage
            if "".join(out):
                yield "".join(out)
        closing = events.close()
        counted = usage_object(usage.prompt_tokens, usage.completion_tokens) if usage else None
        if finish == "length":
            whole = events.response("incomplete", usage=counted, incomplete="max_output_tokens")
            closing.append(events.event("response.incomplete", response=whole))
        else:
            closing.append(events.event("response.completed", response=events.response("completed", usage=counted)))
        yield "".join(closing)
    except Exception as exc:
        logger.warning("stream %s failed after the first event: %r", request_id, exc)
        _, body = error_body(exc, request_id)
        error = {"code": body["error"].get("code") or "server_error", "message": body["error"]["message"]}
        yield events.event("response.failed", response=events.response("failed", error=error))
