"""The OpenAI-compatible routes and our own beside them (conversations, RAG documents, usage, health). HTTP only:
the gateway lets a request in, the orchestrator answers, and this module turns that into JSON or SSE."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from core.errors import InvalidRequest, NotFound
from core.models import (
    ChatRequest,
    ChatResponse,
    ConversationMessages,
    IngestRequest,
    IngestResponse,
    StreamOptions,
)
from deployments.gateway import MASTER_KID, Principal
from deployments.ingress_state import IngressState, ingress_state
from deployments.sse import SSEResponse, prepend, sse_frames
from observability import prom

router = APIRouter()
State = Annotated[IngressState, Depends(ingress_state)]


@router.post("/v1/chat/completions", response_model=ChatResponse)
async def chat_completions(
    body: ChatRequest, request: Request, ingress: State, x_conversation_id: str | None = Header(None)
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
    ticket = await ingress.gateway.open(request.state.principal, chat)
    prom.observe("llmserve_stage_seconds", time.perf_counter() - started, stage="admission")
    if not chat.stream:
        try:
            result: ChatResponse = await ingress.orchestrator.chat.remote(chat)
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
        stream = ingress.orchestrator_stream.chat_stream.remote(internal)
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


@router.get("/v1/usage")
async def usage(request: Request, ingress: State) -> dict:
    """The caller's own usage; with the master key, every key's."""
    principal: Principal = request.state.principal
    limiter = ingress.gateway.limiter
    if not principal.admin:
        return {
            "object": "usage",
            "key_id": principal.kid,
            "name": principal.name,
            **await limiter.usage(principal.kid),
        }
    rows = [{"key_id": MASTER_KID, "name": "master", **await limiter.usage(MASTER_KID)}]
    for record in await ingress.gateway.keys.list():
        rows.append(
            {
                "key_id": record.key_id,
                "name": record.name,
                "revoked": record.revoked,
                **await limiter.usage(record.key_id),
            }
        )
    return {"object": "list", "data": rows}


@router.get("/v1/models")
async def models(ingress: State) -> dict:
    return {"object": "list", "data": [_model_card(m, ingress.created) for m in ingress.served_models]}


@router.get("/v1/models/{model_id}")
async def model(model_id: str, ingress: State) -> dict:
    if model_id not in ingress.served_models:
        raise NotFound(f"model {model_id!r} does not exist", param="model")
    return _model_card(model_id, ingress.created)


@router.get(
    "/v1/conversations/{conversation_id}", response_model=ConversationMessages, response_model_exclude_none=True
)
async def conversation(conversation_id: str, ingress: State) -> ConversationMessages:
    return await ingress.orchestrator.conversation.remote(conversation_id)


@router.post("/v1/rag/documents", response_model=IngestResponse)
async def ingest(body: IngestRequest, ingress: State) -> IngestResponse:
    """Chunk, embed and upsert documents (what `llmserve ingest` calls while the app runs)."""
    return await ingress.orchestrator.ingest.remote(body)


@router.get("/healthz")
async def healthz(ingress: State) -> JSONResponse:
    try:
        checks = await ingress.orchestrator.health.remote()
    except Exception as exc:  # the orchestrator itself is down
        checks = {"orchestrator": f"error: {type(exc).__name__}"}
    healthy = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ok" if healthy else "unhealthy", "checks": checks}, status_code=200 if healthy else 503
    )


def _model_card(model_id: str, created: int) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "llmserve"}
