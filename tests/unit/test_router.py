"""The failover router against fake providers over real HTTP, with the circuit breaker in a real Redis:
every request succeeds while one provider is healthy, Retry-After is honoured, breakers open and recover, a
mid-stream failover yields exactly the scripted text, and costs add up."""

import asyncio
import time

import pytest

from core.errors import InvalidRequest, ServiceUnavailable
from core.pricing import Price
from core.provider_config import ProviderConfig
from core.tokens import TokenCounter
from deployments.providers.anthropic_http import AnthropicProvider
from deployments.providers.base import GenerationParams
from deployments.providers.openai_http import OpenAIProvider
from deployments.providers.retry import RetryPolicy
from deployments.providers.router import ProviderRouter, RoutedStream
from deployments.providers.routing import LoadStats, strategy
from state.breaker import BreakerPolicy, CircuitBreaker
from tests.conftest import redis_client
from tests.fakes.managed_api import Fault, Script, serve_fake

HI = [{"role": "user", "content": "What is the answer?"}]
PARAMS = GenerationParams(max_tokens=64)
FAST = RetryPolicy(max_attempts=3, base_s=0.01, max_wait_s=0.05)


def openai(fake, name="a", price=(1.0, 2.0), timeout=30.0):
    config = ProviderConfig(name=name, kind="openai", base_url=fake.url, first_token_timeout_s=timeout)
    return OpenAIProvider(config, Price(*price))


def anthropic(fake, name="b", price=(3.0, 15.0)):
    return AnthropicProvider(ProviderConfig(name=name, kind="anthropic", base_url=fake.url), Price(*price))


def router(providers, client=None, prefix="t", policy=FAST, breaker=None, routing="ordered", deadline=30, tokens=None):
    cb = CircuitBreaker(client, prefix, breaker or BreakerPolicy()) if client is not None else None
    timeouts = {p.name: p._config.first_token_timeout_s for p in providers}
    stats = LoadStats(self_hosted_slots=4, ttft_target_s=2.0)
    return ProviderRouter(providers, strategy(routing), stats, cb, policy, deadline, timeouts, tokens)


async def answer(r, messages=HI):
    out = RoutedStream()
    text = ""
    async for deltas in r.stream("m", messages, PARAMS, "req", out):
        text += "".join(d.text for d in deltas)
    return text, out


def test_retry_honours_retry_after_and_the_request_succeeds():
    with serve_fake("openai") as fake:
        fake.script.faults.extend([Fault(status=429, retry_after="1"), Fault(status=503, retry_after_ms="300")])
        text, out = asyncio.run(answer(router([openai(fake)])))
        assert text == fake.script.text and out.providers == ["a"]
        (t0, _, _), (t1, _, _), (t2, _, _) = fake.script.requests
        assert t1 - t0 >= 1.0, "waited less than Retry-After: 1"
        assert 0.3 <= t2 - t1 < 1.0, "retry-after-ms: 300 not honoured"


def test_every_request_succeeds_while_one_provider_is_healthy():
    with serve_fake("openai") as bad, serve_fake("anthropic") as good:
        bad.script.faults.extend([Fault(status=500)] * 3 + [Fault(status=502)] * 3)
        r = router([openai(bad), anthropic(good)])

        async def two():
            return [await answer(r) for _ in range(2)]

        for text, out in asyncio.run(two()):
            assert text == good.script.text and out.providers == ["b"]
            assert len(out.failures) == 1 and "HTTP 50" in out.failures[0]
            # metrics that add up: three failed tries of a, one of b; one failover; b finished the answer
            assert out.attempts == [("a", False)] * 3 + [("b", True)]
            assert out.failovers() == [("a", "b")] and out.finisher == "b"
        assert len(bad.script.requests) == 6  # 3 attempts each (FAST.max_attempts), then failover


def test_a_client_error_is_not_retried_or_failed_over():
    with serve_fake("openai") as a, serve_fake("anthropic") as b:
        a.script.faults.append(Fault(status=400))
        with pytest.raises(InvalidRequest):
            asyncio.run(answer(router([openai(a), anthropic(b)])))
        assert len(a.script.requests) == 1 and not b.script.requests


def test_a_slow_first_token_times_out_into_the_next_provider():
    with serve_fake("openai") as slow, serve_fake("openai") as fast:
        slow.script.faults.extend([Fault(ttft_s=3.0)] * 3)
        started = time.monotonic()
        text, out = asyncio.run(answer(router([openai(slow, timeout=0.3), openai(fast, name="b")])))
        assert text == fast.script.text and out.providers == ["b"]
        assert time.monotonic() - started < 2.5  # three 0.3 s attempts, not one 3 s wait


def test_mid_stream_failover_yields_exactly_the_script_with_nothing_repeated(tokenizer_dir):
    text = "One two three four five six seven eight nine ten."
    tokens = TokenCounter.for_model(str(tokenizer_dir))
    with serve_fake("openai", Script(text=text)) as a, serve_fake("anthropic", Script(text=text)) as b:
        a.script.faults.append(Fault(disconnect_after=4))
        got, out = asyncio.run(answer(router([openai(a), anthropic(b)], tokens=tokens)))
        assert got == text and out.providers == ["a", "b"]
        assert out.failovers() == [("a", "b")] and out.finisher == "b"
        _, continued, _ = b.script.requests[0]
        assert continued["messages"][-1] == {"role": "assistant", "content": "One two three four"}
        # a was cut off before it reported usage: what it was sent and streamed, counted with the tokenizer
        a_leg, _ = out.legs
        assert a_leg.usage.completion_tokens == tokens.count_text("One two three four")
        assert a_leg.usage.prompt_tokens == tokens.count_messages(HI)
        usage = out.usage()
        assert usage.prompt_tokens == a_leg.usage.prompt_tokens  # the prompt as the first provider saw it
        assert usage.completion_tokens == a_leg.usage.completion_tokens + len(text.split()[4:])  # b counts its own


def test_a_retry_of_the_same_provider_is_an_attempt_not_a_failover():
    with serve_fake("openai") as a:
        a.script.faults.append(Fault(status=503))
        _, out = asyncio.run(answer(router([openai(a)])))
        assert out.attempts == [("a", False), ("a", True)]
        assert out.failovers() == [] and out.finisher == "a"
    assert RoutedStream().finisher == "none"


def test_costs_add_up_to_usage_times_price():
    with serve_fake("openai") as a:
        _, out = asyncio.run(answer(router([openai(a, price=(1.0, 2.0))])))
        usage = out.usage()
        assert out.cost_usd == pytest.approx((usage.prompt_tokens * 1.0 + usage.completion_tokens * 2.0) / 1e6)
        assert out.cost_usd > 0


def test_the_breaker_opens_skips_the_provider_and_recovers_after_a_probe(redis_prefix):
    policy = BreakerPolicy(failures=3, window_s=30, open_s=1.0)
    with serve_fake("openai") as a, serve_fake("anthropic") as b:

        async def main():
            async with redis_client() as client:
                r = router([openai(a), anthropic(b)], client, redis_prefix, breaker=policy)
                a.script.faults.extend([Fault(status=500)] * 3)
                _, first = await answer(r)  # 3 failed attempts open a's breaker
                assert first.providers == ["b"]
                assert await CircuitBreaker(client, redis_prefix, policy).state("a") == "open"
                calls = len(a.script.requests)
                _, skipped = await answer(r)
                assert skipped.providers == ["b"] and len(a.script.requests) == calls  # not even tried
                assert skipped.failures == ["a: circuit open"]
                await asyncio.sleep(1.1)  # half-open: one probe goes through, succeeds, closes it
                _, probed = await answer(r)
                assert probed.providers == ["a"]
                assert await CircuitBreaker(client, redis_prefix, policy).state("a") == "closed"

        asyncio.run(main())


def test_a_success_clears_failures_counted_before_it_and_a_clean_breaker_costs_no_redis_call_after(redis_prefix):
    policy = BreakerPolicy(failures=3, window_s=30, open_s=1.0)
    with serve_fake("openai") as a:

        async def main():
            async with redis_client() as client:
                breaker = CircuitBreaker(client, redis_prefix, policy)
                r = router([openai(a)], client, redis_prefix, breaker=policy)
                checks = []
                exists = client.exists
                client.exists = lambda *keys: checks.append(keys) or exists(*keys)
                assert await breaker.allow("a") == "clean"
                _, ok = await answer(r)
                assert ok.providers == ["a"] and checks == []  # nothing counted: nothing to clear, no call
                await breaker.failure("a")  # another replica's failure
                await breaker.failure("a")
                assert await breaker.allow("a") == "closed"
                _, ok = await answer(r)  # this success clears them: two more failures do not open it
                assert ok.providers == ["a"] and len(checks) == 1
                assert await breaker.allow("a") == "clean"
                await breaker.failure("a")
                await breaker.failure("a")
                assert await breaker.state("a") == "closed"
                await breaker.success("a")
                a.script.faults.extend([Fault(status=500)] * 2)  # its own retries fail twice, then it answers
                _, retried = await answer(r)
                assert retried.providers == ["a"] and retried.failed["a"] == 2
                assert await breaker.allow("a") == "clean"  # what its retries counted, its success cleared

        asyncio.run(main())


def test_nothing_healthy_is_a_503_naming_who_was_tried_but_not_what_they_said(caplog):
    with serve_fake("openai") as a:
        a.script.faults.extend([Fault(status=503)] * 10)
        with pytest.raises(ServiceUnavailable) as info:
            asyncio.run(answer(router([openai(a)])))
        assert info.value.code == "providers_unavailable" and "tried: a" in info.value.message
        assert "HTTP 503" not in info.value.message  # the provider's answer goes to the log, not to the client
        assert "HTTP 503" in caplog.text


def test_provider_usage_and_self_hosted_economics(redis_prefix):
    from state.provider_usage import ProviderUsage, self_hosted_economics

    async def main():
        async with redis_client() as client:
            usage = ProviderUsage(client, redis_prefix)
            await usage.add("own", requests=2, prompt_tokens=600, completion_tokens=400, cost_usd=0.001, busy_s=10)
            await usage.add("own", failures=1, busy_s=10)
            return await usage.get("own")

    row = asyncio.run(main())
    assert row == {
        "requests": 2,
        "prompt_tokens": 600,
        "completion_tokens": 400,
        "failures": 1,
        "cost_usd": 0.001,
        "busy_s": 20.0,
    }
    # 1000 tokens in 20 busy seconds = 50 tokens/s; $3.60/GPU-hour = $0.001/s -> $20 per 1M tokens at full use;
    # against a managed $40 per 1M, self-hosting pays above 50 % utilisation.
    economics = self_hosted_economics(row, gpu_hour_usd=3.6, gpus=1, managed_usd_per_mtok=40.0)
    assert economics["tokens_per_s_busy"] == pytest.approx(50.0)
    assert economics["usd_per_mtok_full_use"] == pytest.approx(20.0)
    assert economics["break_even_utilisation"] == pytest.approx(0.5)
