"""A circuit breaker per provider, shared by every orchestrator replica through Redis.

closed: requests flow; failures are counted in a sliding window. After `failures` of them the breaker opens; a
success clears them (one whose request began while none was counted, the common case, has nothing to clear and
costs no Redis call).
open: no requests until `open_s` has passed. Then half-open: exactly one request (the probe, held for at most
`probe_s`) is let through; its success closes the breaker, its failure opens it again.

Keys (hash tag per provider): <p>:cb:{name}:fail (ZSET of failure times), <p>:cb:{name}:open_until,
<p>:cb:{name}:probe (the probe's token, with a TTL).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis

_ALLOW = """
local now = tonumber(ARGV[1])
local open_until = tonumber(redis.call('GET', KEYS[1]) or '0')
if open_until == 0 then
  if redis.call('EXISTS', KEYS[3]) == 1 then return 'closed' end
  return 'clean'
end
if now < open_until then return 'open' end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then return 'probe' end
return 'open'
"""

_FAILURE = """
local now, window, threshold, open_ms = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local open_until = tonumber(redis.call('GET', KEYS[2]) or '0')
if open_until > 0 and now >= open_until then
  -- a failed probe (or a failure while half-open): open again
  redis.call('SET', KEYS[2], now + open_ms)
  redis.call('DEL', KEYS[3], KEYS[1])
  return 'open'
end
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('PEXPIRE', KEYS[1], window)
if open_until == 0 and redis.call('ZCARD', KEYS[1]) >= threshold then
  redis.call('SET', KEYS[2], now + open_ms)
  redis.call('DEL', KEYS[1])
  return 'open'
end
return 'counted'
"""


@dataclass(frozen=True)
class BreakerPolicy:
    failures: int = 5
    window_s: float = 30.0
    open_s: float = 15.0
    probe_s: float = 30.0


class CircuitBreaker:
    def __init__(self, client: aioredis.Redis, prefix: str, policy: BreakerPolicy):
        self._redis = client
        self._p = prefix
        self._policy = policy
        self._allow = client.register_script(_ALLOW)
        self._failure = client.register_script(_FAILURE)

    def _keys(self, name: str) -> tuple[str, str, str]:
        base = f"{self._p}:cb:{{{name}}}"
        return f"{base}:fail", f"{base}:open_until", f"{base}:probe"

    async def allow(self, name: str, now: float | None = None) -> str:
        """'clean' (closed, no failure counted: a success has nothing to clear), 'closed' or 'probe' (go ahead), or
        'open' (skip this provider)."""
        fail, open_until, probe = self._keys(name)
        now_ms = int((time.time() if now is None else now) * 1000)
        return await self._allow(
            keys=[open_until, probe, fail], args=[now_ms, uuid.uuid4().hex, int(self._policy.probe_s * 1000)]
        )

    async def success(self, name: str) -> None:
        fail, open_until, probe = self._keys(name)
        if await self._redis.exists(open_until, fail):
            await self._redis.delete(fail, open_until, probe)

    async def failure(self, name: str, now: float | None = None) -> str:
        fail, open_until, probe = self._keys(name)
        now_ms = int((time.time() if now is None else now) * 1000)
        p = self._policy
        args = [now_ms, int(p.window_s * 1000), p.failures, int(p.open_s * 1000), uuid.uuid4().hex]
        return await self._failure(keys=[fail, open_until, probe], args=args)

    async def state(self, name: str, now: float | None = None) -> str:
        _, open_until, _ = self._keys(name)
        until = float(await self._redis.get(open_until) or 0)
        if until == 0:
            return "closed"
        return "open" if (time.time() if now is None else now) * 1000 < until else "half_open"
