"""The floor under any Serve gateway on this machine: the fake engine behind Serve apps that do nothing but relay.

Each app's ingress is an HTTP replica on its own port (direct ingress), as ours is, with the transport our
deployments use (Serve's gRPC handles, `server.stream_window_bytes` 1024: deployments/handles.py), Serve's access
log off and our SSE response (deployments/sse.py); the engine gets the ray.serve.llm `ChatCompletionRequest` that
our self-hosted provider sends. `floor-1hop` calls the fake engine's handle and writes out each item;
`floor-2hop` puts one more deployment between them, where our orchestrator sits, which hands on everything that
arrived since its reader last asked (deployments/coalescing.py), as the orchestrator's followers get it.
`floor-http` calls the engine's HTTP server (the `direct` target) instead of a handle and passes its bytes
through; `floor-http2` is the same relay in front of `floor-http` (two hops, both HTTP). No auth, limits, Redis,
journal, accounting or metrics: what is left is Serve's own cost per request and per streamed item.
`python -m benchmarks.gateway_overhead --serve-floor` runs them beside our stack, in the same cluster and run.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.coalescing import ready_batches
from deployments.handles import configured, pace_streams
from deployments.sse import SSEResponse

FLOOR_APPS = ("floor-1hop", "floor-2hop", "floor-http", "floor-http2")
STREAM_WINDOW_BYTES = 1024  # server.stream_window_bytes' default
LIGHT = {"num_cpus": 0.1}  # as our light deployments: Ray's logical CPUs are mostly held by our stack


def engine_stream(engine: DeploymentHandle) -> DeploymentHandle:
    """`engine`'s handle as our deployments hold theirs: gRPC, paced, streaming."""
    pace_streams(STREAM_WINDOW_BYTES)
    return configured(engine, grpc=True).options(stream=True)


@serve.deployment(name="FloorHop", max_ongoing_requests=1000, ray_actor_options=LIGHT)
class FloorHop:
    """One more hop: hands on the engine's items that arrived since it was last asked, as one item."""

    def __init__(self, engine: DeploymentHandle) -> None:
        self._engine = engine_stream(engine)

    async def chat(self, request: Any) -> AsyncIterator[list[str]]:
        async for ready in ready_batches(self._engine.chat.remote(request)):
            yield [frame for item in ready for frame in item]


@serve.deployment(name="FloorIngress", max_ongoing_requests=1000, ray_actor_options=LIGHT)
class FloorIngress:
    """HTTP in, the engine's SSE frames out, unchanged."""

    def __init__(self, engine: DeploymentHandle) -> None:
        self._engine = engine_stream(engine)

    async def __call__(self, request) -> SSEResponse:
        from ray.serve.llm.openai_api_models import ChatCompletionRequest

        body = json.loads(await request.body())
        call = ChatCompletionRequest(
            model=body.get("model", ""),
            messages=body.get("messages", []),
            max_tokens=body.get("max_tokens"),
            stream=True,
            stream_options={"include_usage": True},
        )

        async def frames() -> AsyncIterator[str]:
            async for item in self._engine.chat.remote(call):
                yield "".join(item)

        return SSEResponse(frames(), on_close=lambda: None, headers={})


@serve.deployment(name="FloorHttpIngress", max_ongoing_requests=1000, ray_actor_options=LIGHT)
class FloorHttpIngress:
    """HTTP in, and the engine called over HTTP instead of through a handle: its status, and its SSE bytes as they
    come. The upstream response is closed however the client's ends (SSEResponse's `on_close`)."""

    def __init__(self, upstream_url: str) -> None:
        import httpx

        # one pooled client for the replica's life (the benchmark's); connections close with the process
        self._client = httpx.AsyncClient(base_url=upstream_url, timeout=None, limits=httpx.Limits())

    async def __call__(self, request):
        from starlette.responses import Response

        upstream = await self._client.send(
            self._client.build_request("POST", "/v1/chat/completions", content=await request.body()), stream=True
        )
        if upstream.status_code != 200:
            content = await upstream.aread()
            return Response(content, status_code=upstream.status_code, media_type=upstream.headers.get("content-type"))
        closing: list[asyncio.Task] = []  # the close task, held until it ran
        return SSEResponse(
            upstream.aiter_raw(), on_close=lambda: closing.append(asyncio.ensure_future(upstream.aclose())), headers={}
        )


def floor_app(name: str, engine_app: Any, upstream_url: str) -> Any:
    """The relay app `name` (one of FLOOR_APPS): over `engine_app` (its own bound FakeLLMServer) or, for the HTTP
    relays, over `upstream_url` (the fake engine's server for `floor-http`, `floor-http`'s URL for `floor-http2`)."""
    if name == "floor-1hop":
        return FloorIngress.bind(engine_app)
    if name == "floor-2hop":
        return FloorIngress.bind(FloorHop.bind(engine_app))
    if name in ("floor-http", "floor-http2"):
        return FloorHttpIngress.bind(upstream_url)
    raise ValueError(f"no relay app {name!r}")
