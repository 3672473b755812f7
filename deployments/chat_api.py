"""Chat completions: asked for (POST), resumed or read back (GET). HTTP only: the gateway lets a request in, the
orchestrator answers for the caller's tenant (deployments/answer_stream.py follows it across orchestrator
replicas that die), and this module turns that into JSON or SSE.

Every answer is journaled: a stream whose connection broke resumes on any ingress replica with
`GET /v1/chat/completions/{id}?stream=true&starting_after=N` (or the `Last-Event-ID` header), and gets exactly the
events after N, then the live rest. A retry with the same `Idempotency-Key` (per API key) replays the answer the
first attempt made, finished or still running, and commits or charges nothing again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from core.anthropic_messages import whole_message
from core.completions import Completion, CompletionRequest, completion_chunk, whole_completion
from core.errors import InvalidRequest, NotFound
from core.models import Caller, ChatRequest, ChatResponse, new_id
from core.responses import finished_response
from deployments.answer_stream import answer_events
from deployments.answers import fold
from deployments.frames import Batch
from deployments.gateway import Principal, Ticket
from deployments.http_errors import invalid_request_from
from deployments.ingress_state import IngressState, ingress_state, principal
from deployments.messages_stream import messages_sse
from deployments.responses_stream import responses_sse
from deployments.sse import SSEResponse, prepend, sse_frames
from observability import prom

router = APIRouter()
State = Annotated[IngressState, Depends(ingress_state)]
Who = Annotated[Principal, Depends(principal)]
IDEMPOTENCY_KEY_MAX = 255


@router.post("/v1/chat/completions", response_model=ChatResponse)
async def chat_completions(
    body: ChatRequest,
    request: Request,
    ingress: State,
    who: Who,
    x_conversation_id: str | None = Header(None),
    idempotency_key: str | None = Header(None, max_length=IDEMPOTENCY_KEY_MAX),
):
    updates: dict = {"request_id": request.state.request_id}
    if body.conversation_id is None and x_conversation_id:
        updates["conversation_id"] = x_conversation_id
    try:
        chat = ChatRequest.model_validate({**body.model_dump(exclude_unset=True), **updates})
    except ValidationError as exc:  # only the header can be invalid here: the body was validated
        raise InvalidRequest(
            f"invalid X-Conversation-Id header: {exc.errors()[0]['msg']}", param="conversation_id"
        ) from exc
    # What the request asks, not how it wants it delivered: a retry may stream what the first did not.
    meaning = body.model_dump(mode="json", exclude={"stream", "stream_options"})
    return await answer(ingress, who, chat, who.caller(), idempotency_key, meaning)


@router.post("/v1/completions", response_model=Completion)
async def completions(
    body: CompletionRequest,
    request: Request,
    ingress: State,
    who: Who,
    idempotency_key: str | None = Header(None, max_length=IDEMPOTENCY_KEY_MAX),
):
    """OpenAI's legacy completions: the prompt continued as it is (no chat template), through the same answer
    path as chat (limits, failover, journal, resume at GET /v1/completions/{id})."""
    try:
        chat = body.as_chat(request.state.request_id)
    except ValidationError as exc:  # what only the chat request checks (stop, logit_bias, ...)
        raise invalid_request_from(exc) from exc
    caller = who.caller().model_copy(update={"kind": "text", "response_id": new_id("cmpl")})
    meaning = {"completions": body.model_dump(mode="json", exclude={"stream", "stream_options"})}
    return await answer(ingress, who, chat, caller, idempotency_key, meaning)


async def answer(
    ingress: IngressState,
    who: Principal,
    chat: ChatRequest,
    caller: Caller,
    idempotency_key: str | None,
    meaning: dict,
):
    """A new answer, or the one an earlier request with the same Idempotency-Key started."""
    request_id = chat.request_id
    claimed = earlier = None
    if idempotency_key:
        fingerprint = hashlib.sha256(json.dumps(meaning, sort_keys=True).encode()).hexdigest()
        earlier = await ingress.journal.claim_idempotency(
            who.tenant, who.kid, idempotency_key, f"{caller.response_id}|{fingerprint}"
        )
        if earlier is not None:
            replay = await _earlier_answer(ingress, who, earlier, fingerprint)
            if replay is not None:
                stored, first_caller = replay
                delivered = stored.model_copy(update={"stream": chat.stream})
                return await _respond(ingress, delivered, first_caller, 0, None, request_id, chat.include_usage)
            caller = caller.model_copy(update={"response_id": earlier.partition("|")[0]})
        claimed = (who.tenant, who.kid, idempotency_key)
    ticket = None
    try:
        started = time.perf_counter()
        ticket = await ingress.gateway.open(who, chat)
        response_id = caller.response_id
        ticket.answer_started = lambda: _has_journal(ingress, who.tenant, response_id)
        prom.stage("admission", time.perf_counter() - started)
        # A response id minted here (not an Idempotency-Key's earlier one) has no journal: the orchestrator
        # opens one without looking first.
        caller = caller.model_copy(update={"reservation_id": ticket.reservation_id, "unjournaled": earlier is None})
        return await _respond(ingress, chat, caller, 0, ticket, request_id, chat.include_usage)
    except BaseException:
        if claimed is not None and (ticket is None or not ticket.has_begun):  # nothing to replay: free the key
            await ingress.journal.release_idempotency(*claimed)
        raise


@router.get("/v1/chat/completions/{completion_id}", response_model=ChatResponse)
@router.get("/v1/completions/{completion_id}", response_model=Completion)
async def chat_completion(
    completion_id: str,
    request: Request,
    ingress: State,
    who: Who,
    stream: bool = False,
    starting_after: Annotated[int | None, Query(ge=0)] = None,
    last_event_id: str | None = Header(None),
):
    """A stored answer (whole, once it is done), or with `stream=true` its events after `starting_after` (or the
    `Last-Event-ID` header), then the live rest: how a stream whose connection broke resumes. Chat answers and
    completions each in their own shape, whichever of the two paths names them."""
    meta = await ingress.journal.meta(who.tenant, completion_id)
    if meta is None:
        raise NotFound(f"no chat completion {completion_id!r}", param="completion_id")
    chat = ChatRequest.model_validate(meta["request"]["request"])
    caller = Caller.model_validate(meta["caller"])
    if not stream:
        return await _respond(ingress, chat.model_copy(update={"stream": False}), caller, 0, None, None)
    if caller.kind in ("messages", "responses"):  # their event streams are not rebuilt from the middle
        raise InvalidRequest(f"a {caller.kind} answer is read back whole here, not resumed", param="stream")
    after = starting_after
    if after is None and last_event_id is not None:
        if not re.fullmatch(r"[0-9]{1,18}", last_event_id):
            raise InvalidRequest("Last-Event-ID must be an event id this stream sent", param="Last-Event-ID")
        after = int(last_event_id)
    chat = chat.model_copy(update={"stream": True})
    return await _respond(ingress, chat, caller, after or 0, None, request.state.request_id, chat.include_usage)


def _cache_header(
    headers: dict[str, str], ingress: IngressState, chat: ChatRequest, caller: Caller, provider: str | None, new: bool
) -> None:
    """`x-llmserve-cache`: `hit` (answered from the response cache), `miss` (a new answer that may be kept for
    next time), or `bypass` (not a deterministic request, or its key does not cache). A stored answer read back,
    or a stream resumed after its first event, says `hit` when it was one and nothing otherwise."""
    if provider == "cache":
        headers["x-llmserve-cache"] = "hit"
    elif new:
        deterministic = chat.temperature == 0 or chat.seed is not None
        wanted = ingress.cache_by_default if caller.response_cache is None else caller.response_cache
        headers["x-llmserve-cache"] = "miss" if wanted and deterministic else "bypass"


async def _has_journal(ingress: IngressState, tenant: str, response_id: str) -> bool:
    return await ingress.journal.meta(tenant, response_id) is not None


async def _without_usage(events: AsyncIterator[Batch]) -> AsyncIterator[Batch]:
    """A run always ends with a usage chunk (it settles with it, and the JSON answer needs it); a stream whose
    client did not ask for `stream_options.include_usage` does not get it."""
    async for batch in events:
        kept = [(seq, frame) for seq, frame in batch if not frame.usage]
        if kept:
            yield kept


async def _earlier_answer(
    ingress: IngressState, who: Principal, earlier: str, fingerprint: str
) -> tuple[ChatRequest, Caller] | None:
    """What an Idempotency-Key's first request started (None when it failed before its answer began: then this
    request runs it again, under the same response id)."""
    response_id, _, first_fingerprint = earlier.partition("|")
    if first_fingerprint != fingerprint:
        raise InvalidRequest(
            "this Idempotency-Key was used for a different request",
            param="Idempotency-Key",
            code="idempotency_key_reused",
        )
    for _ in range(50):  # the first request may still be preparing its answer
        meta = await ingress.journal.meta(who.tenant, response_id)
        if meta is not None:
            return ChatRequest.model_validate(meta["request"]["request"]), Caller.model_validate(meta["caller"])
        await asyncio.sleep(0.1)
    return None


async def _respond(
    ingress: IngressState,
    chat: ChatRequest,
    caller: Caller,
    after_seq: int,
    ticket: Ticket | None,
    request_id: str | None,
    client_wants_usage: bool = True,
):
    """The answer as JSON (whole) or SSE (from `after_seq`); `ticket`: a new request's admission. A completions
    answer (caller kind `text`) in the `text_completion` shape."""
    text = caller.kind == "text"
    events = answer_events(ingress, chat, caller, after_seq, ingress.routing.request_deadline_s)
    if ticket is not None:
        events = ticket.stream(events)
    if chat.stream and not client_wants_usage and caller.kind in ("messages", "responses"):
        events = _without_usage(events)  # (sse_frames leaves it out itself, and ends the stream with it)
    headers = {"x-llmserve-response-id": caller.response_id}
    if chat.conversation_id:
        headers["x-conversation-id"] = chat.conversation_id
    if not chat.stream:
        chunks = [f.chunk for batch in [b async for b in events] for _, f in batch]
        result = fold(chunks, chat.conversation_id)
        headers["x-llmserve-provider"] = result.provider or ""
        _cache_header(headers, ingress, chat, caller, result.provider, new=ticket is not None)
        if result.cost_usd is not None:
            headers["x-llmserve-cost-usd"] = f"{result.cost_usd:.8f}"
        if caller.kind == "messages":
            return JSONResponse(whole_message(result), headers=headers)
        if caller.kind == "responses":
            record = await ingress.responses.get(caller.tenant, caller.response_id) or {}
            return JSONResponse(finished_response(caller.response_id, record, result), headers=headers)
        if text:
            return JSONResponse(whole_completion(result).model_dump(mode="json", exclude_none=True), headers=headers)
        body = result.model_dump(mode="json", exclude_none=True)
        for choice in body["choices"]:  # a tool-call-only answer has content null, as OpenAI sends it
            choice["message"].setdefault("content", None)
        return JSONResponse(body, headers=headers)
    first: Batch = []
    try:
        # Wait for the first events before sending the status line, so that errors raised before any output
        # (unknown model, context too long, engine down) get their real status code.
        while not first:  # (an empty batch only says the answer has begun)
            first = await events.__anext__()
    except StopAsyncIteration:
        pass
    except BaseException:
        if ticket is not None:
            ticket.finish()
        raise
    headers["cache-control"] = "no-cache"
    provider = next((f.chunk.provider for _, f in first if f.chunk.provider), None)
    if provider:
        headers["x-llmserve-provider"] = provider
    _cache_header(headers, ingress, chat, caller, provider, new=ticket is not None and after_seq == 0)
    on_close = ticket.finish if ticket is not None else lambda: None
    if caller.kind == "messages":
        frames = messages_sse(prepend(first, events), request_id)
    elif caller.kind == "responses":
        record = await ingress.responses.get(caller.tenant, caller.response_id) or {}
        frames = responses_sse(prepend(first, events), request_id, caller.response_id, record)
    else:
        frames = sse_frames(prepend(first, events), request_id, completion_chunk if text else None, client_wants_usage)
    return SSEResponse(frames, on_close=on_close, headers=headers, write_timeout_s=ingress.write_timeout_s)
