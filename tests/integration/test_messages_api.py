"""Anthropic's Messages API through the stock anthropic SDK (x-api-key), against the real model: text, streaming,
tools with tool results, conversations, and errors in Anthropic's shape."""

import uuid

import anthropic
import pytest

from tests.integration.conftest import MASTER_KEY, MODEL

pytestmark = pytest.mark.integration
WEATHER = {
    "name": "get_weather",
    "description": "The current weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
NO_RAG = {"rag": False}


@pytest.fixture(scope="module")
def claude(base_url):
    return anthropic.Anthropic(base_url=base_url, api_key=MASTER_KEY, max_retries=0, timeout=120)


def test_a_claude_client_gets_an_answer_whole_and_streamed(claude):
    ask = {"model": MODEL, "max_tokens": 40, "extra_body": {"temperature": 0, **NO_RAG},
           "messages": [{"role": "user", "content": "What is the capital of France?"}]}  # fmt: skip
    message = claude.messages.create(**ask)
    assert message.type == "message" and message.id.startswith("msg_") and message.role == "assistant"
    assert "Paris" in message.content[0].text and message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 10 and message.usage.output_tokens > 2
    with claude.messages.stream(**ask) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == message.content[0].text == final.content[0].text
    assert final.usage.output_tokens == message.usage.output_tokens


def test_tools_round_trip_with_tool_use_and_tool_result_blocks(claude):
    conversation = {"rag": False, "conversation_id": f"claude-{uuid.uuid4().hex}"}
    asked = [{"role": "user", "content": "What is the weather in Paris?"}]
    called = claude.messages.create(
        model=MODEL, max_tokens=120, tools=[WEATHER], tool_choice={"type": "any"}, messages=asked,
        extra_body={"temperature": 0, **NO_RAG},
    )  # fmt: skip
    (use,) = [b for b in called.content if b.type == "tool_use"][:1]
    assert called.stop_reason == "tool_use" and use.name == "get_weather" and isinstance(use.input["city"], str)
    with claude.messages.stream(
        model=MODEL, max_tokens=120, tools=[WEATHER], messages=asked, extra_body={"temperature": 0, **NO_RAG},
        tool_choice={"type": "tool", "name": "get_weather"},
    ) as stream:  # fmt: skip
        streamed = stream.get_final_message()
    assert [b.type for b in streamed.content] == ["tool_use"] and isinstance(streamed.content[0].input, dict)
    result = claude.messages.create(
        model=MODEL, max_tokens=40, tools=[WEATHER], extra_body={"temperature": 0, **conversation},
        messages=[*asked, {"role": "assistant", "content": called.content},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                "content": "Sunny, 21 degrees."}]}],
    )  # fmt: skip
    assert result.content and result.content[0].type == "text" and result.content[0].text


def test_errors_are_in_anthropics_shape(claude, base_url):
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.messages.create(
            model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}], extra_body={"top_k": 5}
        )
    assert bad.value.body["type"] == "error" and bad.value.body["error"]["type"] == "invalid_request_error"
    assert "top_k" in bad.value.body["error"]["message"]
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    stranger = anthropic.Anthropic(base_url=base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as denied:
        stranger.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert denied.value.body["error"]["type"] == "authentication_error"


def test_output_config_format_is_a_json_schema_answer(claude):
    import json

    import jsonschema

    person = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}  # fmt: skip
    message = claude.messages.create(
        model=MODEL, max_tokens=80, messages=[{"role": "user", "content": "Invent a person."}],
        output_config={"format": {"type": "json_schema", "schema": person}}, extra_body={"temperature": 0, **NO_RAG},
    )  # fmt: skip
    jsonschema.validate(json.loads(message.content[0].text), person)
