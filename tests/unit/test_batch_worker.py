"""The batch worker's failure paths against a real Redis, with a scripted stand-in for the orchestrator handle
(the paths the real model cannot be made to take on demand): passing failures retried then filed, bad requests
filed at once, poison requests (their workers kept dying) filed without another call, and yielding to
interactive traffic. The real-stack path is in tests/integration/test_batches.py."""

import asyncio
import json

import redis.asyncio as aioredis

from core.errors import InvalidRequest, ServiceUnavailable
from core.models import ChatResponse
from core.pricing import Price
from core.setting_groups import BatchSettings, LimitsSettings, MetricsSettings, StateSettings
from deployments.batch_jobs import intake
from deployments.batch_worker import BatchWorker
from state.api_keys import Limits
from state.files import FileStore
from state.interactive_load import InteractiveLoad
from state.limits import Limiter
from state.tenants import TenantStore
from tests.conftest import REDIS_URL

TENANT, KEY = "acme", "kid"


class ScriptedOrchestrator:
    """What a DeploymentHandle to the orchestrator offers the worker: `.options(...)`, `.chat.remote(request)`."""

    def __init__(self, answer):
        self.answer = answer
        self.calls: list[str] = []
        self.chat = self

    def options(self, **_):
        return self

    async def remote(self, request, caller):
        assert caller.tenant == TENANT and caller.key_id == KEY  # it acts for the batch's tenant and key
        self.calls.append(request.request_id)
        return await self.answer(request)


OK_ANSWER = ChatResponse.model_validate(
    {
        "id": "x",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
)


def line(custom_id: str) -> str:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})


LIST_PRICE = Price(0.1, 0.2)


def scripted_worker(prefix: str, orchestrator, price=LIST_PRICE, **batch) -> BatchWorker:
    return BatchWorker.func_or_class(
        orchestrator,
        batch=BatchSettings(**batch),
        state=StateSettings(redis_url=REDIS_URL, redis_prefix=prefix),
        limits=LimitsSettings(),
        metrics=MetricsSettings(wandb_mode="disabled"),
        price=price,
        model_name="m",
    )


async def run_batch(prefix: str, answer, lines: list[str], before=None, tenant_limits=None, price=None, **batch):
    orchestrator = ScriptedOrchestrator(answer)
    worker = scripted_worker(prefix, orchestrator, price or LIST_PRICE, **batch)
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    await TenantStore(client, prefix).set_limits(TENANT, tenant_limits or Limits())
    files = FileStore(client, prefix)
    uploaded = await files.create(TENANT, KEY, "in.jsonl", "batch", ("\n".join(lines) + "\n").encode())
    if before is not None:
        await before(worker, client)
    batch = await intake(worker.store, files, TENANT, KEY, uploaded["id"], "/v1/chat/completions", "24h", None, 100)
    for _ in range(300):
        batch = await worker.store.get(TENANT, batch["id"])
        if batch["status"] == "completed":
            break
        await asyncio.sleep(0.1)
    worker._loop.cancel()
    errors = []
    if batch["error_file_id"]:
        errors = [json.loads(x) for x in (await files.content(TENANT, batch["error_file_id"])).decode().splitlines()]
    await client.aclose()
    return batch, errors, orchestrator.calls


def test_a_passing_failure_is_retried_then_filed_with_its_status(redis_prefix):
    async def overloaded(request):
        raise ServiceUnavailable("engine at capacity", code="overloaded")

    batch, errors, calls = asyncio.run(run_batch(redis_prefix, overloaded, [line("a")], max_attempts=2))
    assert batch["status"] == "completed" and batch["request_counts"] == {"total": 1, "completed": 0, "failed": 1}
    assert len(calls) == 2  # retried once, then given up
    assert errors[0]["custom_id"] == "a" and errors[0]["response"]["status_code"] == 503
    assert errors[0]["response"]["body"]["error"]["code"] == "overloaded"


def test_a_bad_request_is_filed_at_once(redis_prefix):
    async def refuse(request):
        raise InvalidRequest("context too long", param="messages", code="context_length_exceeded")

    batch, errors, calls = asyncio.run(run_batch(redis_prefix, refuse, [line("b")]))
    assert len(calls) == 1 and batch["request_counts"]["failed"] == 1
    assert errors[0]["response"]["status_code"] == 400


def test_a_poison_request_is_filed_without_another_call(redis_prefix):
    async def never(request):
        raise AssertionError("a poison request must not reach the orchestrator again")

    async def two_workers_died_on_it(worker, client):
        # What two deliveries whose workers died mid-request leave behind, before this worker sees the entry.
        real_attempt = worker.store.attempt

        async def died_twice(request):
            await real_attempt(request)
            await real_attempt(request)
            return await real_attempt(request)

        worker.store.attempt = died_twice

    batch, errors, calls = asyncio.run(
        run_batch(redis_prefix, never, [line("p")], before=two_workers_died_on_it, max_attempts=2)
    )
    assert calls == [] and errors[0]["error"]["code"] == "max_attempts"
    assert batch["request_counts"] == {"total": 1, "completed": 0, "failed": 1}


def test_no_batch_work_starts_while_interactive_requests_run(redis_prefix):
    async def answer(request):
        return OK_ANSWER

    async def scenario():
        client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
        load = InteractiveLoad(client, redis_prefix, replica="ingress-1")
        await load.publish(1)  # one interactive request in flight
        stop = asyncio.Event()

        async def keep_publishing():
            while not stop.is_set():
                await load.publish(1)
                await asyncio.sleep(0.5)

        publisher = asyncio.ensure_future(keep_publishing())
        orchestrator = ScriptedOrchestrator(answer)
        worker = scripted_worker(redis_prefix, orchestrator)
        await TenantStore(client, redis_prefix).ensure(TENANT)
        files = FileStore(client, redis_prefix)
        uploaded = await files.create(TENANT, KEY, "in.jsonl", "batch", (line("i") + "\n").encode())
        batch = await intake(worker.store, files, TENANT, KEY, uploaded["id"], "/v1/chat/completions", "24h", None, 10)
        await asyncio.sleep(1.5)
        assert orchestrator.calls == []  # yielded
        stop.set()
        await publisher
        await load.publish(0)  # the interactive request finished
        for _ in range(50):
            if (await worker.store.get(TENANT, batch["id"]))["status"] == "completed":
                break
            await asyncio.sleep(0.1)
        worker._loop.cancel()
        await client.aclose()
        return orchestrator.calls

    assert len(asyncio.run(scenario())) == 1


def test_requests_over_the_tenants_budget_are_filed_as_insufficient_quota_without_a_call(redis_prefix):
    async def answer(request):
        return OK_ANSWER

    # At $1,000 per 1M tokens, a request reserves its estimate (5 prompt + 4 max_tokens: $0.009) and is charged
    # its usage (4 tokens: $0.004). With $0.015 a day, the second fits (0.004 spent + 0.009) and the third does
    # not (0.008 + 0.009): it and the rest are filed without a call.
    budget = Limits(budget_usd=0.015, budget_window="daily")
    lines = [line(f"q{i}") for i in range(5)]
    batch, errors, calls = asyncio.run(
        run_batch(redis_prefix, answer, lines, tenant_limits=budget, price=Price(1000.0, 1000.0), max_inflight=1)
    )
    assert len(calls) == 2 and batch["request_counts"] == {"total": 5, "completed": 2, "failed": 3}
    assert {e["response"]["body"]["error"]["code"] for e in errors} == {"insufficient_quota"}
    assert {e["response"]["status_code"] for e in errors} == {429}

    async def charged():
        client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
        usage = await Limiter(client, redis_prefix).usage(TENANT, limits=budget)
        await client.aclose()
        return usage

    usage = asyncio.run(charged())
    assert usage["requests"] == 2 and abs(usage["budget_spent_usd"] - 0.008) < 1e-9 and usage["reserved_usd"] < 1e-9
