"""The OpenAI-compatible routes and our own beside them (conversations, usage, health). HTTP only: the gateway
lets a request in, the orchestrator answers for the caller's tenant, and this module turns that into JSON or SSE.
Every object a route names by id is looked up within the caller's tenant: another tenant's is 404."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from redis.exceptions import RedisError

from core.errors import InvalidRequest, LLMServeError, NotFound
from core.models import ChatRequest, ChatResponse, ConversationList, ConversationMessages, StreamOptions
from core.names import ADMIN_TENANT, CONVERSATION_ID_RE
from deployments.gateway import MASTER_KID, Principal
from deployments.ingress_state import IngressState, ingress_state, principal
from deployments.middleware import TENANT_HEADER
from deployments.sse import SSEResponse, prepend, sse_frames
from observability import prom
from state.api_keys import Limits

router = APIRouter()
State = Annotated[IngressState, Depends(ingress_state)]
Caller = Annotated[Principal, Depends(principal)]


@router.post("/v1/chat/completions", response_model=ChatResponse)
async def chat_completions(
    body: ChatRequest, request: Request, ingress: State, who: Caller, x_conversation_id: str | None = Header(None)
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
    ticket = await ingress.gateway.open(who, chat)
    prom.observe("llmserve_stage_seconds", time.perf_counter() - started, stage="admission")
    caller = who.caller()
    if not chat.stream:
        try:
            result: ChatResponse = await ingress.orchestrator.chat.remote(chat, caller)
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
        stream = ingress.orchestrator_stream.chat_stream.remote(internal, caller)
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
async def usage(request: Request, ingress: State, who: Caller) -> dict:
    """The caller's tenant: its usage, and each of its keys'. Admin keys (without X-LLMServe-Tenant): every
    tenant's."""
    if who.admin and not request.headers.get(TENANT_HEADER):
        rows = [await _tenant_usage(ingress, ADMIN_TENANT)]
        for tenant in await ingress.gateway.tenants.list():
            rows.append(await _tenant_usage(ingress, tenant.id, tenant.limits))
        return {"object": "list", "data": rows}
    return await _tenant_usage(ingress, who.tenant, who.tenant_limits)


async def _tenant_usage(ingress: IngressState, tenant: str, limits: Limits | None = None) -> dict:
    limiter = ingress.gateway.limiter
    keys = [
        {
            "key_id": record.key_id,
            "name": record.name,
            "revoked": record.revoked,
            **await limiter.usage(tenant, record.key_id, record.limits()),
        }
        for record in await ingress.gateway.keys.list(tenant)
    ]
    if tenant == ADMIN_TENANT:
        keys.insert(0, {"key_id": MASTER_KID, "name": "master", **await limiter.usage(tenant, MASTER_KID)})
    return {"object": "usage", "tenant": tenant, **await limiter.usage(tenant, limits=limits), "keys": keys}


@router.get("/v1/models")
async def models(ingress: State) -> dict:
    return {"object": "list", "data": [_model_card(m, ingress.created) for m in ingress.served_models]}


@router.get("/v1/models/{model_id}")
async def model(model_id: str, ingress: State) -> dict:
    if model_id not in ingress.served_models:
        raise NotFound(f"model {model_id!r} does not exist", param="model")
    return _model_card(model_id, ingress.created)


@router.get("/v1/conversations", response_model=ConversationList)
async def list_conversations(
    ingress: State,
    who: Caller,
    after: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> ConversationList:
    """The tenant's conversations, most recently used first (cursor: `after` = the last id of a page)."""
    page, has_more = await ingress.conversations.list(who.tenant, after, limit)
    return ConversationList(
        data=page, first_id=page[0].id if page else None, last_id=page[-1].id if page else None, has_more=has_more
    )


@router.get(
    "/v1/conversations/{conversation_id}", response_model=ConversationMessages, response_model_exclude_none=True
)
async def conversation(conversation_id: str, ingress: State, who: Caller) -> ConversationMessages:
    messages = await ingress.conversations.history(who.tenant, _conversation_id(conversation_id))
    if not messages:
        raise NotFound(f"conversation {conversation_id!r} not found", param="conversation_id")
    return ConversationMessages(id=conversation_id, messages=messages)


@router.delete("/v1/conversations/{conversation_id}")
async def delete_conversation(conversation_id: str, ingress: State, who: Caller) -> dict:
    if not await ingress.conversations.delete(who.tenant, _conversation_id(conversation_id)):
        raise NotFound(f"conversation {conversation_id!r} not found", param="conversation_id")
    return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}


def _conversation_id(conversation_id: str) -> str:
    if not CONVERSATION_ID_RE.match(conversation_id):  # an id no conversation can have: none such
        raise NotFound(f"conversation {conversation_id!r} not found", param="conversation_id")
    return conversation_id


@router.get("/healthz")
async def healthz(request: Request, ingress: State) -> JSONResponse:
    """No key needed: ok or not per component. With an admin key, what failed and why."""
    try:
        checks = await ingress.orchestrator.health.remote()
    except Exception as exc:  # the orchestrator itself is down
        checks = {"orchestrator": f"error: {type(exc).__name__}"}
    healthy = all(v == "ok" for v in checks.values())
    if not await _is_admin(ingress, request.headers.get("authorization", "")):
        checks = {name: "ok" if value == "ok" else "error" for name, value in checks.items()}
    return JSONResponse(
        {"status": "ok" if healthy else "unhealthy", "checks": checks}, status_code=200 if healthy else 503
    )


async def _is_admin(ingress: IngressState, authorization: str) -> bool:
    if not authorization:
        return False
    try:
        return (await ingress.gateway.authenticate(authorization)).admin
    except (LLMServeError, RedisError):  # no valid key (or no Redis): the short answer
        return False


def _model_card(model_id: str, created: int) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "llmserve"}
