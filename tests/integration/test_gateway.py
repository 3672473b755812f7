"""The gateway: API keys, exact per-key limits and budgets, usage, revocation, body limits."""

import asyncio
import re
import threading
import time

import httpx
import openai
import pytest
import redis
from typer.testing import CliRunner

from serve_app.cli import app as cli
from tests.conftest import REDIS_URL
from tests.integration.conftest import MASTER_KEY, MODEL
from tests.services import redis_values

pytestmark = pytest.mark.integration
HI = [{"role": "user", "content": "Say hi."}]


def create_key(base_url, *args):
    result = CliRunner().invoke(cli, ["keys", "create", *args, "--server", base_url, "--master-key", MASTER_KEY])
    assert result.exit_code == 0, result.output
    [key] = re.findall(r"sk-llmserve-[A-Za-z0-9_-]{43}", result.output)  # output also holds log lines
    return key


def client_for(base_url, key, retries=0):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=retries, timeout=120)


def test_exactly_rpm_requests_pass_among_concurrent_clients(base_url):
    key = create_key(base_url, "--name", "rpm-team", "--rpm", "5")

    async def go():
        async with httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120
        ) as client:
            body = {"model": MODEL, "messages": HI, "max_tokens": 1, "rag": False}
            return await asyncio.gather(*(client.post("/v1/chat/completions", json=body) for _ in range(20)))

    responses = asyncio.run(go())
    codes = [r.status_code for r in responses]
    if codes.count(429) < 15 and time.time() % 60 < 5:  # the burst straddled a window boundary: rerun once
        responses = asyncio.run(go())
        codes = [r.status_code for r in responses]
    assert codes.count(200) == 5 and codes.count(429) == 15
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(refused.headers["retry-after"]) <= 60


def test_a_reused_x_request_id_is_still_counted(base_url):
    key = create_key(base_url, "--name", "reuse-team", "--rpm", "1")
    headers = {"Authorization": f"Bearer {key}", "x-request-id": "same-id-every-time"}
    body = {"model": MODEL, "messages": HI, "max_tokens": 1, "rag": False}
    codes = [
        httpx.post(f"{base_url}/v1/chat/completions", json=body, headers=headers, timeout=120).status_code
        for _ in range(2)
    ]
    if codes == [200, 200] or codes[0] == 429:  # the two straddled a minute boundary: try once more
        codes = [
            httpx.post(f"{base_url}/v1/chat/completions", json=body, headers=headers, timeout=120).status_code
            for _ in range(2)
        ]
    assert codes[1] == 429


def test_parallel_limit_and_the_sdk_honours_retry_after(base_url):
    key = create_key(base_url, "--name", "parallel-team", "--max-parallel", "1")
    holder = client_for(base_url, key)
    stream = holder.chat.completions.create(
        model=MODEL, messages=HI, max_tokens=8, stream=True, extra_body={"rag": False}
    )
    next(iter(stream))  # the slot is now held (a short stream: it must end within the SDK's retries)
    with pytest.raises(openai.RateLimitError) as info:
        client_for(base_url, key).chat.completions.create(model=MODEL, messages=HI, max_tokens=1)
    assert info.value.response.headers["retry-after"] == "1"
    finisher = threading.Thread(target=lambda: list(stream))
    finisher.start()
    started = time.monotonic()
    response = client_for(base_url, key, retries=10).chat.completions.create(model=MODEL, messages=HI, max_tokens=1)
    assert response.choices[0].message.content is not None
    assert time.monotonic() - started >= 0.9  # it waited for Retry-After at least once
    finisher.join()


def test_budget_is_enforced_with_insufficient_quota(base_url):
    key = create_key(base_url, "--name", "budget-team", "--budget-usd", "0.000005")
    client = client_for(base_url, key, retries=3)
    client.chat.completions.create(model=MODEL, messages=HI, max_tokens=5, extra_body={"rag": False})
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model=MODEL, messages=HI, max_tokens=5, extra_body={"rag": False})
    assert info.value.code == "insufficient_quota"
    assert time.monotonic() - started < 2  # x-should-retry: false, so the SDK did not retry


def test_usage_adds_up_per_key(base_url, http):
    key = create_key(base_url, "--name", "usage-team")
    client = client_for(base_url, key)
    responses = [
        client.chat.completions.create(model=MODEL, messages=HI, max_tokens=4, extra_body={"rag": False})
        for _ in range(2)
    ]
    stream = client.chat.completions.create(
        model=MODEL, messages=HI, max_tokens=4, stream=True, extra_body={"rag": False}
    )
    chunks = list(stream)
    assert all(c.usage is None for c in chunks)  # usage not asked for, not sent (though settled internally)
    time.sleep(0.5)
    usage = httpx.get(f"{base_url}/v1/usage", headers={"Authorization": f"Bearer {key}"}).json()
    assert usage["requests"] == 3
    assert usage["completion_tokens"] == sum(r.usage.completion_tokens for r in responses) + 4
    assert usage["prompt_tokens"] == 3 * responses[0].usage.prompt_tokens
    assert usage["cost_usd"] > 0 and usage["reserved_usd"] == 0
    everyone = http.get("/v1/usage").json()["data"]  # an admin key: every tenant, each with its keys
    assert any(k["name"] == "usage-team" and k["requests"] == 3 for tenant in everyone for k in tenant["keys"])


def test_revoked_keys_fail_at_once(base_url):
    key = create_key(base_url, "--name", "revoke-me")
    client = client_for(base_url, key)
    client.models.list()
    result = CliRunner().invoke(cli, ["keys", "revoke", "revoke-me", "--server", base_url, "--master-key", MASTER_KEY])
    assert result.exit_code == 0, result.output
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_model_restrictions_and_admin_routes(base_url):
    key = create_key(base_url, "--name", "restricted", "--models", "some-other-model")
    with pytest.raises(openai.PermissionDeniedError):
        client_for(base_url, key).chat.completions.create(model=MODEL, messages=HI, max_tokens=1)
    response = httpx.get(f"{base_url}/admin/keys", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 403 and response.json()["error"]["code"] == "permission_denied"


def test_no_plaintext_key_anywhere_in_redis(base_url, stack):
    key = create_key(base_url, "--name", "scan-me")
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    for name in client.scan_iter(f"{stack.settings.state.redis_prefix}:*"):
        values = redis_values(client, name)
        assert key not in name and all(key not in str(v) for v in values)
        assert MASTER_KEY not in name and all(MASTER_KEY not in str(v) for v in values)


def test_oversized_bodies_are_413_before_parsing(http):
    response = http.post(
        "/v1/chat/completions", content=b"x" * (5 * 1024 * 1024), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


def test_a_chunked_body_over_the_limit_is_413_too(http):
    def body():
        for _ in range(5):
            yield b"x" * (1024 * 1024)

    response = http.post("/v1/chat/completions", content=body(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
