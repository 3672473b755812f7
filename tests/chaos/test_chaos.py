"""Nothing lost when any one process dies, on a stack of its own (run apart from the other tests: it kills
things). Real processes, real SIGKILLs (benchmarks/chaos.py holds the harness and prints the table):
every role killed under concurrent streamed answers, Redis killed -9 and restarted on its AOF, Redis frozen,
and a retry with one Idempotency-Key after the ingress died under it.

For each: every stream completes (resumed from its last event id where its connection broke), each client's
text equals the stored assistant turn, stored once, and the service answers again soon after."""

import asyncio
import contextlib
import json
import time
import uuid

import httpx
import pytest

from benchmarks.chaos import MODEL, Chaos, answered, chaos_stack, run_role, stream_one, wait_answering

pytestmark = pytest.mark.chaos


@pytest.fixture(scope="module")
def chaos(tmp_path_factory):
    overrides = {"replicas": {"orchestrator": 2}, "routing": {"request_deadline_s": 180.0}}
    with chaos_stack(tmp_path_factory.mktemp("chaos"), overrides) as started:
        yield started


def healthy(stack: Chaos, base: str) -> None:
    assert wait_answering(base, stack.key, time.monotonic(), limit_s=300) is not None, "never answered again"
    time.sleep(2)


@pytest.mark.parametrize("role", ["orchestrator", "ingress", "engine-core", "llm-replica", "redis-freeze"])
def test_no_answer_is_lost_when_a_process_dies(chaos, role):
    stack, base = chaos
    healthy(stack, base)
    row = asyncio.run(run_role(stack, base, role, streams=3, max_tokens=40))
    print(row)
    assert row["completed"] == row["streams"], row
    assert row["stored_once_equal"] == row["streams"], row
    assert row["recovered_s"] is not None, row
    if role == "ingress":
        # Seconds, not minutes: Serve's port quarantine (~150 s) is off on a local stack, and the replacement can
        # bind the port its predecessor's connections still hold (deployments/direct_ingress.py; without it, never).
        assert row["recovered_s"] < 60, row
    if role == "orchestrator":
        # The other replica was there all along: usually < 1 s (benchmarks/chaos.py). Seen once at 6.9 s, while
        # Serve's router still sent calls to the dead replica (each retried after a backoff) until it dropped it.
        assert row["recovered_s"] < 15, row


def test_redis_killed_and_restarted_on_its_aof_loses_nothing_acknowledged(chaos):
    stack, base = chaos
    healthy(stack, base)
    admin = {"Authorization": f"Bearer {stack.key}"}
    kept = httpx.post(f"{base}/admin/keys", json={"name": "kept"}, headers=admin).json()["key"]
    gone = httpx.post(f"{base}/admin/keys", json={"name": "revoked-before-crash"}, headers=admin).json()["key"]
    assert httpx.delete(f"{base}/admin/keys/revoked-before-crash", headers=admin).status_code == 200
    time.sleep(1.5)  # older than a second when Redis dies: on disk (appendfsync everysec)
    row = asyncio.run(run_role(stack, base, "redis-kill", streams=3, max_tokens=40))
    print(row)
    assert row["completed"] == row["stored_once_equal"] == row["streams"], row
    models = f"{base}/v1/models"
    assert httpx.get(models, headers={"Authorization": f"Bearer {kept}"}).status_code == 200
    assert httpx.get(models, headers={"Authorization": f"Bearer {gone}"}).status_code == 401  # still revoked


def test_a_retry_with_its_idempotency_key_after_the_ingress_died_gets_the_one_answer(chaos):
    stack, base = chaos
    healthy(stack, base)
    key, cid = f"retry-{uuid.uuid4().hex}", f"idem-chaos-{uuid.uuid4().hex[:6]}"
    headers = {"Authorization": f"Bearer {stack.key}", "Idempotency-Key": key}
    body = {
        "model": "SmolLM2-135M-Instruct",
        "messages": [{"role": "user", "content": "Describe a harbour at dawn in four sentences."}],
        "max_tokens": 40,
        "temperature": 0,
        "rag": False,
        "conversation_id": cid,
    }

    async def first_attempt():
        async with (
            httpx.AsyncClient(timeout=60) as client,
            client.stream("POST", f"{base}/v1/chat/completions", json={**body, "stream": True}, headers=headers) as r,
        ):
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    return  # one event in, then the ingress dies under it

    asyncio.run(first_attempt())
    stack.hurt("ingress")()
    deadline = time.monotonic() + 60
    while not answered(base, stack.key):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    retried = httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers, timeout=180)
    assert retried.status_code == 200, retried.text
    text = retried.json()["choices"][0]["message"]["content"]
    messages = httpx.get(f"{base}/v1/conversations/{cid}", headers=headers).json()["messages"]
    assert messages == [body["messages"][0], {"role": "assistant", "content": text}]  # one answer, stored once


def test_a_client_that_disconnects_resumes_even_after_the_orchestrator_died_meanwhile(chaos):
    stack, base = chaos
    healthy(stack, base)
    cid = f"gone-{uuid.uuid4().hex[:6]}"

    async def scenario():
        progress: dict[str, int] = {}
        task = asyncio.ensure_future(
            stream_one(base, stack.key, cid, "Tell a short story about a fox.", 40, 240, progress)
        )
        while progress.get(cid, 0) < 3:
            await asyncio.sleep(0.05)
        stack.hurt("orchestrator")()  # its run dies with it; the client's stream breaks or fails over
        return await task

    result = asyncio.run(scenario())
    assert result.finished, result
    messages = httpx.get(f"{base}/v1/conversations/{cid}", headers={"Authorization": f"Bearer {stack.key}"}).json()
    assert messages["messages"][-1] == {"role": "assistant", "content": result.text}


async def _resumable(base: str, key: str, path: str, body: dict, progress: list[int]) -> dict:
    """A streamed answer from `path`, resumed at GET {path}/{id} from its last event whenever it breaks; its
    events' data and the error it ended with, if any."""
    from httpx_sse import aconnect_sse

    headers = {"Authorization": f"Bearer {key}"}
    out: dict = {"events": [], "error": None, "id": None, "last": "0", "resumes": 0}
    async with httpx.AsyncClient(timeout=httpx.Timeout(60, read=60)) as client:
        for _ in range(40):
            if out["id"] is None:
                call = ("POST", f"{base}{path}", {"json": body})
            else:
                out["resumes"] += 1
                call = (
                    "GET",
                    f"{base}{path}/{out['id']}",
                    {"params": {"stream": "true", "starting_after": out["last"]}},
                )
            try:
                async with aconnect_sse(client, call[0], call[1], headers=headers, **call[2]) as source:
                    if source.response.status_code != 200:
                        await asyncio.sleep(1)
                        continue
                    async for event in source.aiter_sse():
                        if event.data == "[DONE]":
                            return out
                        data = json.loads(event.data)
                        if "error" in data:
                            out["error"] = data["error"]
                            return out
                        out["id"], out["last"] = data["id"], event.id or out["last"]
                        out["events"].append(data)
                        progress[0] += 1
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
    return out


def _orchestrator_killed_under(stack: Chaos, base: str, path: str, body: dict, after_events: int) -> dict:
    """A streamed answer from `path`, an orchestrator replica SIGKILLed once it has sent `after_events` events."""

    async def scenario():
        progress = [0]
        task = asyncio.ensure_future(_resumable(base, stack.key, path, body, progress))
        while progress[0] < after_events and not task.done():
            await asyncio.sleep(0.05)
        stack.hurt("orchestrator")()
        return await task

    result = asyncio.run(scenario())
    print({k: v for k, v in result.items() if k != "events"}, len(result["events"]), "events")
    return result


def test_a_completion_is_taken_over_from_its_raw_prompt_when_its_orchestrator_dies(chaos):
    stack, base = chaos
    healthy(stack, base)
    body = {"model": MODEL, "prompt": "Once upon a time, a fox", "max_tokens": 40, "temperature": 0,
            "stream": True}  # fmt: skip

    result = _orchestrator_killed_under(stack, base, "/v1/completions", body, after_events=3)
    assert result["error"] is None, result
    text = "".join(c["text"] for e in result["events"] for c in e["choices"])
    assert any(c.get("finish_reason") for e in result["events"] for c in e["choices"]), result
    stored = httpx.get(f"{base}/v1/completions/{result['id']}", headers={"Authorization": f"Bearer {stack.key}"})
    assert stored.json()["choices"][0]["text"] == text and text  # what the client saw is what was stored


def test_a_tool_call_cut_off_by_a_death_is_an_error_never_a_broken_call(chaos):
    stack, base = chaos
    healthy(stack, base)
    tool = {"type": "function", "function": {"name": "record", "parameters": {
        "type": "object", "properties": {"story": {"type": "string"}}, "required": ["story"]}}}  # fmt: skip
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a long story about a fox."}],
            "tools": [tool], "tool_choice": "required", "max_tokens": 120, "temperature": 0, "stream": True,
            "rag": False}  # fmt: skip

    result = _orchestrator_killed_under(stack, base, "/v1/chat/completions", body, after_events=4)
    arguments = "".join(
        (call.get("function") or {}).get("arguments") or ""
        for e in result["events"] for c in e["choices"] for call in (c.get("delta") or {}).get("tool_calls") or []
    )  # fmt: skip
    if result["error"] is not None:  # cut off mid-call: said so, nothing continued from text
        assert result["error"]["code"] == "answer_interrupted", result
    else:  # the call was whole before the death reached it
        assert isinstance(json.loads(arguments)["story"], str)


def test_a_background_response_whose_orchestrators_died_is_finished_when_it_is_next_read(chaos):
    """Nobody follows a background response: when every orchestrator replica died under it, the next GET (or
    cancel) finds its writer's lease lapsed and carries it on, so it still ends, and is charged once."""
    stack, base = chaos
    healthy(stack, base)
    headers = {"Authorization": f"Bearer {stack.key}"}
    body = {"model": MODEL, "input": "Tell a short story about a fox.", "max_output_tokens": 60, "temperature": 0,
            "rag": False, "background": True}  # fmt: skip
    started = httpx.post(f"{base}/v1/responses", json=body, headers=headers, timeout=120).json()
    path = f"{base}/v1/responses/{started['id']}"
    deadline = time.monotonic() + 60
    while not httpx.get(path, headers=headers, timeout=30).json()["output"] and time.monotonic() < deadline:
        time.sleep(0.2)
    killed = [stack.hurt("orchestrator")()]
    with contextlib.suppress(RuntimeError):  # the other replica too, when one is up now: its run is gone either way
        killed.append(stack.hurt("orchestrator")())
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            response = httpx.get(path, headers=headers, timeout=30).json()
        except (httpx.HTTPError, ValueError):
            response = {"status": "unreachable"}
        if response["status"] not in ("queued", "in_progress", "unreachable"):
            break
        time.sleep(1)
    print(killed, {k: response.get(k) for k in ("status", "usage")})
    assert response["status"] in ("completed", "incomplete"), response
    text = "".join(p["text"] for item in response["output"] for p in item.get("content", []))
    assert text and response["usage"]["output_tokens"] > 0
