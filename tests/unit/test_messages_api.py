"""Anthropic's Messages API as an ingress: its blocks, tools and tool choice as the chat request they run as, and
a chat answer back as Anthropic's message and event stream (what the anthropic SDK reads)."""

import asyncio
import json

import pytest
from pydantic import ValidationError

from core.anthropic_messages import MessagesRequest, whole_message
from core.models import ChatChunk
from deployments.answers import fold
from deployments.frames import Frame
from deployments.http_errors import anthropic_error_body
from deployments.messages_stream import messages_sse

TOOL = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


def test_blocks_tools_and_tool_choice_run_as_the_chat_request():
    request = MessagesRequest.model_validate(
        {
            "model": "m", "max_tokens": 20, "system": [{"type": "text", "text": "Be brief."}],
            "stop_sequences": ["END"], "tools": [TOOL],
            "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
            "messages": [
                {"role": "user", "content": "Weather in Oslo?"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                                    "input": {"city": "Oslo"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                                             {"type": "text", "text": "And tomorrow?"}]},
            ],
        }
    )  # fmt: skip
    chat = request.as_chat("rid")
    assert [m.role for m in chat.messages] == ["system", "user", "assistant", "tool", "user"]
    assert chat.messages[2].tool_calls[0].function.arguments == '{"city": "Oslo"}'
    assert chat.messages[3].tool_call_id == "toolu_1" and chat.messages[3].content == "sunny"
    assert chat.tools[0].function.parameters == TOOL["input_schema"] and chat.stop == ["END"]
    assert chat.tool_choice.function.name == "get_weather" and chat.parallel_tool_calls is False
    forced = MessagesRequest(
        model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}], tool_choice={"type": "any"}, tools=[TOOL]
    )
    assert forced.as_chat(None).tool_choice == "required"


@pytest.mark.parametrize(
    "extra",
    [{"top_k": 5}, {"thinking": {"type": "enabled", "budget_tokens": 1024}}, {"temperature": 1.5}, {"frobnicate": 1}],
)
def test_what_is_not_served_is_refused(extra):
    with pytest.raises(ValidationError):
        MessagesRequest.model_validate(
            {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], **extra}
        )


def _chunks():
    def chunk(*choices, **extra):
        return ChatChunk(id="msg-abc", model="m", choices=list(choices), **extra)

    return [
        chunk({"index": 0, "delta": {"role": "assistant", "content": ""}}),
        chunk({"index": 0, "delta": {"content": "Let me check."}}),
        chunk({"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                      "function": {"name": "get_weather", "arguments": '{"ci'}}]}}),
        chunk({"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Oslo"}'}}]},
               "finish_reason": "tool_calls"}),
        chunk(usage={"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16}),
    ]  # fmt: skip


def test_a_whole_answer_is_an_anthropic_message():
    message = whole_message(fold(_chunks()))
    assert message["id"] == "msg_abc" and message["stop_reason"] == "tool_use"
    assert message["content"] == [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}},
    ]
    assert message["usage"] == {"input_tokens": 7, "output_tokens": 9}


def test_the_stream_is_anthropics_event_sequence():
    async def batches():
        for i, c in enumerate(_chunks(), 1):
            yield [(i, Frame.of(c))]

    async def collect():
        return "".join([frame async for frame in messages_sse(batches(), "r")])

    events = [json.loads(line[6:]) for line in asyncio.run(collect()).splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_stop", "content_block_start",
        "content_block_delta", "content_block_delta", "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    assert events[4]["content_block"] == {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}}
    assert "".join(e["delta"].get("partial_json", "") for e in events[5:7]) == '{"city": "Oslo"}'
    assert events[8]["delta"]["stop_reason"] == "tool_use" and events[8]["usage"]["output_tokens"] == 9


def test_errors_take_anthropics_shape():
    body = {"error": {"message": "no", "type": "invalid_request_error", "param": "max_tokens", "code": "x"}}
    assert anthropic_error_body(400, body) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "no (param: max_tokens)"},
    }
    assert anthropic_error_body(429, body)["error"]["type"] == "rate_limit_error"


def test_an_upstream_repeating_the_call_id_makes_one_block_and_a_call_cut_at_max_tokens_is_not_tool_use():
    def chunk(*choices, **extra):
        return ChatChunk(id="msg-abc", model="m", choices=list(choices), **extra)

    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a'}}
    again = {"index": 0, "id": "call_1", "function": {"arguments": '": 1'}}
    chunks = [
        chunk({"index": 0, "delta": {"tool_calls": [call]}}),
        chunk({"index": 0, "delta": {"tool_calls": [again]}, "finish_reason": "length"}),
        chunk(usage={"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11}),
    ]

    async def batches():
        for i, c in enumerate(chunks, 1):
            yield [(i, Frame.of(c))]

    async def collect():
        return "".join([frame async for frame in messages_sse(batches(), "r")])

    events = [json.loads(line[6:]) for line in asyncio.run(collect()).splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events].count("content_block_start") == 1
    assert events[-2]["delta"]["stop_reason"] == "max_tokens"
    assert whole_message(fold(chunks))["stop_reason"] == "max_tokens"
