"""Ingress deployment: the OpenAI-compatible HTTP surface and the typed Python surface.

It knows HTTP and nothing about models: authenticate, parse, call the orchestrator, turn results into JSON
or SSE. It is the only place that builds HTTP responses.
"""

from __future__ import annotations

import hmac
import re
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.http_errors import error_response, install_error_handlers
from deployments.sse import sse_frames
from serve_app.errors import AuthenticationFailed, InvalidRequest, NotFound
from serve_app.models import (
    ChatChunk,
    ChatRequest,
    ChatResponse,
    ConversationMessages,
    IngestRequest,
    IngestResponse,
)
from serve_app.settings import Settings
from state.api_keys import key_hash

app = FastAPI(title="llmserve", version="0.1.0", description="OpenAI-compatible LLM serving on Ray Serve.")
install_error_handlers(app)

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


# NOTE: FastAPI middleware runs in LIFO order of registration; this is the only one, and it must run before
# body parsing so that an unauthenticated malformed request gets 401, not 400.
@app.middleware("http")
async def _request_id_and_auth(request: Request, call_next):
    incoming = request.headers.get("x-request-id", "")
    request_id = incoming if _REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex
    request.state.request_id = request_id
    if request.url.path.startswith("/v1/") or request.url.path.startswith("/admin/"):
        expected: str | None = request.app.state.master_key_hash
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return error_response(
                AuthenticationFailed("missing API key: send 'Authorization: Bearer <key>'"), request_id
            )
        if expected is None or not hmac.compare_digest(key_hash(token.strip()), expected):
            return error_response(AuthenticationFailed("incorrect API key provided"), request_id)
    # Serve's proxy already puts x-request-id (the client's, or a new one) on every response.
    return await call_next(request)


@serve.deployment(name="Ingress")
@serve.ingress(app)
class Ingress:
    def __init__(self, settings: Settings, orchestrator: DeploymentHandle):
        if not settings.master_key_hash():
            raise ValueError("a master key is required: set LLMSERVE_MASTER_KEY (or master_key_sha256)")
        app.state.master_key_hash = settings.master_key_hash()
        self._settings = settings
        self._orchestrator = orchestrator
        self._stream = orchestrator.options(stream=True)
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
        if not chat.stream:
            result: ChatResponse = await self._orchestrator.chat.remote(chat)
            return JSONResponse(result.model_dump(mode="json", exclude_none=True), headers=headers)

        stream = self._stream.chat_stream.remote(chat)
        # Wait for the first chunk before sending the status line, so that errors raised before any
        # output (unknown model, context too long, engine down) get their real status code.
        first = await stream.__anext__()
        headers["cache-control"] = "no-cache"
        return StreamingResponse(sse_frames(first, stream, request_id), media_type="text/event-stream", headers=headers)

    @app.get("/v1/models")
    async def http_models(self) -> dict:
        return {"object": "list", "data": [self._model_card()]}

    @app.get("/v1/models/{model_id}")
    async def http_model(self, model_id: str) -> dict:
        if model_id != self._settings.model_name:
            raise NotFound(f"model {model_id!r} does not exist", param="model")
        return self._model_card()

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

    def _model_card(self) -> dict:
        return {
            "id": self._settings.model_name,
            "object": "model",
            "created": self._created,
            "owned_by": "llmserve",
        }
