"""OpenAI's Responses API: `POST /v1/responses` (text, function tools, structured text, streamed with the event
sequence the SDK reads; `background: true` runs it detached), `GET /v1/responses/{id}` (whole, or streamed from
`starting_after`), `DELETE`, `POST .../cancel`, `GET .../input_items`, chains by `previous_response_id`,
`instructions`, `store`. A response runs as a chat answer (limits, failover, journal); what
it asked is kept per tenant beside the journal (state/responses.py), and a chain is read back through it, so chains
may fork. Another tenant's response is 404."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from core.errors import InvalidRequest, NotFound
from core.models import Caller, ChatChunk, ChatRequest
from core.names import OBJECT_ID_RE
from core.responses import (
    ResponsesRequest,
    finished_response,
    input_items,
    new_response_id,
    output_items,
    response_object,
    usage_object,
)
from deployments.answer_stream import answer_events
from deployments.answers import fold
from deployments.chat_api import IDEMPOTENCY_KEY_MAX, answer
from deployments.gateway import Principal
from deployments.http_errors import invalid_request_from
from deployments.ingress_state import IngressState, ingress_state, principal
from deployments.responses_stream import responses_sse
from deployments.sse import SSEResponse

router = APIRouter()
State = Annotated[IngressState, Depends(ingress_state)]
Who = Annotated[Principal, Depends(principal)]
MAX_CHAIN = 100


@router.post("/v1/responses")
async def create_response(
    body: ResponsesRequest,
    request: Request,
    ingress: State,
    who: Who,
    idempotency_key: str | None = Header(None, max_length=IDEMPOTENCY_KEY_MAX),
):
    earlier = await _chain(ingress, who.tenant, body.previous_response_id) if body.previous_response_id else []
    own = body.own_messages()
    instructions = [{"role": "system", "content": body.instructions}] if body.instructions else []
    try:
        chat = ChatRequest.model_validate(
            {**body.chat_fields(), "messages": [*instructions, *earlier, *own], "request_id": request.state.request_id}
        )
    except ValidationError as exc:
        raise invalid_request_from(exc) from exc
    response_id = new_response_id()
    asked = body.model_dump(
        mode="json", by_alias=True, exclude_none=True, exclude={"input", "instructions", "previous_response_id"}
    )
    record = {
        "input": own,
        "instructions": body.instructions,
        "previous_response_id": body.previous_response_id,
        "store": body.store,
        "asked": asked,
        "created_at": int(time.time()),
    }
    await ingress.responses.put(who.tenant, response_id, record)
    caller = who.caller().model_copy(
        update={"kind": "responses", "response_id": response_id, "detached": body.background}
    )
    if body.background and not body.stream:
        if idempotency_key:
            raise InvalidRequest(
                "a background response is named by its id: send no Idempotency-Key", param="background"
            )
        return await _start_detached(ingress, who, chat, caller, record)
    meaning = {"responses": body.model_dump(mode="json", exclude={"stream"})}
    return await answer(ingress, who, chat, caller, idempotency_key, meaning)


async def _start_detached(
    ingress: IngressState, who: Principal, chat: ChatRequest, caller: Caller, record: dict[str, Any]
) -> JSONResponse:
    """Let the answer in and start it, then answer at once (`queued`): it runs to its end with nobody following
    it, settles its own reservation, and is read with GET (whole, or streamed) or cancelled."""
    ticket = await ingress.gateway.open(who, chat)
    caller = caller.model_copy(update={"reservation_id": ticket.reservation_id})
    events = ticket.stream(answer_events(ingress, chat, caller, 0, ingress.routing.request_deadline_s))
    try:
        async for _ in events:  # the first batch says it has begun: its run owns the reservation now
            break
    finally:
        await events.aclose()
    return JSONResponse(response_object(caller.response_id, record, "queued", record["created_at"]))


@router.get("/v1/responses/{response_id}")
async def get_response(
    response_id: str,
    request: Request,
    ingress: State,
    who: Who,
    stream: bool = False,
    starting_after: Annotated[int | None, Query(ge=0)] = None,
):
    """The response as it stands; with `stream=true`, its events after `starting_after` (numbered as the first
    stream was), then the live rest."""
    record = await _record(ingress, who.tenant, response_id)
    meta = await ingress.journal.meta(who.tenant, response_id)
    if not stream or meta is None:
        if meta is not None and meta["status"] == "running":
            await _carry_on_if_orphaned(ingress, who.tenant, response_id, meta)
        return await stored_response(ingress, who.tenant, response_id, record, meta)
    chat, caller = ChatRequest.model_validate(meta["request"]["request"]), Caller.model_validate(meta["caller"])
    events = answer_events(ingress, chat, caller, 0, ingress.routing.request_deadline_s)
    after = -1 if starting_after is None else starting_after
    frames = responses_sse(events, request.state.request_id, response_id, record, after)
    return SSEResponse(frames, on_close=lambda: None, headers={"cache-control": "no-cache"},
                       write_timeout_s=ingress.write_timeout_s)  # fmt: skip


@router.post("/v1/responses/{response_id}/cancel")
async def cancel_response(response_id: str, ingress: State, who: Who) -> dict[str, Any]:
    """Stop a background response (its writer sees it within a third of a lease; what it wrote stays, and its
    usage is charged)."""
    record = await _record(ingress, who.tenant, response_id)
    if not record["asked"].get("background"):
        raise InvalidRequest("only background responses can be cancelled", param="response_id")
    meta = await ingress.journal.meta(who.tenant, response_id)
    if meta is not None and await ingress.journal.cancel(who.tenant, response_id) == "running":
        for _ in range(100):  # until its writer ended it (a dead writer never sees the flag: it is carried on)
            if await _carry_on_if_orphaned(ingress, who.tenant, response_id, meta) != "running":
                break
            await asyncio.sleep(0.1)
    return await stored_response(ingress, who.tenant, response_id, record)


async def _carry_on_if_orphaned(ingress: IngressState, tenant: str, response_id: str, meta: dict) -> str:
    """A background response whose writer died has nobody to take it over (nobody follows it): follow it here,
    in the background, so that an orchestrator takes it over and finishes (or cancels) it. Its status now."""
    status, lapsed = await ingress.journal.lease_lapsed(tenant, response_id)
    if status != "running" or not lapsed or response_id in ingress.carrying_on:
        return status
    chat, caller = ChatRequest.model_validate(meta["request"]["request"]), Caller.model_validate(meta["caller"])
    ingress.carrying_on.add(response_id)

    async def follow() -> None:
        try:
            async for _ in answer_events(ingress, chat, caller, 0, ingress.routing.request_deadline_s):
                pass
        finally:
            ingress.carrying_on.discard(response_id)

    ingress.background(follow())
    return status


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, ingress: State, who: Who) -> dict[str, Any]:
    await _record(ingress, who.tenant, response_id)
    await ingress.responses.delete(who.tenant, response_id)
    return {"id": response_id, "object": "response", "deleted": True}


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(
    response_id: str,
    ingress: State,
    who: Who,
    order: Literal["asc", "desc"] = "desc",
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=300)] = None,
) -> dict[str, Any]:
    record = await _record(ingress, who.tenant, response_id)
    items = input_items(record["input"], response_id)
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [i["id"] for i in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > limit,
    }


async def _record(ingress: IngressState, tenant: str, response_id: str) -> dict[str, Any]:
    """What a stored response asked: 404 for another tenant's, a deleted one, or one made with store: false."""
    record = await ingress.responses.get(tenant, response_id) if OBJECT_ID_RE.match(response_id) else None
    if record is None or not record.get("store", True):
        raise NotFound(f"no response {response_id!r}", param="response_id")
    return record


async def _answer_of(
    ingress: IngressState, tenant: str, response_id: str, meta: dict | None = None
) -> tuple[dict[str, Any] | None, Any]:
    """The journal's meta (`meta`, when read already) and the answer folded from its events."""
    meta = meta or await ingress.journal.meta(tenant, response_id)
    if meta is None:
        return None, None
    chunks = [ChatChunk.model_validate(e.chunk) for e in await ingress.journal.events(tenant, response_id)]
    return meta, fold(chunks) if chunks else None


async def stored_response(
    ingress: IngressState, tenant: str, response_id: str, record: dict[str, Any], meta: dict | None = None
) -> dict[str, Any]:
    """The response object of a stored response: in progress, completed, incomplete, cancelled or failed."""
    meta, whole = await _answer_of(ingress, tenant, response_id, meta)
    created = record.get("created_at")
    if meta is not None and whole is None and meta["status"] == "cancelled":
        return response_object(response_id, record, "cancelled", created)
    if meta is None or whole is None:
        return response_object(response_id, record, "in_progress", created)
    output = output_items(whole) if whole.choices else []
    usage = usage_object(whole.usage.prompt_tokens, whole.usage.completion_tokens)
    if meta["status"] == "cancelled":
        return response_object(response_id, record, "cancelled", created, output, usage)
    if meta["status"] == "failed":
        error = {"code": meta["error"].get("code") or "server_error", "message": meta["error"].get("message", "")}
        return response_object(response_id, record, "failed", created, output, usage, error=error)
    if meta["status"] != "completed":
        return response_object(response_id, record, "in_progress", created, output)
    return finished_response(response_id, record, whole)


async def _chain(ingress: IngressState, tenant: str, response_id: str, depth: int = 0) -> list[dict[str, Any]]:
    """The messages a response continues: each earlier response's input and output, oldest first (their
    instructions are not carried over, as OpenAI's are not)."""
    if depth >= MAX_CHAIN:
        raise InvalidRequest(f"a chain of responses is at most {MAX_CHAIN} long here", param="previous_response_id")
    record = await ingress.responses.get(tenant, response_id) if OBJECT_ID_RE.match(response_id) else None
    if record is None:
        raise NotFound(f"no response {response_id!r}", param="previous_response_id")
    meta, whole = await _answer_of(ingress, tenant, response_id)
    if meta is None or whole is None or meta["status"] != "completed":
        raise InvalidRequest(f"response {response_id!r} has not completed", param="previous_response_id")
    previous = record.get("previous_response_id")
    earlier = await _chain(ingress, tenant, previous, depth + 1) if previous else []
    said = whole.choices[0].message.stored().model_dump(exclude_none=True, exclude={"name"})
    return [*earlier, *record["input"], said]
