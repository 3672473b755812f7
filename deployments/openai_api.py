"""The OpenAI-compatible routes besides chat completions (deployments/chat_api.py), and our own beside them:
models, usage, conversations, health. Every object a route names by id is looked up within the caller's tenant:
another tenant's is 404."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from core.errors import LLMServeError, NotFound
from core.models import ConversationList, ConversationMessages
from core.names import ADMIN_TENANT, CONVERSATION_ID_RE
from deployments.gateway import MASTER_KID, Principal
from deployments.ingress_state import IngressState, ingress_state, principal
from deployments.middleware import TENANT_HEADER
from rag.embedder import EMBEDDING_MODEL
from state.api_keys import Limits

router = APIRouter()
State = Annotated[IngressState, Depends(ingress_state)]
Caller = Annotated[Principal, Depends(principal)]


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
    models = [*ingress.served_models, EMBEDDING_MODEL]
    return {"object": "list", "data": [_model_card(m, ingress) for m in models]}


@router.get("/v1/models/{model_id}")
async def model(model_id: str, ingress: State) -> dict:
    if model_id not in ingress.served_models and model_id != EMBEDDING_MODEL:
        raise NotFound(f"model {model_id!r} does not exist", param="model", code="model_not_found")
    return _model_card(model_id, ingress)


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


def _model_card(model_id: str, ingress: IngressState) -> dict:
    card = {"id": model_id, "object": "model", "created": ingress.created, "owned_by": "llmserve"}
    if model_id in ingress.model_parents:  # a LoRA adapter on a self-hosted model, as vLLM lists them
        card["parent"] = ingress.model_parents[model_id]
    return card
