"""Nothing a client sends is silently ignored: an unknown field is a 400 naming it (OpenAI's words), and an OpenAI
field this server does not serve yet (tools, structured outputs, logprobs, ...) is a 400 naming it unless it is
sent with its off value, which clients and frameworks send by default."""

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from core.models import ChatRequest
from deployments.http_errors import install_error_handlers

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def client():
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest) -> dict:
        return body.model_dump(mode="json", exclude_none=True)

    return TestClient(app)


def refused(client, body: dict) -> dict:
    response = client.post("/v1/chat/completions", json={"model": "m", "messages": HI, **body})
    assert response.status_code == 400, response.text
    return response.json()["error"]


def test_an_unknown_field_is_named_as_openai_names_it(client):
    error = refused(client, {"temprature": 0.2})
    assert error == {
        "message": "Unrecognized request argument supplied: temprature",
        "type": "invalid_request_error",
        "param": "temprature",
        "code": "unknown_parameter",
    }
    assert refused(client, {"stream_options": {"include_usage": True, "x": 1}})["param"] == "stream_options.x"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tools", [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]),
        ("tool_choice", "required"),
        ("response_format", {"type": "json_object"}),
        ("logprobs", True),
        ("top_logprobs", 2),
        ("logit_bias", {"50256": -100}),
        ("modalities", ["text", "audio"]),
    ],
)
def test_a_field_not_served_yet_is_refused_by_name_not_ignored(client, field, value):
    error = refused(client, {field: value})
    assert error["param"] == field and error["code"] == "unsupported_parameter"
    assert "not supported by this server yet" in error["message"]


def test_tool_messages_and_tool_calls_are_refused_where_they_are(client):
    tool = [*HI, {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}]
    assert refused(client, {"messages": tool})["param"] == "messages.1.role"
    calls = [*HI, {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function"}]}]
    assert refused(client, {"messages": calls})["param"] == "messages.1.tool_calls"


def test_off_values_and_accepted_fields_pass(client):
    body = {
        "model": "m",
        "messages": [{**HI[0], "name": "ana", "tool_calls": []}],
        "tools": [],
        "tool_choice": "none",
        "response_format": {"type": "text"},
        "logprobs": False,
        "top_logprobs": 0,
        "logit_bias": {},
        "parallel_tool_calls": True,
        "metadata": {"team": "search"},
        "store": True,
        "user": "u-1",
    }
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    echoed = response.json()
    assert echoed["metadata"] == {"team": "search"} and "tools" not in echoed


def test_every_field_not_served_has_an_off_value_and_every_off_value_a_field():
    """A field declared without its entry in the table would be accepted whatever its value."""
    from typing import Any

    from core.models import _MESSAGE_OFF_VALUES, _OFF_VALUES, ChatMessage

    for model, table in ((ChatRequest, _OFF_VALUES), (ChatMessage, _MESSAGE_OFF_VALUES)):
        untyped = {name for name, field in model.model_fields.items() if field.annotation is Any}
        assert untyped == set(table), model.__name__
