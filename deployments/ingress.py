"""Ingress deployment: the OpenAI-compatible HTTP surface and the typed Python surface.

It knows HTTP and nothing about models: authenticate, parse, call the orchestrator, turn results into JSON
or SSE. It is the only place that builds HTTP responses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse
from pydantic import Field, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.batch_api import router as batch_router
from deployments.gateway import MASTER_KID, Gateway, Principal
from deployments.handles import configured
from deployments.http_errors import install_error_handlers
from deployments.middleware import GatewayMiddleware
from deployments.providers.report import provider_report
from deployments.sse import SSEResponse, prepend, sse_frames
from observability import prom
from serve_app.errors import InvalidRequest, NotFound
from serve_app.models import (
    ChatChunk,
    ChatRequest,
    ChatResponse,
    ConversationMessages,
    IngestRequest,
    IngestResponse,
    StreamOptions,
)
from serve_app.settings import Settings
from state.api_keys import KeyLimits
from state.batches import BatchStore
from state.files import FileStore
from state.interactive_load import InteractiveLoad
from state.redis_client import async_redis

app = FastAPI(title="llmserve", version="0.1.0", description="OpenAI-compatible LLM serving on Ray Serve.")
install_error_handlers(app)

app.add_middleware(GatewayMiddleware)
app.include_router(batch_router)  # /v1/files, /v1/batches


class NewKey(KeyLimits):
    name: str = Field(..., min_length=1, max_length=200)


@serve.deployment(name="Ingress")
@serve.ingress(app)
class Ingress:
    def __init__(
        self, settings: Settings, orchestrator: DeploymentHandle, batch_worker: DeploymentHandle | None = None
    ):
        if not settings.master_key_hash():
            raise ValueError("a master key is required: set LLMSERVE_MASTER_KEY (or master_key_sha256)")
        client = async_redis(settings.redis_url)
        self._gateway = Gateway(settings, client)
        app.state.gateway = self._gateway
        app.state.settings = settings
        app.state.max_body_bytes = settings.max_body_bytes
        app.state.max_file_bytes = settings.max_file_bytes
        app.state.files = FileStore(client, settings.redis_prefix)
        app.state.batches = BatchStore(client, settings.redis_prefix)
        app.state.batch_worker = configured(batch_worker, settings) if batch_worker is not None else None
        # Batch workers yield to interactive traffic: publish how much of it this replica has in flight.
        load = InteractiveLoad(client, settings.redis_prefix)
        self._publisher = asyncio.get_event_loop().create_task(load.run_publisher(self._gateway.admission.total, 0.1))
        self._settings = settings
        self._orchestrator = configured(orchestrator, settings)
        self._stream = self._orchestrator.options(stream=True)
        self._created = int(time.time())

    # --- typed Python surface (serve.get_app_handle(app_name).chat.remote(...)) ----------------------
    async def chat(self, request: ChatRequest) -> ChatResponse:
        """Whole answer. Trusted in-cluster callers: no API key."""
        return await self._orchestrator.chat.remote(request)

    async def chat_stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """Streamed answer, chunk by chunk: `handle.options(stream=True).chat_stream.remote(request)`."""
        request = request.model_copy(update={"stream": True})
        async for chunks in self._stream.chat_stream.remote(request):
            for chunk in chunks:
                yield chunk

    async def get_conversation(self, conversation_id: str) -> ConversationMessages:
        return await self._orchestrator.conversation.remote(conversation_id)

    # --- HTTP ---------------------------------------------------------------------------------------
    @app.post("/v1/chat/completions", response_model=ChatResponse)
    async def http_chat_completions(
        self,
        body: ChatRequest,
        request: Request,
        x_conversation_id: str | None = Header(None),
    ):
        request_id = request.state.request_id
        updates: dict = {"request_id": request_id}
        if body.conversation_id is None and x_conversation_id:
            updates["conversation_id"] = x_conversation_id
        try:
            chat = ChatRequest.model_validate({**body.model_dump(exclude_unset=True), **updates})
        except ValidationError as exc:  # only the header can be invalid here: the body was validated
            raise InvalidRequest(
                f"invalid X-Conversation-Id header: {exc.errors()[0]['msg']}", param="conversation_id"
            ) from exc
        headers = {}
        if chat.conversation_id:
            headers["x-conversation-id"] = chat.conversation_id
        started = time.perf_counter()
        ticket = await self._gateway.open(request.state.principal, chat)
        prom.observe("llmserve_stage_seconds", time.perf_counter() - started, stage="admission")
        if not chat.stream:
            try:
                result: ChatResponse = await self._orchestrator.chat.remote(chat)
                ticket.usage, ticket.cost_usd = result.usage, result.cost_usd
            finally:
                ticket.finish()
            headers["x-llmserve-provider"] = result.provider or ""
            if result.cost_usd is not None:
                headers["x-llmserve-cost-usd"] = f"{result.cost_usd:.8f}"
            return JSONResponse(result.model_dump(mode="json", exclude_none=True), headers=headers)

        # Usage is always requested internally (settlement needs it) and dropped if the client did not ask.
        internal = chat.model_copy(update={"stream_options": StreamOptions(include_usage=True)})
        try:
            stream = self._stream.chat_stream.remote(internal)
            # Wait for the first chunk before sending the status line, so that errors raised before any
            # output (unknown model, context too long, engine down) get their real status code.
            first = await stream.__anext__()
        except BaseException:
            ticket.finish()
            raise
        chunks = ticket.stream(prepend(first, stream), chat.include_usage)
        headers["cache-control"] = "no-cache"
        if first and first[0].provider:
            headers["x-llmserve-provider"] = first[0].provider
        return SSEResponse(sse_frames(chunks, request_id), on_close=ticket.finish, headers=headers)

    @app.get("/v1/usage")
    async def http_usage(self, request: Request) -> dict:
        """The caller's own usage; with the master key, every key's."""
        principal: Principal = request.state.principal
        if not principal.admin:
            return {
                "object": "usage",
                "key_id": principal.kid,
                "name": principal.name,
                **await self._gateway.limiter.usage(principal.kid),
            }
        rows = [{"key_id": MASTER_KID, "name": "master", **await self._gateway.limiter.usage(MASTER_KID)}]
        for record in await self._gateway.keys.list():
            rows.append(
                {
                    "key_id": record.key_id,
                    "name": record.name,
                    "revoked": record.revoked,
                    **await self._gateway.limiter.usage(record.key_id),
                }
            )
        return {"object": "list", "data": rows}

    @app.post("/admin/keys")
    async def http_create_key(self, body: NewKey) -> dict:
        key, record = await self._gateway.keys.create(body.name, KeyLimits(**body.model_dump(exclude={"name"})))
        return {"key": key, **record.model_dump()}

    @app.get("/admin/keys")
    async def http_list_keys(self) -> dict:
        return {"object": "list", "data": [r.model_dump() for r in await self._gateway.keys.list()]}

    @app.delete("/admin/keys/{key_id_or_name}")
    async def http_revoke_key(self, key_id_or_name: str) -> dict:
        revoked = await self._gateway.keys.revoke(key_id_or_name)
        if not revoked:
            raise NotFound(f"no API key with id or name {key_id_or_name!r}", param="key_id_or_name")
        return {"revoked": revoked}

    @app.get("/admin/providers")
    async def http_providers(self, gpu_hour_usd: float | None = None) -> dict:
        """Usage, cost and breaker state per provider, and the self-hosted break-even utilisation."""
        if gpu_hour_usd is not None and gpu_hour_usd < 0:
            raise InvalidRequest("gpu_hour_usd must not be negative", param="gpu_hour_usd")
        return await provider_report(self._settings, self._gateway.redis, gpu_hour_usd)

    @app.get("/v1/models")
    async def http_models(self) -> dict:
        return {"object": "list", "data": [self._model_card(m) for m in sorted(self._settings.served_models())]}

    @app.get("/v1/models/{model_id}")
    async def http_model(self, model_id: str) -> dict:
        if model_id not in self._settings.served_models():
            raise NotFound(f"model {model_id!r} does not exist", param="model")
        return self._model_card(model_id)

    @app.get(
        "/v1/conversations/{conversation_id}", response_model=ConversationMessages, response_model_exclude_none=True
    )
    async def http_conversation(self, conversation_id: str) -> ConversationMessages:
        return await self._orchestrator.conversation.remote(conversation_id)

    @app.post("/v1/rag/documents", response_model=IngestResponse)
    async def http_ingest(self, body: IngestRequest) -> IngestResponse:
        """Chunk, embed and upsert documents (what `llmserve ingest` calls while the app runs)."""
        return await self._orchestrator.ingest.remote(body)

    @app.get("/healthz")
    async def http_healthz(self) -> JSONResponse:
        try:
            checks = await self._orchestrator.health.remote()
        except Exception as exc:  # the orchestrator itself is down
            checks = {"orchestrator": f"error: {type(exc).__name__}"}
        healthy = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ok" if healthy else "unhealthy", "checks": checks},
            status_code=200 if healthy else 503,
        )

    def _model_card(self, model_id: str) -> dict:
        return {
            "id": model_id,
            "object": "model",
            "created": self._created,
            "owned_by": "llmserve",
        }
