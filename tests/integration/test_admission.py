"""Admission control on the real stack: a model at capacity answers 503 + Retry-After at once, and places come
back when their streams end or their clients go away."""

import asyncio
import time

import httpx
import openai
import pytest

from tests.integration.conftest import ADMISSION_CAPACITY, MASTER_KEY, MODEL

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}


def test_a_full_model_answers_503_with_retry_after_without_waiting(base_url):
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count from one to one hundred."}],
        "max_tokens": 64,
        "stream": True,
        "rag": False,
    }

    async def main():
        async with httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=120) as client:
            holders = [client.stream("POST", "/v1/chat/completions", json=body) for _ in range(ADMISSION_CAPACITY)]
            # Every holder has its status line, i.e. its first chunk: all places are taken.
            responses = await asyncio.gather(*(h.__aenter__() for h in holders))
            assert [r.status_code for r in responses] == [200] * ADMISSION_CAPACITY
            started = time.perf_counter()
            refused = await client.post("/v1/chat/completions", json={**body, "stream": False})
            waited = time.perf_counter() - started
            print(f"\n[admission] 503 after {waited * 1000:.1f} ms with {ADMISSION_CAPACITY} requests in flight")
            for holder in holders:  # the clients go away mid-stream
                await holder.__aexit__(None, None, None)
            return refused, waited

    refused, waited = asyncio.run(main())
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "overloaded"
    assert waited < 2.0  # answered, not queued behind 64-token generations (the benchmark reports the time)

    # The places come back once the server has seen the disconnects; the stock SDK's retry rides the 503s.
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=MASTER_KEY, max_retries=20, timeout=120)
    answer = client.chat.completions.create(model=MODEL, messages=body["messages"], max_tokens=2)
    assert answer.choices[0].message.content
