"""The ingress's gateway logic, apart from HTTP: who is calling (master key or a Redis API key), whether the
request is let in (the model's capacity, then its key's limits), and settling its real usage and cost after."""

from __future__ import annotations

import asyncio
import hmac
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import redis.asyncio as aioredis

from core.errors import AuthenticationFailed, InvalidRequest, PermissionDenied, QuotaExceeded, RateLimited
from core.keys import key_hash
from core.models import ChatChunk, ChatRequest, Usage
from core.pricing import Price
from core.setting_groups import LimitsSettings
from core.tokens import estimate_prompt_tokens, estimate_tokens, resolve_max_tokens
from deployments.admission import AdmissionGate, Slot
from state.api_keys import KeyLimits, KeyRecord, KeyStore
from state.limits import Limiter

MASTER_KID = "master"


@dataclass(frozen=True)
class Principal:
    kid: str
    name: str
    admin: bool
    limits: KeyLimits


class Gateway:
    """`price`: what the self-hosted model's tokens cost, for reservations and for settling a request whose
    providers reported no cost; `capacity`: requests let in per model (deployments/admission.py)."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        master_key_hash: str,
        redis_prefix: str,
        limits: LimitsSettings,
        price: Price,
        capacity: int,
    ):
        self._master = master_key_hash
        self._limits = limits
        self._price = price
        self.redis = client
        self.keys = KeyStore(client, redis_prefix)
        self.limiter = Limiter(client, redis_prefix, lease_s=limits.request_lease_s)
        self.admission = AdmissionGate(capacity, limits.overload_retry_after_s)
        self._pending: set[asyncio.Task] = set()

    async def authenticate(self, authorization: str) -> Principal:
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationFailed("missing API key: send 'Authorization: Bearer <key>'")
        digest = key_hash(token)
        if self._master and hmac.compare_digest(digest, self._master):
            return Principal(MASTER_KID, "master", True, KeyLimits())
        record: KeyRecord | None = await self.keys.lookup(digest)
        # The lookup is by the digest itself, so the stored digest equals it; no timing leak on the key.
        if record is None or record.revoked:
            raise AuthenticationFailed("incorrect API key provided")
        return Principal(
            record.key_id, record.name, False, KeyLimits(**record.model_dump(include=set(KeyLimits.model_fields)))
        )

    async def admit(self, principal: Principal, request: ChatRequest, reservation_id: str) -> None:
        limits = principal.limits
        if limits.models is not None and request.model not in limits.models:
            raise PermissionDenied(f"this API key may not use model {request.model!r}", param="model")
        prompt = estimate_prompt_tokens(request.messages)
        completion = resolve_max_tokens(request.max_tokens, self._limits)
        tokens = prompt + completion
        admission = await self.limiter.admit(
            principal.kid, limits, reservation_id, tokens, self._price.cost(prompt, completion)
        )
        if admission.allowed:
            return
        if admission.reason == "budget":
            raise QuotaExceeded(f"API key {principal.kid} has spent its budget of ${limits.budget_usd:g}")
        if admission.reason == "tpm_exceeds_limit":
            raise InvalidRequest(
                f"this request may use {tokens} tokens, more than this key's {limits.tpm} tokens per minute; "
                "lower max_tokens or shorten the prompt",
                param="max_tokens",
            )
        what = {"rpm": "requests per minute", "tpm": "tokens per minute", "max_parallel": "parallel requests"}
        raise RateLimited(
            f"rate limit reached for API key {principal.kid}: {what.get(admission.reason, admission.reason)}",
            code="rate_limit_exceeded",
            retry_after_s=admission.retry_after_s,
        )

    async def open(self, principal: Principal, request: ChatRequest) -> Ticket:
        """Let a request in: a place under the model's capacity (503 when full, before any Redis call, so a
        busy server costs the caller none of its quota), then its key's limits (429)."""
        slot = self.admission.enter(request.model)
        # Reserved and settled under an id of our own: the x-request-id is the client's to choose, and a
        # reused one must neither skip the count nor share a reservation.
        ticket = Ticket(self, principal, uuid.uuid4().hex, estimate_prompt_tokens(request.messages), slot)
        try:
            await self.admit(principal, request, ticket.reservation_id)
        except BaseException:
            slot.release()  # nothing was reserved
            raise
        return ticket

    def settle_later(
        self,
        principal: Principal,
        reservation_id: str,
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: float | None = None,
    ) -> None:
        """Settle in a task of its own: it must happen even when the request's task is being cancelled
        (client disconnect). The cost is what the providers charged when known, else the list price."""
        cost = self._price.cost(prompt_tokens, completion_tokens) if cost_usd is None else cost_usd
        task = asyncio.ensure_future(
            self.limiter.settle(principal.kid, reservation_id, prompt_tokens, completion_tokens, cost)
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)


class Ticket:
    """An admitted request: its reservation and its admission slot, given back exactly once by `finish()`,
    whichever path ends the request (answer, error, client gone, a stream that never started)."""

    def __init__(self, gateway: Gateway, principal: Principal, reservation_id: str, prompt_estimate: int, slot: Slot):
        self.reservation_id = reservation_id
        self.usage: Usage | None = None  # the real usage, once the engine reported it
        self.cost_usd: float | None = None  # what the providers charged, once known
        self.streamed_chars = 0  # answer text seen, for the estimate when no usage came
        self._gateway = gateway
        self._principal = principal
        self._prompt_estimate = prompt_estimate
        self._slot = slot
        self._done = False

    def finish(self) -> None:
        if self._done:
            return
        self._done = True
        self._slot.release()
        if self.usage is not None:
            prompt, completion = self.usage.prompt_tokens, self.usage.completion_tokens
        else:  # failed or cut short: what was generated, and the prompt only if the engine started on it
            # (core/tokens.py's estimate: the ingress holds no tokenizer; the orchestrator counts exactly)
            completion = estimate_tokens(self.streamed_chars)
            prompt = self._prompt_estimate if completion else 0
        self._gateway.settle_later(self._principal, self.reservation_id, prompt, completion, self.cost_usd)

    async def stream(
        self, chunks: AsyncIterator[list[ChatChunk]], client_wants_usage: bool
    ) -> AsyncIterator[list[ChatChunk]]:
        """Pass chunks through, take the usage (always requested internally), drop the usage chunk when the
        client did not ask for it, and finish when the stream ends, fails or is closed."""
        try:
            async for batch in chunks:
                out = []
                for chunk in batch:
                    if chunk.usage is not None:
                        self.usage, self.cost_usd = chunk.usage, chunk.cost_usd
                        if not client_wants_usage:
                            continue
                    self.streamed_chars += sum(len(c.delta.content or "") for c in chunk.choices)
                    out.append(chunk)
                if out:
                    yield out
        finally:
            self.finish()
