"""Tools, structured outputs, logprobs and several choices on the way through: what providers get (OpenAI fields
passed through, Anthropic's translated or refused by name), what comes back (tool-call deltas, logprobs, choices
folded into the whole answer), and an answer that cannot be continued elsewhere is never continued wrongly."""

import asyncio
import json

import pytest

from core.errors import InvalidRequest, ServiceUnavailable
from core.models import ChatChunk, ChatRequest
from core.pricing import Price
from core.provider_config import ProviderConfig
from deployments.answers import fold
from deployments.prompt import generation_params
from deployments.providers.anthropic_http import AnthropicProvider, to_anthropic
from deployments.providers.base import EngineDelta, GenerationParams, ProviderError, deltas_from_chunk
from deployments.providers.openai_http import OpenAIProvider
from deployments.providers.retry import RetryPolicy
from deployments.providers.router import ProviderRouter, RoutedStream
from deployments.providers.routing import LoadStats, strategy
from tests.fakes.managed_api import Script, serve_fake

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
HI = [{"role": "user", "content": "Weather in Oslo?"}]


def request(**fields) -> ChatRequest:
    return ChatRequest.model_validate({"model": "m", "messages": HI, **fields})


def test_off_values_are_not_sent_and_served_fields_go_in_openai_names():
    off = generation_params(
        request(tools=[], tool_choice="none", response_format={"type": "text"}, logprobs=False, n=1, logit_bias={}),
        16,
    )
    assert off.fields() == {"max_tokens": 16} and not off.structured
    on = generation_params(
        request(
            tools=[WEATHER], tool_choice="required", logprobs=True, top_logprobs=2, n=2,
            response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}},
        ),
        16,
    )  # fmt: skip
    assert on.fields()["response_format"]["json_schema"]["schema"] == {"type": "object"}
    assert on.tools == [WEATHER] and on.n == 2 and on.top_logprobs == 2 and on.structured


def test_chunks_become_one_delta_per_choice_with_tool_calls_and_logprobs():
    logprobs = {"content": [{"token": "Hi", "logprob": -0.1, "top_logprobs": []}]}
    payload = {
        "choices": [
            {"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f"}}]}},
            {"index": 1, "delta": {"content": "Hi"}, "logprobs": logprobs, "finish_reason": "length"},
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    first, second = deltas_from_chunk(payload)
    assert first.tool_calls[0]["id"] == "c" and first.output and first.index == 0
    assert second.index == 1 and second.logprobs == logprobs and second.usage.total_tokens == 5


def test_a_streamed_answer_folds_into_choices_with_tool_calls_and_logprobs():
    def chunk(*choices, **extra):
        return ChatChunk(id="x", model="m", choices=list(choices), **extra)

    lp = {"content": [{"token": "A", "logprob": -0.5, "top_logprobs": []}]}
    chunks = [
        chunk({"index": 0, "delta": {"role": "assistant", "content": ""}}, {"index": 1, "delta": {"content": ""}}),
        chunk({"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                      "function": {"name": "get_weather", "arguments": '{"ci'}}]}}),
        chunk({"index": 1, "delta": {"content": "A"}, "logprobs": lp}),
        chunk({"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Oslo"}'}}]},
               "finish_reason": "tool_calls"}),
        chunk({"index": 1, "delta": {"content": "B"}, "logprobs": lp, "finish_reason": "length"}),
        chunk(usage={"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}),
    ]  # fmt: skip
    whole = fold(chunks)
    calls, text = whole.choices
    assert calls.message.content is None and calls.finish_reason == "tool_calls"
    assert [c.model_dump() for c in calls.message.tool_calls] == [CALL]
    assert text.message.content == "AB" and len(text.logprobs.content) == 2 and text.index == 1


def test_anthropic_gets_tools_tool_choice_calls_and_results_translated():
    params = GenerationParams(max_tokens=10, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False)
    body = to_anthropic(
        [*HI, {"role": "assistant", "content": "", "tool_calls": [CALL]},
         {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}],
        params,
    )  # fmt: skip
    assert body["tools"] == [{"name": "get_weather", "description": "", "input_schema": {"type": "object"}}]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}}],
    }
    assert body["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"}],
    }
    named = to_anthropic(HI, GenerationParams(max_tokens=5, tools=[WEATHER], tool_choice=WEATHER))
    assert named["tool_choice"] == {"type": "tool", "name": "get_weather"}


def test_anthropic_tool_use_streams_back_as_openai_tool_call_deltas():
    with serve_fake("anthropic", Script(tool_input={"city": "Oslo"})) as fake:
        provider = AnthropicProvider(ProviderConfig(name="c", kind="anthropic", base_url=fake.url), Price())
        params = GenerationParams(max_tokens=20, tools=[WEATHER], tool_choice="required")

        async def collect():
            return [d async for deltas in provider.stream("m", HI, params, "r") for d in deltas]

        deltas = asyncio.run(collect())
    chunks = [ChatChunk(id="x", model="m", choices=[{"index": 0, "delta": {"tool_calls": d.tool_calls}}])
              for d in deltas if d.tool_calls]  # fmt: skip
    (call,) = fold(chunks).choices[0].message.tool_calls
    assert call.id == "toolu_fake1" and json.loads(call.function.arguments) == {"city": "Oslo"}
    assert deltas[-1].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (GenerationParams(max_tokens=5, response_format={"type": "json_object"}), "response_format"),
        (GenerationParams(max_tokens=5, logprobs=True), "logprobs"),
        (GenerationParams(max_tokens=5, n=2), "n"),
        (GenerationParams(max_tokens=5, seed=3), "seed"),
    ],
)
def test_what_anthropic_cannot_honour_goes_to_a_provider_that_can_or_is_a_400(params, field):
    with serve_fake("anthropic") as claude, serve_fake("openai") as oai:
        first = AnthropicProvider(ProviderConfig(name="claude", kind="anthropic", base_url=claude.url), Price())
        second = OpenAIProvider(ProviderConfig(name="oai", kind="openai", base_url=oai.url), Price())
        routed = RoutedStream()
        asyncio.run(_drain(_router([first, second]), params, routed))
        assert routed.providers == ["oai"] and not claude.script.requests  # never asked
        assert oai.script.requests[0][1][field] == getattr(params, field)
        with pytest.raises(InvalidRequest) as refused:
            asyncio.run(_drain(_router([first]), params, RoutedStream()))
        assert refused.value.param == field and refused.value.code == "unsupported_parameter"


class Dies:
    """A provider that streams two pieces of a tool call, then its connection breaks."""

    name, kind, price = "dies", "openai", Price()

    def __init__(self):
        self.calls = 0

    def serves(self, model):
        return True

    def refuses(self, params):
        return None

    async def stream(self, model, messages, params, request_id):
        self.calls += 1
        yield [EngineDelta(tool_calls=[{"index": 0, "id": "c", "type": "function", "function": {"name": "f"}}])]
        yield [EngineDelta(tool_calls=[{"index": 0, "function": {"arguments": '{"a'}}])]
        raise ProviderError(self.name, "connection failed")

    async def check_health(self):
        return None

    async def aclose(self):
        return None


def test_a_tool_call_cut_off_mid_way_is_an_error_not_a_continuation_from_text():
    dies, other = Dies(), Dies()
    other.name = "other"
    params = GenerationParams(max_tokens=20, tools=[WEATHER], tool_choice="required")
    with pytest.raises(ServiceUnavailable) as cut:
        asyncio.run(_drain(_router([dies, other]), params, RoutedStream()))
    assert cut.value.code == "answer_interrupted" and other.calls == 0  # nothing continued a half call as text


def _router(providers):
    stats = LoadStats(self_hosted_slots=4, ttft_target_s=2.0)
    return ProviderRouter(providers, strategy("ordered"), stats, None, RetryPolicy(1, 0.01, 0.01), 30)


async def _drain(router, params, routed):
    async for _ in router.stream("m", HI, params, "req", routed):
        pass
