"""The Responses API through the stock openai SDK against the real model: text, streaming events the SDK adds up,
function tools with their outputs sent back through previous_response_id, stored responses read, listed and
deleted per tenant, and what it does not serve refused by name."""

import json
import time
import uuid

import httpx
import openai
import pytest

from tests.integration.conftest import MODEL
from tests.integration.test_tenancy import as_key, new_key

pytestmark = pytest.mark.integration
NO_RAG = {"rag": False, "temperature": 0}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


def test_a_response_answers_streams_and_reads_back(openai_client):
    first = openai_client.responses.create(
        model=MODEL, input="What is the capital of France?", max_output_tokens=40, extra_body=NO_RAG
    )
    assert first.object == "response" and first.id.startswith("resp_") and first.status in ("completed", "incomplete")
    assert "Paris" in first.output_text and first.usage.output_tokens > 2
    with openai_client.responses.stream(
        model=MODEL, input="What is the capital of France?", max_output_tokens=40, extra_body=NO_RAG
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert "response.output_text.delta" in kinds and final.output_text == first.output_text
    assert openai_client.responses.retrieve(final.id).output_text == final.output_text


def test_a_function_call_and_its_output_continue_through_previous_response_id(openai_client):
    called = openai_client.responses.create(
        model=MODEL, input="What is the weather in Paris?", tools=[WEATHER], tool_choice="required",
        max_output_tokens=120, extra_body=NO_RAG,
    )  # fmt: skip
    (call,) = [item for item in called.output if item.type == "function_call"][:1]
    assert call.name == "get_weather" and isinstance(json.loads(call.arguments)["city"], str)
    answered = openai_client.responses.create(
        model=MODEL, previous_response_id=called.id, tools=[WEATHER], max_output_tokens=40, extra_body=NO_RAG,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 degrees."}],
    )  # fmt: skip
    assert answered.previous_response_id == called.id and answered.output_text
    items = openai_client.responses.input_items.list(answered.id, order="asc").data
    assert [i.type for i in items] == ["function_call_output"] and items[0].call_id == call.call_id


def test_stored_responses_belong_to_their_tenant_and_can_be_deleted(base_url):
    mine, other = new_key(base_url, f"r-{uuid.uuid4().hex[:8]}"), new_key(base_url, f"r-{uuid.uuid4().hex[:8]}")
    body = {"model": MODEL, "input": "Say hi.", "max_output_tokens": 4, **NO_RAG}
    made = httpx.post(f"{base_url}/v1/responses", json=body, headers=as_key(mine), timeout=120).json()
    path = f"{base_url}/v1/responses/{made['id']}"
    assert httpx.get(path, headers=as_key(mine)).status_code == 200
    for method in ("GET", "DELETE"):
        assert httpx.request(method, path, headers=as_key(other)).status_code == 404
    assert httpx.get(f"{path}/input_items", headers=as_key(other)).status_code == 404
    chained = {**body, "previous_response_id": made["id"]}
    assert httpx.post(f"{base_url}/v1/responses", json=chained, headers=as_key(other)).status_code == 404
    assert httpx.delete(path, headers=as_key(mine)).json()["deleted"] is True
    assert httpx.get(path, headers=as_key(mine)).status_code == 404
    unstored = httpx.post(f"{base_url}/v1/responses", json={**body, "store": False}, headers=as_key(mine), timeout=120)
    assert httpx.get(f"{base_url}/v1/responses/{unstored.json()['id']}", headers=as_key(mine)).status_code == 404


def test_what_responses_do_not_serve_is_a_400_naming_it(openai_client):
    for extra, param in (({"include": ["reasoning.encrypted_content"]}, "include"),
                         ({"reasoning": {"effort": "high"}}, "reasoning"),
                         ({"extra_body": {"frobnicate": 1}}, "frobnicate")):  # fmt: skip
        with pytest.raises(openai.BadRequestError) as refused:
            openai_client.responses.create(model=MODEL, input="x", max_output_tokens=4, **extra)
        assert refused.value.param == param, refused.value.body


def _until_done(openai_client, response_id: str, limit_s: float = 120):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        response = openai_client.responses.retrieve(response_id)
        if response.status not in ("queued", "in_progress"):
            return response
        time.sleep(0.3)
    raise AssertionError(f"{response_id} still {response.status}")


def test_a_background_response_runs_without_its_client_and_streams_from_any_point(openai_client, base_url):
    started = openai_client.responses.create(
        model=MODEL, input="Tell me about Paris.", max_output_tokens=24, background=True, extra_body=NO_RAG
    )
    assert started.status == "queued" and started.background is True
    done = _until_done(openai_client, started.id)
    assert done.status in ("completed", "incomplete") and done.output_text and done.usage.output_tokens > 0
    events = list(openai_client.responses.retrieve(started.id, stream=True, starting_after=3))
    assert events[0].sequence_number == 4 and events[-1].type in ("response.completed", "response.incomplete")
    assert events[-1].response.output_text == done.output_text
    whole = list(openai_client.responses.retrieve(started.id, stream=True))
    assert [e.sequence_number for e in whole] == list(range(len(whole)))  # the same numbering every time
    assert [e.sequence_number for e in whole[4:]] == [e.sequence_number for e in events]


def test_a_background_response_can_be_cancelled_and_is_charged_what_it_wrote(base_url):
    tenant = f"bg-{uuid.uuid4().hex[:8]}"
    key = new_key(base_url, tenant)
    body = {"model": MODEL, "input": "Write a very long story about a fox.", "max_output_tokens": 400,
            "background": True, **NO_RAG}  # fmt: skip
    started = httpx.post(f"{base_url}/v1/responses", json=body, headers=as_key(key), timeout=60).json()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # running, with some output
        running = httpx.get(f"{base_url}/v1/responses/{started['id']}", headers=as_key(key)).json()
        if running["output"]:
            break
        time.sleep(0.2)
    assert running["status"] == "in_progress", running
    cancelled = httpx.post(f"{base_url}/v1/responses/{started['id']}/cancel", headers=as_key(key), timeout=60)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        usage = httpx.get(f"{base_url}/v1/usage", headers=as_key(key)).json()
        if usage["requests"] == 1:
            break
        time.sleep(0.2)
    assert usage["requests"] == 1 and 0 < usage["completion_tokens"] < 400 and usage["reserved_usd"] == 0
    foreground = httpx.post(f"{base_url}/v1/responses", json={**body, "background": False, "max_output_tokens": 2},
                            headers=as_key(key), timeout=60).json()  # fmt: skip
    refused = httpx.post(f"{base_url}/v1/responses/{foreground['id']}/cancel", headers=as_key(key))
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "response_id"
    other = new_key(base_url, f"bg-{uuid.uuid4().hex[:8]}")
    assert httpx.post(f"{base_url}/v1/responses/{started['id']}/cancel", headers=as_key(other)).status_code == 404


def test_responses_in_a_conversation_are_its_turns(openai_client, http):
    cid = f"resp-conv-{uuid.uuid4().hex[:8]}"
    first = openai_client.responses.create(
        model=MODEL, input="My name is Ada.", conversation=cid, max_output_tokens=12, extra_body=NO_RAG
    )
    later = {"rag": False, "conversation_id": cid}
    openai_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "And mine?"}], max_tokens=4, extra_body=later
    )
    stored = http.get(f"/v1/conversations/{cid}").json()["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant", "user", "assistant"]
    assert stored[0]["content"] == "My name is Ada." and stored[1]["content"] == first.output_text
    with pytest.raises(openai.BadRequestError):
        openai_client.responses.create(
            model=MODEL, input="x", conversation=cid, previous_response_id=first.id, max_output_tokens=2
        )
