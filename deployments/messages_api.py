"""Anthropic's Messages API (`POST /v1/messages`, `x-api-key` or a bearer key): Claude clients point at us
unchanged and reach any provider, the self-hosted one included. The request runs as a chat answer (limits,
failover, journal, conversations); its answer and errors come back in Anthropic's shapes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from pydantic import ValidationError

from core.anthropic_messages import MessagesRequest
from core.models import new_id
from deployments.chat_api import IDEMPOTENCY_KEY_MAX, answer
from deployments.gateway import Principal
from deployments.http_errors import invalid_request_from
from deployments.ingress_state import IngressState, ingress_state, principal

router = APIRouter()
State = Annotated[IngressState, Depends(ingress_state)]
Who = Annotated[Principal, Depends(principal)]


@router.post("/v1/messages")
async def messages(
    body: MessagesRequest,
    request: Request,
    ingress: State,
    who: Who,
    idempotency_key: str | None = Header(None, max_length=IDEMPOTENCY_KEY_MAX),
):
    try:
        chat = body.as_chat(request.state.request_id)
    except ValidationError as exc:  # what only the chat request checks (tool messages, conversation ids, ...)
        raise invalid_request_from(exc) from exc
    caller = who.caller().model_copy(update={"kind": "messages", "response_id": new_id("msg")})
    meaning = {"messages": body.model_dump(mode="json", exclude={"stream"})}
    return await answer(ingress, who, chat, caller, idempotency_key, meaning)
