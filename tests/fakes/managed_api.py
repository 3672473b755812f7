"""Local fake managed APIs speaking the real OpenAI and Anthropic streaming protocols over real HTTP, with
scriptable faults: status codes with Retry-After, delays before the first token, disconnects mid-stream.

    with serve_fake("openai") as fake:          # fake.url, fake.script
        fake.script.faults.append(Fault(status=429, retry_after="1"))
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class Fault:
    status: int | None = None  # answer with this status instead of a stream
    retry_after: str | None = None  # Retry-After header value
    retry_after_ms: str | None = None  # retry-after-ms header value (OpenAI)
    ttft_s: float = 0.0  # wait this long before the first token
    disconnect_after: int | None = None  # drop the connection after this many tokens


@dataclass
class Script:
    text: str = "The answer is forty-two, as the script says."
    continuation: str | None = None  # answer to a prefill that is not a prefix of `text`
    faults: deque[Fault] = field(default_factory=deque)  # one per request, then healthy answers
    requests: list[tuple[float, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    token_delay_s: float = 0.0
    tool_input: dict[str, Any] | None = None  # Anthropic: a forced tool choice calls its tool with this input

    def answer(self, prefill: str) -> str:
        if not prefill:
            return self.text
        stripped = prefill.rstrip()
        if self.text.startswith(stripped):
            return self.text[len(stripped) :]
        return self.continuation if self.continuation is not None else self.text


def _tokens(text: str) -> list[str]:
    return re.findall(r"\s*\S+", text) or ([text] if text else [])


def _prefill(messages: list[dict[str, Any]]) -> str:
    return messages[-1]["content"] if messages and messages[-1].get("role") == "assistant" else ""


async def _tokens_with_faults(script: Script, fault: Fault, text: str) -> AsyncIterator[str]:
    if fault.ttft_s:
        await asyncio.sleep(fault.ttft_s)
    for i, token in enumerate(_tokens(text)):
        if fault.disconnect_after is not None and i >= fault.disconnect_after:
            raise ConnectionAbortedError("scripted disconnect")  # uvicorn drops the connection mid-body
        if i and script.token_delay_s:
            await asyncio.sleep(script.token_delay_s)
        yield token


def _fault_response(fault: Fault, kind: str) -> Response | None:
    if fault.status is None:
        return None
    headers = {}
    if fault.retry_after is not None:
        headers["retry-after"] = fault.retry_after
    if fault.retry_after_ms is not None:
        headers["retry-after-ms"] = fault.retry_after_ms
    if kind == "anthropic":
        error_type = {429: "rate_limit_error", 529: "overloaded_error", 400: "invalid_request_error"}.get(
            fault.status, "api_error"
        )
        body = {"type": "error", "error": {"type": error_type, "message": f"scripted {fault.status}"}}
    else:
        body = {"error": {"message": f"scripted {fault.status}", "type": "server_error", "param": None, "code": None}}
    return JSONResponse(body, status_code=fault.status, headers=headers)


async def _intake(script: Script, request: Request, kind: str) -> tuple[dict, Fault, Response | None]:
    """Record the request, take its scripted fault, and the error response that fault calls for (if any)."""
    body = await request.json()
    script.requests.append((time.monotonic(), body, dict(request.headers)))
    fault = script.faults.popleft() if script.faults else Fault()
    return body, fault, _fault_response(fault, kind)


def openai_app(script: Script) -> Starlette:
    async def chat(request: Request) -> Response:
        body, fault, failed = await _intake(script, request, "openai")
        if failed is not None:
            return failed
        text = script.answer(_prefill(body["messages"]))
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": 0}
        base["model"] = body["model"]

        async def frames() -> AsyncIterator[str]:
            n = 0
            async for token in _tokens_with_faults(script, fault, text):
                n += 1
                yield f"data: {json.dumps({**base, 'choices': [{'index': 0, 'delta': {'content': token}}]})}\n\n"
            yield f"data: {json.dumps({**base, 'choices': [{'index': 0, 'delta': {}, 'finish_reason': 'stop'}]})}\n\n"
            prompt = sum(len(m["content"]) for m in body["messages"]) // 4
            usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
            yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(frames(), media_type="text/event-stream")

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": []})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models)])


def anthropic_app(script: Script) -> Starlette:
    async def messages(request: Request) -> Response:
        body, fault, failed = await _intake(script, request, "anthropic")
        if failed is not None:
            return failed
        text = script.answer(_prefill(body["messages"]))

        def event(name: str, data: dict) -> str:
            return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n"

        forced = (body.get("tool_choice") or {}).get("type") in ("any", "tool") and script.tool_input is not None

        async def tool_use() -> AsyncIterator[str]:
            name = body["tool_choice"].get("name") or body["tools"][0]["name"]
            block = {"type": "tool_use", "id": "toolu_fake1", "name": name, "input": {}}
            yield event("content_block_start", {"index": 0, "content_block": block})
            arguments = json.dumps(script.tool_input)
            for piece in (arguments[: len(arguments) // 2], arguments[len(arguments) // 2 :]):
                yield event(
                    "content_block_delta", {"index": 0, "delta": {"type": "input_json_delta", "partial_json": piece}}
                )
            yield event("content_block_stop", {"index": 0})
            yield event("message_delta", {"delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}})
            yield event("message_stop", {})

        async def frames() -> AsyncIterator[str]:
            prompt = (len(body.get("system", "")) + sum(len(str(m["content"])) for m in body["messages"])) // 4
            yield event("message_start", {"message": {"id": "msg_fake", "usage": {"input_tokens": prompt}}})
            if forced:
                async for frame in tool_use():
                    yield frame
                return
            yield event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
            n = 0
            async for token in _tokens_with_faults(script, fault, text):
                n += 1
                yield event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": token}})
            yield event("content_block_stop", {"index": 0})
            yield event("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": n}})
            yield event("message_stop", {})

        return StreamingResponse(frames(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])])


@dataclass
class RunningFake:
    url: str
    script: Script


@contextlib.contextmanager
def serve_fake(kind: str, script: Script | None = None, host: str = "127.0.0.1") -> Iterator[RunningFake]:
    """`host`: the address it listens on (a bridge's, for Ray nodes in network namespaces)."""
    script = script or Script()
    app = anthropic_app(script) if kind == "anthropic" else openai_app(script)
    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield RunningFake(f"http://{host}:{port}" + ("/v1" if kind == "openai" else ""), script)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
