"""The response cache on a real Redis: what makes a request cacheable, what its key depends on, per-tenant
entries, invalidation by cited source, expiry and the size bound."""

import asyncio

from core.models import Citation
from state.response_cache import ResponseCache, cache_key, cacheable
from tests.conftest import redis_client

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]
CHUNK = Citation(source="notes/a.md", chunk_id="a:1:0", score=0.9, text="Paris is the capital of France.")
ANSWER = [{"choices": [{"index": 0, "delta": {"content": "Paris."}, "finish_reason": "stop"}]}]


def test_only_deterministic_requests_are_cacheable():
    assert cacheable({"temperature": 0, "max_tokens": 5})
    assert cacheable({"temperature": 0.8, "seed": 7})
    assert not cacheable({"temperature": 0.8})
    assert not cacheable({"max_tokens": 5})  # the engine's default temperature samples


def test_the_key_changes_with_model_params_prompt_and_the_chunks_content():
    base = cache_key("m", {"temperature": 0, "max_tokens": 5}, PROMPT, [CHUNK])
    assert base == cache_key("m", {"max_tokens": 5, "temperature": 0}, PROMPT, [CHUNK])  # order does not matter
    changed_text = CHUNK.model_copy(update={"text": "Lyon is the capital of France."})
    others = [
        cache_key("other", {"temperature": 0, "max_tokens": 5}, PROMPT, [CHUNK]),
        cache_key("m", {"temperature": 0, "max_tokens": 6}, PROMPT, [CHUNK]),
        cache_key("m", {"temperature": 0, "max_tokens": 5}, [{"role": "user", "content": "And Spain?"}], [CHUNK]),
        cache_key("m", {"temperature": 0, "max_tokens": 5}, PROMPT, [changed_text]),
        cache_key("m", {"temperature": 0, "max_tokens": 5}, PROMPT, []),
    ]
    assert base not in others and len(set(others)) == len(others)


def test_entries_are_per_tenant_dropped_by_source_and_bounded(redis_prefix):
    async def scenario():
        async with redis_client() as client:
            cache = ResponseCache(client, redis_prefix, ttl_s=60, max_bytes=2_000)
            assert await cache.put("acme", "k1", ANSWER, ["notes/a.md", "notes/b.md"])
            assert await cache.put("acme", "k2", ANSWER, ["notes/b.md"])
            assert await cache.get("acme", "k1") == ANSWER
            assert await cache.get("globex", "k1") is None  # another tenant's entry does not exist for it
            assert 0 < await client.ttl(f"{redis_prefix}:t:{{acme}}:rcache:k1") <= 60
            assert await cache.invalidate("acme", ["notes/a.md"]) == 1
            assert await cache.get("acme", "k1") is None and await cache.get("acme", "k2") == ANSWER
            assert await cache.invalidate("acme", ["notes/b.md"]) == 1
            assert await cache.get("acme", "k2") is None
            assert await cache.invalidate("acme", ["notes/never.md"]) == 0
            big = [{"choices": [{"delta": {"content": "x" * 5_000}}]}]
            assert not await cache.put("acme", "k3", big, [])  # over max_bytes: not kept
            assert await cache.get("acme", "k3") is None

    asyncio.run(scenario())
