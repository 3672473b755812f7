"""The Responses API through the stock openai SDK against the real model: text, streaming events the SDK adds up,
function tools with their outputs sent back through previous_response_id, stored responses read, listed and
deleted per tenant, and what it does not serve refused by name."""

import json
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
    for extra, param in (({"background": True}, "background"), ({"reasoning": {"effort": "high"}}, "reasoning"),
                         ({"extra_body": {"frobnicate": 1}}, "frobnicate")):  # fmt: skip
        with pytest.raises(openai.BadRequestError) as refused:
            openai_client.responses.create(model=MODEL, input="x", max_output_tokens=4, **extra)
        assert refused.value.param == param, refused.value.body
