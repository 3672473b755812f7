"""Exact per-key limits in Redis: requests/min, tokens/min, parallel requests and a spend budget.

Admission reserves (one Lua script, atomic): it counts the request in this minute's window, reserves its
estimated tokens (prompt estimate + max_tokens) and cost, and holds a parallel slot, all keyed by request id.
Settlement (another script) replaces the estimate with the real usage and releases the slot; it runs at
most once per request id, so a retried settle never counts twice. A reservation whose holder died is
reclaimed when its lease expires, by the next admission for that key: nothing leaks.

Keys share the hash tag `{<key_id>}` so one key's limits live in one Redis Cluster slot:
  <p>:rl:{kid}:rpm:<window>   <p>:rl:{kid}:tpm:<window>   counters, expire after 2 windows
  <p>:rl:{kid}:inflight       ZSET request_id -> lease deadline
  <p>:rl:{kid}:resv           HASH request_id -> "tokens|cost|tpm-key"
  <p>:rl:{kid}:spend          HASH spent, reserved (USD)
  <p>:usage:{kid}             HASH requests, prompt_tokens, completion_tokens, cost_usd (all time)
  <p>:usage:{kid}:<date>      the same per UTC day
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from state.api_keys import KeyLimits

WINDOW_S = 60

_ADMIT = """
local rid, now = ARGV[1], tonumber(ARGV[2])
if redis.call('HEXISTS', KEYS[4], rid) == 1 then return {1, 'duplicate', 0} end
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do
  local v = redis.call('HGET', KEYS[4], m)
  if v then
    local _, cost = string.match(v, '^([^|]*)|([^|]*)|')
    redis.call('HINCRBYFLOAT', KEYS[5], 'reserved', -tonumber(cost))
    redis.call('HDEL', KEYS[4], m)
  end
  redis.call('ZREM', KEYS[3], m)
end
local rpm, tpm, maxp, budget = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local tokens, cost, window_left = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[10])
if tpm > 0 and tokens > tpm then return {0, 'tpm_exceeds_limit', 0} end
if maxp > 0 and redis.call('ZCARD', KEYS[3]) >= maxp then return {0, 'max_parallel', 1} end
if rpm > 0 and tonumber(redis.call('GET', KEYS[1]) or '0') >= rpm then return {0, 'rpm', window_left} end
if tpm > 0 and tonumber(redis.call('GET', KEYS[2]) or '0') + tokens > tpm then return {0, 'tpm', window_left} end
if budget >= 0 then
  local spent = tonumber(redis.call('HGET', KEYS[5], 'spent') or '0')
  local reserved = tonumber(redis.call('HGET', KEYS[5], 'reserved') or '0')
  if spent + reserved + cost > budget + 1e-12 then return {0, 'budget', 0} end
end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], 2 * tonumber(ARGV[11]))
redis.call('INCRBY', KEYS[2], tokens)
redis.call('EXPIRE', KEYS[2], 2 * tonumber(ARGV[11]))
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[9]), rid)
redis.call('HSET', KEYS[4], rid, tokens .. '|' .. ARGV[8] .. '|' .. KEYS[2])
redis.call('HINCRBYFLOAT', KEYS[5], 'reserved', cost)
return {1, 'ok', 0}
"""

_SETTLE = """
local v = redis.call('HGET', KEYS[2], ARGV[1])
if not v then return 0 end
local tokens, cost, tpm_key = string.match(v, '^([^|]*)|([^|]*)|(.*)$')
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HINCRBYFLOAT', KEYS[3], 'reserved', -tonumber(cost))
redis.call('HINCRBYFLOAT', KEYS[3], 'spent', tonumber(ARGV[4]))
local actual = tonumber(ARGV[2]) + tonumber(ARGV[3])
if redis.call('EXISTS', tpm_key) == 1 then redis.call('INCRBY', tpm_key, actual - tonumber(tokens)) end
for i = 4, 5 do
  redis.call('HINCRBY', KEYS[i], 'requests', 1)
  redis.call('HINCRBY', KEYS[i], 'prompt_tokens', tonumber(ARGV[2]))
  redis.call('HINCRBY', KEYS[i], 'completion_tokens', tonumber(ARGV[3]))
  redis.call('HINCRBYFLOAT', KEYS[i], 'cost_usd', tonumber(ARGV[4]))
end
redis.call('EXPIRE', KEYS[5], 90 * 86400)
return 1
"""


@dataclass(frozen=True)
class Admission:
    allowed: bool
    reason: str  # ok | duplicate | rpm | tpm | max_parallel | budget | tpm_exceeds_limit
    retry_after_s: int


class Limiter:
    def __init__(self, client: aioredis.Redis, prefix: str, lease_s: float = 900.0):
        self._redis = client
        self._p = prefix
        self._lease_s = lease_s
        self._admit = client.register_script(_ADMIT)
        self._settle = client.register_script(_SETTLE)

    def _base(self, kid: str) -> str:
        return f"{self._p}:rl:{{{kid}}}"

    async def admit(
        self, kid: str, limits: KeyLimits, request_id: str, tokens: int, cost_usd: float, now: float | None = None
    ) -> Admission:
        now = time.time() if now is None else now
        window = int(now // WINDOW_S)
        base = self._base(kid)
        keys = [f"{base}:rpm:{window}", f"{base}:tpm:{window}", f"{base}:inflight", f"{base}:resv", f"{base}:spend"]
        args = [
            request_id,
            repr(now),
            limits.rpm or 0,
            limits.tpm or 0,
            limits.max_parallel or 0,
            repr(limits.budget_usd) if limits.budget_usd is not None else -1,
            tokens,
            repr(cost_usd),
            repr(self._lease_s),
            math.ceil((window + 1) * WINDOW_S - now),
            WINDOW_S,
        ]
        allowed, reason, retry_after = await self._admit(keys=keys, args=args)
        return Admission(bool(allowed), reason, int(retry_after))

    def charge_keys(self, kid: str) -> list[str]:
        """Where a key's spend and usage are counted: spend hash, all-time usage, today's usage (other
        scripts that charge a key, such as batch commits, write the same keys)."""
        day = time.strftime("%Y-%m-%d", time.gmtime())
        return [f"{self._base(kid)}:spend", f"{self._p}:usage:{{{kid}}}", f"{self._p}:usage:{{{kid}}}:{day}"]

    async def settle(
        self, kid: str, request_id: str, prompt_tokens: int, completion_tokens: int, cost_usd: float
    ) -> bool:
        """Replace the reservation with real usage. False when it was already settled or reclaimed."""
        base = self._base(kid)
        keys = [f"{base}:inflight", f"{base}:resv", *self.charge_keys(kid)]
        return bool(await self._settle(keys=keys, args=[request_id, prompt_tokens, completion_tokens, repr(cost_usd)]))

    async def usage(self, kid: str) -> dict[str, float]:
        raw = await self._redis.hgetall(f"{self._p}:usage:{{{kid}}}")
        spend = await self._redis.hgetall(f"{self._base(kid)}:spend")
        return {
            "requests": int(raw.get("requests", 0)),
            "prompt_tokens": int(raw.get("prompt_tokens", 0)),
            "completion_tokens": int(raw.get("completion_tokens", 0)),
            "cost_usd": float(raw.get("cost_usd", 0.0)),
            "reserved_usd": max(0.0, float(spend.get("reserved", 0.0))),
        }

    async def inflight(self, kid: str) -> int:
        return int(await self._redis.zcard(f"{self._base(kid)}:inflight"))
