import contextlib
import os
import uuid

import pytest
import redis.asyncio as aioredis

REDIS_URL = os.environ.get("LLMSERVE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_prefix():
    """A unique key prefix per test, removed afterwards, so tests never see each other's keys."""
    import redis

    prefix = f"llmserve-test-{uuid.uuid4().hex[:8]}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


@contextlib.asynccontextmanager
async def redis_client():
    """An asyncio Redis client for one test body, closed afterwards."""
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()
