"""The budgets a batch request draws on: its key's and its tenant's. Before a provider is called, the request's
estimated cost is reserved against both (the same Lua reserve as interactive requests, without taking a rate
limit or parallel place); a request over either budget goes to the error file as `insufficient_quota` without
calling anything. Its real cost is charged by the commit of its result (exactly once, state/batches.py), and
the reservation is then given back."""

from __future__ import annotations

import redis.asyncio as aioredis

from core.errors import InvalidRequest, LLMServeError, PermissionDenied, QuotaExceeded
from core.models import ChatRequest
from core.pricing import Price
from core.setting_groups import LimitsSettings
from core.tokens import estimate_prompt_tokens, resolve_max_tokens
from state.api_keys import KeyStore, Limits
from state.batches import QueuedRequest
from state.limits import Limiter, Scope
from state.tenants import TenantStore


class BatchAccounts:
    def __init__(self, client: aioredis.Redis, prefix: str, limits: LimitsSettings, price: Price):
        self.limiter = Limiter(client, prefix, lease_s=limits.request_lease_s)
        self._keys = KeyStore(client, prefix)
        self._tenants = TenantStore(client, prefix)
        self._limits = limits
        self._price = price

    async def scope(self, request: QueuedRequest) -> Scope:
        """The limits of the key that made the batch and of its tenant (the master key and its tenant have none;
        a deleted tenant's batches are gone with it, so their requests never get here)."""
        tenant = await self._tenants.get(request.tenant)
        record = await self._keys.by_id(request.owner)
        key_limits = record.limits() if record is not None else Limits()
        return Scope(request.tenant, request.owner, key_limits, tenant.limits if tenant else Limits())

    async def reserve(self, scope: Scope, reservation_id: str, chat: ChatRequest) -> LLMServeError | None:
        """Reserve the request's estimated cost; the refusal to file when its model is not the key's or a budget
        cannot take it."""
        if (refused := scope.model_refusal(chat.model)) is not None:
            return PermissionDenied(refused, param="model")
        try:
            completion = resolve_max_tokens(chat.max_tokens, self._limits) * chat.choices
        except InvalidRequest as exc:  # over the cap: the line's error, as the orchestrator would answer
            return exc
        prompt = estimate_prompt_tokens(chat.messages)
        admission = await self.limiter.admit(
            scope, reservation_id, prompt + completion, self._price.cost(prompt, completion), interactive=False
        )
        if admission.allowed:
            return None
        limits = scope.tenant_limits if admission.level == "tenant" else scope.key_limits
        whose = f"tenant {scope.tenant}" if admission.level == "tenant" else f"API key {scope.kid}"
        return QuotaExceeded(f"{whose} has spent its budget of ${limits.budget_usd:g}")

    async def release(self, scope: Scope, reservation_id: str) -> None:
        await self.limiter.settle(scope.tenant, scope.kid, reservation_id, 0, 0, 0.0, charge=False)
