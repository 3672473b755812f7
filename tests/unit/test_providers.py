"""Managed providers against local fakes that speak the real OpenAI and Anthropic streaming protocols."""

import asyncio

import pytest

from core.pricing import Price
from core.provider_config import ProviderConfig
from deployments.providers.anthropic_http import AnthropicProvider, to_anthropic
from deployments.providers.base import GenerationParams, ProviderError, parse_retry_after
from deployments.providers.openai_http import OpenAIProvider
from tests.fakes.managed_api import Fault, serve_fake

HI = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the answer?"}]
PARAMS = GenerationParams(max_tokens=32, temperature=0.0, stop=["\n\n"])


async def collect(provider, messages=HI, params=PARAMS):
    text, finish, usage = "", None, None
    async for deltas in provider.stream("ours", messages, params, "req-1"):
        for d in deltas:
            text += d.text
            finish = d.finish_reason or finish
            usage = d.usage or usage
    return text, finish, usage


def test_openai_compatible_streams_the_answer_with_model_mapping_and_key(monkeypatch):
    monkeypatch.setenv("FAKE_OPENAI_KEY", "sk-upstream")
    with serve_fake("openai") as fake:
        config = ProviderConfig(
            name="oai", kind="openai", base_url=fake.url, api_key_env="FAKE_OPENAI_KEY", models={"ours": "gpt-x"}
        )
        provider = OpenAIProvider(config, Price())
        text, finish, usage = asyncio.run(collect(provider))
        assert text == fake.script.text and finish == "stop"
        assert usage.completion_tokens == len(fake.script.text.split())
        _, body, headers = fake.script.requests[0]
        assert body["model"] == "gpt-x" and body["stop"] == ["\n\n"] and body["stream"] is True
        assert headers["authorization"] == "Bearer sk-upstream"
        assert provider.serves("ours") and not provider.serves("other")


def test_anthropic_translation_both_ways():
    body = to_anthropic(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "Use English."},
            {"role": "user", "content": "Hi"},
            {"role": "user", "content": "Answer?"},
            {"role": "assistant", "content": "The answer "},
        ],
        GenerationParams(max_tokens=10, temperature=1.7, stop="END"),
    )
    assert body["system"] == "Be brief.\n\nUse English."
    assert body["messages"] == [
        {"role": "user", "content": "Hi\n\nAnswer?"},  # consecutive user turns merged
        {"role": "assistant", "content": "The answer"},  # a prefill may not end in whitespace
    ]
    assert body["temperature"] == 1.0 and body["stop_sequences"] == ["END"] and body["max_tokens"] == 10

    with serve_fake("anthropic") as fake:
        config = ProviderConfig(name="claude", kind="anthropic", base_url=fake.url, models={"*": "claude-x"})
        text, finish, usage = asyncio.run(collect(AnthropicProvider(config, Price())))
        assert text == fake.script.text and finish == "stop"  # end_turn -> stop
        assert usage.prompt_tokens > 0 and usage.completion_tokens == len(fake.script.text.split())
        _, sent, headers = fake.script.requests[0]
        assert sent["model"] == "claude-x" and sent["system"] == "Be brief." and headers["anthropic-version"]


def test_an_anthropic_prefill_continues_without_repeating_the_trimmed_space():
    with serve_fake("anthropic") as fake:
        provider = AnthropicProvider(ProviderConfig(name="c", kind="anthropic", base_url=fake.url), Price())
        prefix = "The answer is "
        messages = [*HI, {"role": "assistant", "content": prefix}]
        text, _, _ = asyncio.run(collect(provider, messages))
        assert prefix + text == fake.script.text


def test_errors_carry_status_retryability_and_retry_after():
    with serve_fake("openai") as fake:
        fake.script.faults.extend([Fault(status=429, retry_after="2"), Fault(status=400), Fault(disconnect_after=2)])
        provider = OpenAIProvider(ProviderConfig(name="oai", kind="openai", base_url=fake.url), Price())

        async def three_failures():
            errors = []
            for _ in range(3):
                with pytest.raises(ProviderError) as info:
                    await collect(provider)
                errors.append(info.value)
            return errors

        limited, bad, cut = asyncio.run(three_failures())
        assert limited.status == 429 and limited.retryable and limited.retry_after_s == 2.0
        assert bad.status == 400 and not bad.retryable and bad.client_error
        assert cut.retryable and "connection" in str(cut)  # a disconnect mid-stream


def test_retry_after_forms():
    assert parse_retry_after({"retry-after-ms": "1500"}) == 1.5
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert 0 <= parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) <= 0.0 + 1e-9
    assert parse_retry_after({"retry-after": "soon"}) is None and parse_retry_after({}) is None
