"""Fake engines for overhead benchmarks: scripted timing (TTFT, tokens/s), real OpenAI SSE and usage.

- `FakeLLMServer`: a Serve deployment with the handle interface of ray.serve.llm's LLMServer (`chat` streams
  lists of `data: {json}\\n\\n` strings, coalesced as our LLMServer does with stream batching off: every frame
  ready when Serve takes the next item, deployments/coalescing.py), so the real orchestrator and ingress run in
  front of it unchanged.
- `fake_openai_app`: the same script as an OpenAI-compatible HTTP server (`/v1/chat/completions`, stream and
  not), for calling directly and for putting other gateways (LiteLLM) in front of it.
  `python -m benchmarks.fake_engine --port 8300 --ttft-ms 0 --tokens-per-s 0`
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from deployments.coalescing import ready_batches

WORD = "tok "


async def script(max_tokens: int, ttft_s: float, tokens_per_s: float) -> AsyncIterator[str]:
    """The scripted generation: the first token after ttft_s, then one every 1/tokens_per_s (0 = no wait)."""
    start = time.perf_counter()
    if ttft_s > 0:
        await asyncio.sleep(ttft_s)
    for i in range(max_tokens):
        if i and tokens_per_s > 0:
            await asyncio.sleep(max(0.0, start + ttft_s + i / tokens_per_s - time.perf_counter()))
        yield WORD


def _frame(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _usage(messages: list[dict[str, Any]], completion: int) -> dict[str, int]:
    prompt = sum(len(str(m.get("content", ""))) // 4 + 4 for m in messages)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def sse_stream(
    model: str, messages: list[dict[str, Any]], max_tokens: int, ttft_s: float, tokens_per_s: float
) -> AsyncIterator[str]:
    """OpenAI chat.completion.chunk frames: role, one chunk per token, finish, usage, [DONE]."""
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time())}
    base["model"] = model
    n = 0
    async for text in script(max_tokens, ttft_s, tokens_per_s):
        delta = {"role": "assistant", "content": text} if n == 0 else {"content": text}
        n += 1
        yield _frame({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    yield _frame({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
    yield _frame({**base, "choices": [], "usage": _usage(messages, n)})


@serve.deployment(name="FakeLLM", max_ongoing_requests=1000)
class FakeLLMServer:
    def __init__(self, ttft_s: float = 0.0, tokens_per_s: float = 0.0):
        self._ttft_s = ttft_s
        self._tokens_per_s = tokens_per_s

    async def chat(self, request: Any) -> AsyncIterator[list[str]]:
        messages = [m if isinstance(m, dict) else dict(m) for m in request.messages]
        frames = sse_stream(request.model, messages, request.max_tokens or 16, self._ttft_s, self._tokens_per_s)
        async for ready in ready_batches(frames):
            yield ready
        yield ["data: [DONE]\n\n"]

    async def check_health(self) -> None:
        return None


def fake_openai_app(ttft_s: float, tokens_per_s: float):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    async def chat(request: Request):
        body = await request.json()
        messages, max_tokens = body.get("messages", []), int(body.get("max_tokens") or 16)
        model = body.get("model", "fake")
        if body.get("stream"):

            async def frames() -> AsyncIterator[str]:
                async for frame in sse_stream(model, messages, max_tokens, ttft_s, tokens_per_s):
                    if '"usage"' in frame and not (body.get("stream_options") or {}).get("include_usage"):
                        continue
                    yield frame
                yield "data: [DONE]\n\n"

            return StreamingResponse(frames(), media_type="text/event-stream")
        text = "".join([t async for t in script(max_tokens, ttft_s, tokens_per_s)])
        return JSONResponse(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}],
                "usage": _usage(messages, max_tokens),
            }
        )

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [{"id": "fake", "object": "model", "owned_by": "bench"}]})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models)])


if __name__ == "__main__":
    import typer
    import uvicorn

    def main(port: int = 8300, ttft_ms: float = 0.0, tokens_per_s: float = 0.0) -> None:
        uvicorn.run(fake_openai_app(ttft_ms / 1000, tokens_per_s), host="127.0.0.1", port=port, log_level="warning")

    typer.run(main)
