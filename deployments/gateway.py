"""The ingress's gateway logic, apart from HTTP: who is calling (master key or a Redis API key, and the tenant it
acts for), whether the request is let in (the model's capacity, then its key's and its tenant's limits), and
settling its real usage and cost after."""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace

import redis.asyncio as aioredis

from core.errors import AuthenticationFailed, InvalidRequest, NotFound, PermissionDenied, QuotaExceeded, RateLimited
from core.keys import key_hash
from core.models import Caller, ChatRequest
from core.names import ADMIN_TENANT
from core.pricing import Price
from core.setting_groups import LimitsSettings
from core.tokens import estimate_prompt_tokens, resolve_max_tokens
from deployments.admission import AdmissionGate, Slot
from deployments.frames import Batch
from observability import tracing
from state.api_keys import KeyRecord, KeyStore, Limits
from state.limits import Limiter, Scope
from state.outage import retry_through_outage
from state.tenants import TenantRecord, TenantStore, decode_tenant

MASTER_KID = "master"
UNLESS_AFTER_S = 1.0  # how long a settle that may be someone else's waits before it asks
KEY_TENANTS_MAX = 100_000  # keys whose tenant a replica remembers (the oldest is forgotten first)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: its key, the tenant it acts for, and the limits of both."""

    kid: str
    name: str
    tenant: str
    admin: bool
    limits: Limits
    tenant_limits: Limits
    response_cache: bool | None = None  # None: the server's default

    def caller(self) -> Caller:
        return Caller(
            tenant=self.tenant,
            key_id=self.kid,
            admin=self.admin,
            response_cache=self.response_cache,
            traceparent=tracing.traceparent(),
            request_id=tracing.REQUEST_ID.get(),
        )

    def scope(self) -> Scope:
        return Scope(self.tenant, self.kid, self.limits, self.tenant_limits)


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
        capacities: dict[str, int] | None = None,
        deployments: dict[str, str] | None = None,
    ):
        self._master = master_key_hash
        self._limits = limits
        self._price = price
        self.redis = client
        self.keys = KeyStore(client, redis_prefix)
        self.tenants = TenantStore(client, redis_prefix)
        self.limiter = Limiter(client, redis_prefix, lease_s=limits.request_lease_s)
        self.admission = AdmissionGate(capacity, limits.overload_retry_after_s, capacities, deployments)
        self._pending: set[asyncio.Task] = set()
        # A key's tenant never changes: a key seen before is read together with its tenant, in one round trip.
        self._key_tenants: dict[str, str] = {}

    async def authenticate(self, authorization: str) -> Principal:
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationFailed("missing API key: send 'Authorization: Bearer <key>'")
        digest = key_hash(token)
        if self._master and hmac.compare_digest(digest, self._master):
            return Principal(MASTER_KID, "master", ADMIN_TENANT, True, Limits(), Limits())
        # The lookup is by the digest itself, so the stored digest equals it; no timing leak on the key.
        record, tenant = await self._key_and_tenant(digest)
        if record is None or record.revoked:
            raise AuthenticationFailed("incorrect API key provided")
        if record.expired():
            expired = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(record.expires_at))
            raise AuthenticationFailed(f"this API key expired at {expired}", code="expired_api_key")
        tenant_limits = tenant.limits if tenant is not None else Limits()
        return Principal(
            record.key_id,
            record.name,
            record.tenant,
            record.admin,
            record.limits(),
            tenant_limits,
            record.response_cache,
        )

    async def _key_and_tenant(self, digest: str) -> tuple[KeyRecord | None, TenantRecord | None]:
        """The key's record and its tenant's, both as stored now: in one round trip for a key this replica has
        seen (its tenant is remembered, never its record or limits), in two the first time."""
        known = self._key_tenants.get(digest)
        if known is not None:
            record, raw = await self.keys.lookup_with(digest, self.tenants.meta_key(known))
            if record is None:  # deleted since
                self._key_tenants.pop(digest, None)
                return None, None
            if record.tenant == known:
                return record, decode_tenant(raw)
        record = await self.keys.lookup(digest)
        if record is None:  # (unknown keys are not remembered: a caller trying keys fills nothing)
            return None, None
        if len(self._key_tenants) >= KEY_TENANTS_MAX:
            self._key_tenants.pop(next(iter(self._key_tenants)))
        self._key_tenants[digest] = record.tenant
        return record, await self.tenants.get(record.tenant)

    async def acting_for(self, principal: Principal, tenant: str) -> Principal:
        """An admin key acting for another tenant (the X-LLMServe-Tenant header): that tenant's objects and
        limits; the request is counted in that tenant's usage."""
        if tenant == principal.tenant:
            return principal
        if not principal.admin:
            raise PermissionDenied("only admin keys may act for another tenant (X-LLMServe-Tenant)")
        record = await self.tenants.get(tenant)
        if record is None:  # objects written for it could never be found again by `tenants delete`
            raise NotFound(f"no tenant {tenant!r}", param="X-LLMServe-Tenant")
        return replace(principal, tenant=tenant, tenant_limits=record.limits)

    async def admit(
        self, principal: Principal, model: str, reservation_id: str, prompt: int, completion: int, price: Price
    ) -> None:
        """The key's model list, then its and its tenant's limits, for a request that may use `prompt` +
        `completion` tokens at `price`."""
        scope = principal.scope()
        if (refused := scope.model_refusal(model)) is not None:
            raise PermissionDenied(refused, param="model")
        tokens = prompt + completion
        admission = await self.limiter.admit(scope, reservation_id, tokens, price.cost(prompt, completion))
        if not admission.allowed:
            raise refusal(principal, admission.reason, admission.level, admission.retry_after_s, tokens)

    async def open(self, principal: Principal, request: ChatRequest) -> Ticket:
        """Let a chat request in: its prompt estimated, and `max_tokens` for each of its `n` choices."""
        prompt = estimate_prompt_tokens(request.messages)
        completion = resolve_max_tokens(request.max_tokens, self._limits) * request.choices
        return await self.open_for(principal, request.model, prompt, completion, self._price)

    async def open_for(self, principal: Principal, model: str, prompt: int, completion: int, price: Price) -> Ticket:
        """Let a request in: a place under the model's capacity (503 when full, before any Redis call, so a
        busy server costs the caller none of its quota), then its key's limits (429)."""
        with tracing.span("admission", model=model):
            slot = self.admission.enter(model)
        # Reserved and settled under an id of our own: the x-request-id is the client's to choose, and a
        # reused one must neither skip the count nor share a reservation.
        ticket = Ticket(self, principal, uuid.uuid4().hex, slot)
        try:
            with tracing.span("limits", tenant=principal.tenant, reserved_tokens=prompt + completion):
                await self.admit(principal, model, ticket.reservation_id, prompt, completion, price)
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
        unless: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        """Settle in a task of its own: it must happen even when the request's task is being cancelled
        (client disconnect). The cost is what the providers charged when known, else the list price. `unless`
        says, a moment later, that someone else (the answer's run) settles it."""
        cost = self._price.cost(prompt_tokens, completion_tokens) if cost_usd is None else cost_usd
        settle = self.limiter.settle

        async def settle_once() -> bool:
            if unless is not None:
                await asyncio.sleep(UNLESS_AFTER_S)  # a call cut off mid-way reaches the orchestrator meanwhile
                if await unless():
                    return False
            return await settle(principal.tenant, principal.kid, reservation_id, prompt_tokens, completion_tokens, cost)

        task = asyncio.ensure_future(retry_through_outage(settle_once, self._limits.request_lease_s))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)


def refusal(principal: Principal, reason: str, level: str, retry_after_s: int, tokens: int) -> Exception:
    """The error for a request a key's or a tenant's limit refused (`level`: key | tenant)."""
    limits = principal.tenant_limits if level == "tenant" else principal.limits
    whose = f"tenant {principal.tenant}" if level == "tenant" else f"API key {principal.kid}"
    if reason == "budget":
        window = "" if limits.budget_window == "total" else f" ({limits.budget_window})"
        return QuotaExceeded(f"{whose} has spent its budget of ${limits.budget_usd:g}{window}")
    if reason == "tpm_exceeds_limit":
        return InvalidRequest(
            f"this request may use {tokens} tokens, more than the {limits.tpm} tokens per minute of {whose}; "
            "lower max_tokens or shorten the prompt",
            param="max_tokens",
        )
    what = {"rpm": "requests per minute", "tpm": "tokens per minute", "max_parallel": "parallel requests"}
    return RateLimited(
        f"rate limit reached for {whose}: {what.get(reason, reason)}",
        code="rate_limit_exceeded",
        retry_after_s=retry_after_s,
    )


class Ticket:
    """An admitted request: its admission slot and its limit reservation. `finish()` gives the slot back exactly
    once, whichever path ends the request (answer, error, client gone, a stream that never started). The
    reservation is settled by the answer's run (deployments/answer_run.py), which knows the exact usage, once
    the answer has begun (`begun()`); a request that ended before its answer began settles it here, as nothing."""

    def __init__(self, gateway: Gateway, principal: Principal, reservation_id: str, slot: Slot):
        self.reservation_id = reservation_id
        self._gateway = gateway
        self._principal = principal
        self._slot = slot
        self._begun = False
        self._done = False
        # Whether the answer began after all (its run owns the reservation) though this request ended first.
        self.answer_started: Callable[[], Awaitable[bool]] | None = None

    def begun(self) -> None:
        self._begun = True

    @property
    def has_begun(self) -> bool:
        return self._begun

    def finish(self) -> None:
        if self._done:
            return
        self._done = True
        self._slot.release()
        if not self._begun:
            self._gateway.settle_later(self._principal, self.reservation_id, 0, 0, 0.0, unless=self.answer_started)

    async def stream(self, batches: AsyncIterator[Batch]) -> AsyncIterator[Batch]:
        """Pass the answer's events through, and finish when the stream ends, fails or is closed."""
        try:
            async for batch in batches:
                self.begun()
                yield batch
        finally:
            self.finish()
