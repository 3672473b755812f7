"""Exact limits in Redis for a key and for its tenant, together: requests/min, tokens/min, parallel requests and
a spend budget per window (total, UTC day, UTC month).

Admission reserves in one Lua script (atomic): it counts the request in this minute's windows of the key and the
tenant, reserves its estimated tokens (prompt estimate + max_tokens) and cost against both budgets, and holds a
parallel slot of both, all keyed by request id; a request refused by either takes nothing. Settlement (another
script) replaces the estimate with the real usage and releases the slots, at most once per request id, so a
retried settle never counts twice. Every reservation has a lease: one whose holder died is reclaimed by the
next admission of any key of the tenant, so nothing leaks. Batch requests reserve only against the budgets
(`interactive=False`): they take no rate-limit or parallel place from interactive traffic.

All of a tenant's limit keys share the hash tag `{T}` (state/keyspace.py), so the scripts touch one slot:
  <p>:t:{T}:rl:k:<kid>:rpm:<minute>  :tpm:<minute>   the key's counters (expire after 2 windows)
  <p>:t:{T}:rl:tenant:rpm:<minute>   :tpm:<minute>   the tenant's
  <p>:t:{T}:rl:k:<kid>:inflight      ZSET request -> lease deadline (interactive: the key's parallel slots)
  <p>:t:{T}:rl:tenant:inflight       ZSET kid|request -> lease deadline (the tenant's parallel slots)
  <p>:t:{T}:rl:leases                ZSET kid|request -> lease deadline (every reservation, for reclaiming)
  <p>:t:{T}:rl:k:<kid>:resv          HASH request -> "tokens|cost|key tpm|tenant tpm|key spend|tenant spend"
  <p>:t:{T}:rl:k:<kid>:spend:<w>     HASH spent, reserved (USD) in budget window w: total | YYYY-MM-DD | YYYY-MM
  <p>:t:{T}:rl:tenant:spend:<w>      the tenant's
  <p>:t:{T}:usage[:<date>]           HASH requests, prompt_tokens, completion_tokens, cost_usd (all time, per day)
  <p>:t:{T}:usage:k:<kid>[:<date>]   the same per key
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from state.api_keys import BudgetWindow, Limits
from state.keyspace import tenant_base
from state.script_call import ScriptCall

WINDOW_S = 60
USAGE_TTL_S = 90 * 86400
_SPEND_TTL_S = {"total": 0, "daily": 3 * 86400, "monthly": 62 * 86400}

_RECLAIM = """
local function reclaim(base, leases, tenant_inflight, now)
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', leases, '-inf', now)) do
    local kid, rid = string.match(m, '^([^|]*)|(.*)$')
    local resv = base .. ':k:' .. kid .. ':resv'
    local v = redis.call('HGET', resv, rid)
    if v then
      local _, cost, _, _, kspend, tspend = string.match(v, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$')
      redis.call('HINCRBYFLOAT', kspend, 'reserved', -tonumber(cost))
      redis.call('HINCRBYFLOAT', tspend, 'reserved', -tonumber(cost))
      redis.call('HDEL', resv, rid)
    end
    redis.call('ZREM', base .. ':k:' .. kid .. ':inflight', rid)
    redis.call('ZREM', tenant_inflight, m)
    redis.call('ZREM', leases, m)
  end
end
"""

_ADMIT = (
    _RECLAIM
    + """
local rid, now, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local window_left, window_s = tonumber(ARGV[4]), tonumber(ARGV[5])
local tokens, cost, interactive, kid, base = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8] == '1', ARGV[9], ARGV[10]
local member = kid .. '|' .. rid
reclaim(base, KEYS[10], KEYS[8], now)
if redis.call('HEXISTS', KEYS[4], rid) == 1 then return {1, 'duplicate', 0, ''} end
-- limits: {rpm, tpm, max_parallel, budget} of the key (ARGV 11-14) and of the tenant (ARGV 15-18)
local scopes = {
  {name = 'key', rpm = KEYS[1], tpm = KEYS[2], inflight = KEYS[3], spend = KEYS[5], at = 11},
  {name = 'tenant', rpm = KEYS[6], tpm = KEYS[7], inflight = KEYS[8], spend = KEYS[9], at = 15},
}
for _, s in ipairs(scopes) do
  local rpm, tpm = tonumber(ARGV[s.at]), tonumber(ARGV[s.at + 1])
  local maxp, budget = tonumber(ARGV[s.at + 2]), tonumber(ARGV[s.at + 3])
  if interactive then
    if tpm > 0 and tokens > tpm then return {0, 'tpm_exceeds_limit', 0, s.name} end
    if maxp > 0 and redis.call('ZCARD', s.inflight) >= maxp then return {0, 'max_parallel', 1, s.name} end
    local used_requests = tonumber(redis.call('GET', s.rpm) or '0')
    local used_tokens = tonumber(redis.call('GET', s.tpm) or '0')
    if rpm > 0 and used_requests >= rpm then return {0, 'rpm', window_left, s.name} end
    if tpm > 0 and used_tokens + tokens > tpm then return {0, 'tpm', window_left, s.name} end
  end
  if budget >= 0 then
    local spent = tonumber(redis.call('HGET', s.spend, 'spent') or '0')
    local reserved = tonumber(redis.call('HGET', s.spend, 'reserved') or '0')
    if spent + reserved + cost > budget + 1e-12 then return {0, 'budget', 0, s.name} end
  end
end
local ktpm, ttpm = '', ''
if interactive then
  for _, s in ipairs(scopes) do
    redis.call('INCR', s.rpm)
    redis.call('EXPIRE', s.rpm, 2 * window_s)
    redis.call('INCRBY', s.tpm, tokens)
    redis.call('EXPIRE', s.tpm, 2 * window_s)
  end
  redis.call('ZADD', KEYS[3], now + lease, rid)
  redis.call('ZADD', KEYS[8], now + lease, member)
  ktpm, ttpm = KEYS[2], KEYS[7]
end
redis.call('ZADD', KEYS[10], now + lease, member)
local record = {tokens, ARGV[7], ktpm, ttpm, KEYS[5], KEYS[9]}
redis.call('HSET', KEYS[4], rid, table.concat(record, '|'))
for i, spend in ipairs({KEYS[5], KEYS[9]}) do
  redis.call('HINCRBYFLOAT', spend, 'reserved', cost)
  local ttl = tonumber(ARGV[18 + i])
  if ttl > 0 then redis.call('EXPIRE', spend, ttl) end
end
return {1, 'ok', 0, ''}
"""
)

_SETTLE = """
local rid, kid, charge = ARGV[1], ARGV[5], ARGV[6] == '1'
local v = redis.call('HGET', KEYS[1], rid)
if not v then return 0 end
local tokens, cost, ktpm, ttpm, kspend, tspend = string.match(v, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$')
redis.call('HDEL', KEYS[1], rid)
redis.call('ZREM', KEYS[2], rid)
redis.call('ZREM', KEYS[3], kid .. '|' .. rid)
redis.call('ZREM', KEYS[4], kid .. '|' .. rid)
local prompt, completion, actual_cost = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
for _, spend in ipairs({kspend, tspend}) do
  redis.call('HINCRBYFLOAT', spend, 'reserved', -tonumber(cost))
  if charge then redis.call('HINCRBYFLOAT', spend, 'spent', actual_cost) end
end
if not charge then return 1 end
for _, tpm in ipairs({ktpm, ttpm}) do
  if tpm ~= '' and redis.call('EXISTS', tpm) == 1 then
    redis.call('INCRBY', tpm, prompt + completion - tonumber(tokens))
  end
end
for i = 5, 8 do
  redis.call('HINCRBY', KEYS[i], 'requests', 1)
  redis.call('HINCRBY', KEYS[i], 'prompt_tokens', prompt)
  redis.call('HINCRBY', KEYS[i], 'completion_tokens', completion)
  redis.call('HINCRBYFLOAT', KEYS[i], 'cost_usd', actual_cost)
end
redis.call('EXPIRE', KEYS[6], tonumber(ARGV[7]))
redis.call('EXPIRE', KEYS[8], tonumber(ARGV[7]))
return 1
"""


@dataclass(frozen=True)
class Scope:
    """Whose limits a request counts against: its key's and its tenant's."""

    tenant: str
    kid: str
    key_limits: Limits
    tenant_limits: Limits

    def model_refusal(self, model: str) -> str | None:
        """Why the key or its tenant may not use `model` (their model lists), or None."""
        for limits, whose in ((self.key_limits, "API key"), (self.tenant_limits, "tenant")):
            if limits.models is not None and model not in limits.models:
                return f"this {whose} may not use model {model!r}"
        return None


@dataclass(frozen=True)
class Admission:
    allowed: bool
    reason: str  # ok | duplicate | rpm | tpm | max_parallel | budget | tpm_exceeds_limit
    retry_after_s: int
    level: str = ""  # key | tenant: whose limit refused it


def window_id(window: BudgetWindow, now: float) -> str:
    if window == "daily":
        return time.strftime("%Y-%m-%d", time.gmtime(now))
    if window == "monthly":
        return time.strftime("%Y-%m", time.gmtime(now))
    return "total"


def _limit_args(limits: Limits) -> list:
    budget = repr(limits.budget_usd) if limits.budget_usd is not None else -1
    return [limits.rpm or 0, limits.tpm or 0, limits.max_parallel or 0, budget]


class Limiter:
    def __init__(self, client: aioredis.Redis, prefix: str, lease_s: float = 900.0):
        self._redis = client
        self._p = prefix
        self._lease_s = lease_s
        self._admit = client.register_script(_ADMIT)
        self._settle = client.register_script(_SETTLE)

    def _rl(self, tenant: str) -> str:
        return f"{tenant_base(self._p, tenant)}:rl"

    def _spend_keys(self, scope: Scope, now: float) -> tuple[str, str]:
        rl = self._rl(scope.tenant)
        return (
            f"{rl}:k:{scope.kid}:spend:{window_id(scope.key_limits.budget_window, now)}",
            f"{rl}:tenant:spend:{window_id(scope.tenant_limits.budget_window, now)}",
        )

    def _usage_keys(self, tenant: str, kid: str, now: float) -> list[str]:
        base, day = tenant_base(self._p, tenant), time.strftime("%Y-%m-%d", time.gmtime(now))
        return [f"{base}:usage:k:{kid}", f"{base}:usage:k:{kid}:{day}", f"{base}:usage", f"{base}:usage:{day}"]

    async def admit(
        self,
        scope: Scope,
        request_id: str,
        tokens: int,
        cost_usd: float,
        *,
        interactive: bool = True,
        now: float | None = None,
    ) -> Admission:
        now = time.time() if now is None else now
        minute = int(now // WINDOW_S)
        rl, kid = self._rl(scope.tenant), scope.kid
        key_spend, tenant_spend = self._spend_keys(scope, now)
        keys = [
            f"{rl}:k:{kid}:rpm:{minute}", f"{rl}:k:{kid}:tpm:{minute}", f"{rl}:k:{kid}:inflight", f"{rl}:k:{kid}:resv",
            key_spend, f"{rl}:tenant:rpm:{minute}", f"{rl}:tenant:tpm:{minute}", f"{rl}:tenant:inflight",
            tenant_spend, f"{rl}:leases",
        ]  # fmt: skip
        args = [
            request_id, repr(now), repr(self._lease_s), math.ceil((minute + 1) * WINDOW_S - now), WINDOW_S, tokens,
            repr(cost_usd), 1 if interactive else 0, kid, rl, *_limit_args(scope.key_limits),
            *_limit_args(scope.tenant_limits), _SPEND_TTL_S[scope.key_limits.budget_window],
            _SPEND_TTL_S[scope.tenant_limits.budget_window],
        ]  # fmt: skip
        allowed, reason, retry_after, level = await self._admit(keys=keys, args=args)
        return Admission(bool(allowed), reason, int(retry_after), level)

    async def settle(
        self,
        tenant: str,
        kid: str,
        request_id: str,
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: float,
        *,
        charge: bool = True,
        now: float | None = None,
    ) -> bool:
        """Replace the reservation with real usage (`charge=False`: only give it back, as a batch request does
        whose usage its result commit charged). False when it was already settled or reclaimed."""
        return await self.settle_by(
            self.settle_call(tenant, kid, request_id, prompt_tokens, completion_tokens, cost_usd, charge, now)
        )

    async def settle_by(self, call: ScriptCall) -> bool:
        """Run a `settle_call` on its own."""
        return bool(await self._settle(keys=call.keys, args=call.args))

    def settle_call(
        self,
        tenant: str,
        kid: str,
        request_id: str,
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: float,
        charge: bool = True,
        now: float | None = None,
    ) -> ScriptCall:
        """`settle` as a script call, to send with other writes (state/script_call.py); its reply is 1 when it
        counted, 0 when the reservation was settled or reclaimed already."""
        rl = self._rl(tenant)
        keys = [
            f"{rl}:k:{kid}:resv", f"{rl}:k:{kid}:inflight", f"{rl}:tenant:inflight", f"{rl}:leases",
            *self._usage_keys(tenant, kid, time.time() if now is None else now),
        ]  # fmt: skip
        args = [request_id, prompt_tokens, completion_tokens, repr(cost_usd), kid, 1 if charge else 0, USAGE_TTL_S]
        return ScriptCall(_SETTLE, keys, args)

    async def renew(self, tenant: str, kid: str, request_id: str, now: float | None = None) -> None:
        """Extend a live reservation's lease (an answer that runs longer than `lease_s`); a settled or reclaimed
        one stays gone (XX: only members that are there)."""
        rl, member = self._rl(tenant), f"{kid}|{request_id}"
        until = (time.time() if now is None else now) + self._lease_s
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(f"{rl}:k:{kid}:inflight", {request_id: until}, xx=True)
            pipe.zadd(f"{rl}:tenant:inflight", {member: until}, xx=True)
            pipe.zadd(f"{rl}:leases", {member: until}, xx=True)
            await pipe.execute()

    @property
    def lease_s(self) -> float:
        return self._lease_s

    def charge_keys(self, scope: Scope, now: float | None = None) -> list[str]:
        """Where a request's spend and usage are counted, for scripts that charge it themselves (batch commits):
        the key's and the tenant's spend in their budget windows, then the key's and the tenant's usage (all
        time, today)."""
        now = time.time() if now is None else now
        key_spend, tenant_spend = self._spend_keys(scope, now)
        return [key_spend, tenant_spend, *self._usage_keys(scope.tenant, scope.kid, now)]

    async def usage(self, tenant: str, kid: str | None = None, limits: Limits | None = None) -> dict[str, float]:
        """All-time usage of a tenant (or of one of its keys), and what is reserved and spent in the current
        budget window of `limits`."""
        base, rl = tenant_base(self._p, tenant), self._rl(tenant)
        raw = await self._redis.hgetall(f"{base}:usage" + (f":k:{kid}" if kid else ""))
        window = window_id((limits or Limits()).budget_window, time.time())
        spend = await self._redis.hgetall(f"{rl}:k:{kid}:spend:{window}" if kid else f"{rl}:tenant:spend:{window}")
        return {
            "requests": int(raw.get("requests", 0)),
            "prompt_tokens": int(raw.get("prompt_tokens", 0)),
            "completion_tokens": int(raw.get("completion_tokens", 0)),
            "cost_usd": float(raw.get("cost_usd", 0.0)),
            "reserved_usd": max(0.0, float(spend.get("reserved", 0.0))),
            "budget_spent_usd": float(spend.get("spent", 0.0)),
        }

    async def inflight(self, tenant: str, kid: str | None = None) -> int:
        rl = self._rl(tenant)
        return int(await self._redis.zcard(f"{rl}:k:{kid}:inflight" if kid else f"{rl}:tenant:inflight"))
