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
        ("functions", [{"name": "get_weather", "parameters": {}}]),
        ("function_call", {"name": "get_weather"}),
        ("modalities", ["text", "audio"]),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("prediction", {"type": "content", "content": "x"}),
        ("reasoning_effort", "high"),
        ("web_search_options", {}),
    ],
)
def test_a_field_not_served_yet_is_refused_by_name_not_ignored(client, field, value):
    error = refused(client, {field: value})
    assert error["param"] == field and error["code"] == "unsupported_parameter"
    assert "not supported by this server yet" in error["message"]


def test_deprecated_function_messages_are_refused_where_they_are(client):
    function = [*HI, {"role": "function", "name": "f", "content": "sunny"}]
    assert refused(client, {"messages": function})["param"] == "messages.1.role"
    call = [*HI, {"role": "assistant", "content": "", "function_call": {"name": "f", "arguments": "{}"}}]
    assert refused(client, {"messages": call})["param"] == "messages.1.function_call"


def test_served_fields_and_off_values_pass(client):
    calls = [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]
    body = {
        "model": "m",
        "messages": [
            {**HI[0], "name": "ana"},
            {"role": "assistant", "content": None, "tool_calls": calls, "refusal": None},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}},
        "logprobs": True,
        "top_logprobs": 2,
        "logit_bias": {"50256": -100},
        "n": 2,
        "parallel_tool_calls": False,
        "functions": [],
        "modalities": ["text"],
        "metadata": {"team": "search"},
        "store": True,
        "user": "u-1",
    }
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    echoed = response.json()
    assert echoed["metadata"] == {"team": "search"} and echoed["messages"][1]["tool_calls"] == calls
    assert echoed["response_format"]["json_schema"]["schema"] == {"type": "object"}  # OpenAI's name, both ways


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"n": 9}, "n"),
        ({"messages": [{"role": "tool", "content": "sunny"}]}, "messages.0"),
        ({"tools": [{"type": "function", "function": {"name": "get weather"}}]}, "tools.0.function.name"),
    ],
)
def test_inconsistent_feature_fields_are_400_naming_the_field(client, body, param):
    error = refused(client, body)
    assert error["type"] == "invalid_request_error" and error["param"].startswith(param.split(".")[0]), error


def test_every_field_not_served_has_an_off_value_and_every_off_value_a_field():
    """A field declared without its entry in the table would be accepted whatever its value."""
    from typing import Any

    from core.models import _MESSAGE_OFF_VALUES, _OFF_VALUES, ChatMessage

    for model, table in ((ChatRequest, _OFF_VALUES), (ChatMessage, _MESSAGE_OFF_VALUES)):
        untyped = {name for name, field in model.model_fields.items() if field.annotation is Any}
        assert untyped == set(table), model.__name__
