"""The response cache against the real stack: a deterministic request asked again is answered from the cache
(same answer, `x-llmserve-cache: hit`, nothing charged), streamed or whole; ingesting or deleting a document it
cited makes it a miss; sampled requests, keys that opt out and other tenants never get another's answer.

The session stack runs with `state.response_cache: false` (other tests' repeated greedy requests must reach the
engine): the key made here opts in, which is also how a key overrides the server's default."""

import json
import time
import uuid

import httpx
import pytest

from tests.integration.conftest import MASTER_KEY, MODEL

pytestmark = pytest.mark.integration
ADMIN = {"Authorization": f"Bearer {MASTER_KEY}"}
FACT = "Project Zephyr's launch code is 7781. The launch happens at dawn."


def new_key(base_url: str, tenant: str, **options) -> str:
    body = {"name": f"cache-{uuid.uuid4().hex[:6]}", "tenant": tenant, **options}
    made = httpx.post(f"{base_url}/admin/keys", json=body, headers=ADMIN, timeout=30)
    assert made.status_code == 200, made.text
    return made.json()["key"]


def ingest(base_url: str, key: str, text: str) -> None:
    body = {"documents": [{"source": "notes/zephyr.md", "text": text}]}
    r = httpx.post(f"{base_url}/v1/rag/documents", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120)
    assert r.status_code == 200, r.text


def ask(base_url: str, key: str, **extra) -> tuple[httpx.Response, dict]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is Project Zephyr's launch code?"}],
        "max_tokens": 12,
        "temperature": 0,
        **extra,
    }
    started = time.perf_counter()
    r = httpx.post(
        f"{base_url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120
    )
    assert r.status_code == 200, r.text
    return r, {"s": time.perf_counter() - started, **r.json()}


def ask_until_hit(base_url: str, key: str, **extra) -> tuple[httpx.Response, dict]:
    """The answer is kept in the background, just after it was sent: the next request may come first."""
    for _ in range(20):
        r, body = ask(base_url, key, **extra)
        if r.headers["x-llmserve-cache"] == "hit":
            return r, body
        time.sleep(0.2)
    raise AssertionError("never a cache hit")


def spent(base_url: str, tenant: str) -> dict:
    return httpx.get(f"{base_url}/admin/tenants/{tenant}", headers=ADMIN, timeout=30).json()["usage"]


@pytest.fixture(scope="module")
def tenant_key(base_url):
    tenant = f"cache-{uuid.uuid4().hex[:6]}"
    key = new_key(base_url, tenant, response_cache=True)
    ingest(base_url, key, FACT)
    return tenant, key


def test_a_repeated_deterministic_request_is_answered_from_the_cache_and_costs_nothing(base_url, tenant_key):
    tenant, key = tenant_key
    first, answer = ask(base_url, key)
    assert (first.headers["x-llmserve-cache"], first.headers["x-llmserve-provider"]) == ("miss", "self-hosted")
    assert answer["citations"] and answer["citations"][0]["source"] == "notes/zephyr.md"
    before = spent(base_url, tenant)
    hit, again = ask_until_hit(base_url, key)
    assert hit.headers["x-llmserve-provider"] == "cache" and again["provider"] == "cache"
    assert again["choices"][0]["message"] == answer["choices"][0]["message"]  # the same answer
    assert again["id"] != answer["id"]  # an answer of its own (its own journal, resumable)
    assert [c["chunk_id"] for c in again["citations"]] == [c["chunk_id"] for c in answer["citations"]]
    assert again["usage"] == answer["usage"] and again["cost_usd"] == 0.0
    after = spent(base_url, tenant)
    assert (after["prompt_tokens"], after["completion_tokens"], after["cost_usd"]) == (
        before["prompt_tokens"], before["completion_tokens"], before["cost_usd"]
    )  # fmt: skip
    print(f"\nmiss {answer['s'] * 1000:.0f} ms, hit {again['s'] * 1000:.0f} ms")

    # streamed: the same text, chunk by chunk, from the cache
    body = {"model": MODEL, "messages": [{"role": "user", "content": "What is Project Zephyr's launch code?"}],
            "max_tokens": 12, "temperature": 0, "stream": True}  # fmt: skip
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, headers=headers, timeout=120) as r:
        assert r.headers["x-llmserve-cache"] == "hit"
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == answer["choices"][0]["message"]["content"]


def test_ingesting_or_deleting_a_cited_document_makes_it_a_miss(base_url, tenant_key):
    _, key = tenant_key
    ask_until_hit(base_url, key)
    ingest(base_url, key, FACT.replace("7781", "9902"))  # the document changes
    r, changed = ask(base_url, key)
    assert r.headers["x-llmserve-cache"] == "miss" and changed["provider"] == "self-hosted"
    assert "9902" in changed["citations"][0]["text"]
    ask_until_hit(base_url, key)  # kept again, under the new content
    gone = httpx.delete(
        f"{base_url}/v1/rag/collections/default/documents/notes/zephyr.md",
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    assert gone.status_code == 200, gone.text
    r, _ = ask(base_url, key)
    assert r.headers["x-llmserve-cache"] == "miss"
    ingest(base_url, key, FACT)  # for the other tests


def test_sampled_requests_opted_out_keys_and_other_tenants_are_never_served_from_it(base_url, tenant_key):
    tenant, key = tenant_key
    ask_until_hit(base_url, key)
    sampled, _ = ask(base_url, key, temperature=0.7)
    assert sampled.headers["x-llmserve-cache"] == "bypass" and sampled.headers["x-llmserve-provider"] == "self-hosted"
    seeded, _ = ask(base_url, key, temperature=0.7, seed=11)
    assert seeded.headers["x-llmserve-cache"] == "miss"  # a seed makes it deterministic
    opted_out = new_key(base_url, tenant, response_cache=False)  # same tenant, same question, same documents
    r, _ = ask(base_url, opted_out)
    assert r.headers["x-llmserve-cache"] == "bypass" and r.headers["x-llmserve-provider"] == "self-hosted"
    default = new_key(base_url, tenant)  # unset: the server's default (off in this stack)
    assert ask(base_url, default)[0].headers["x-llmserve-cache"] == "bypass"
    other = new_key(base_url, f"cache-other-{uuid.uuid4().hex[:6]}", response_cache=True)
    ingest(base_url, other, FACT)
    r, _ = ask(base_url, other)
    assert r.headers["x-llmserve-cache"] == "miss"  # another tenant's cache is not this one's
