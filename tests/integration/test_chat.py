"""Chat through the stock openai SDK and raw HTTP, against the real model."""

import json

import pytest

from tests.integration.conftest import FALLBACK_ONLY_MODEL, MODEL, MODEL_CACHE_DIR

pytestmark = pytest.mark.integration
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_models_lists_the_served_models(openai_client):
    # ours, and the one only the (fake) managed fallback provider serves
    assert sorted(m.id for m in openai_client.models.list().data) == sorted(
        [MODEL, FALLBACK_ONLY_MODEL, "all-MiniLM-L6-v2"]
    )


def test_chat_answers_paris(openai_client):
    response = openai_client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=40)
    answer = response.choices[0].message.content
    assert "Paris" in answer
    assert response.choices[0].finish_reason == "stop"
    usage = response.usage
    assert usage.prompt_tokens > 10 and usage.completion_tokens > 2
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_our_token_count_is_the_engines(openai_client):
    """core/tokens.py counts a chat prompt exactly as vLLM does (its trimming and its usage when a provider stops
    early rely on that): the engine's own prompt_tokens, for prompts with and without a system message."""
    from core.tokens import TokenCounter

    counter = TokenCounter.for_model(f"{MODEL_CACHE_DIR}/{MODEL}")
    assert counter.exact
    for messages in (
        QUESTION,
        [{"role": "system", "content": "Answer in one word."}, *QUESTION],
        [*QUESTION, {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Italy? Ünïcødé ✓"}],
    ):
        response = openai_client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=1, extra_body={"rag": False}
        )
        assert response.usage.prompt_tokens == counter.count_messages(messages)


def test_streaming_answers_paris_with_usage_that_adds_up(openai_client):
    stream = openai_client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        temperature=0,
        max_tokens=40,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert chunks[0].choices[0].delta.role == "assistant"
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and chunks[-1].usage is not None and chunks[-1].choices == []
    usage = usage_chunks[0].usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # Every generated token was streamed as one content delta (the stop token has no text).
    content_deltas = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_deltas) in (usage.completion_tokens, usage.completion_tokens - 1)
    # Same request without streaming: the same answer and the same usage.
    whole = openai_client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=40)
    assert whole.choices[0].message.content == text
    assert whole.usage.model_dump() == usage.model_dump()


def test_stream_without_include_usage_has_no_usage_chunk(openai_client):
    chunks = list(
        openai_client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=5, stream=True)
    )
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_raw_sse_frames_end_with_done(http):
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 5, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert len(response.headers.get_list("x-request-id")) == 1
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    # Each event: its sequence number (what a broken stream resumes after), then its chunk.
    ids, data = lines[:-1:2], lines[1:-1:2]
    assert ids == [f"id: {n}" for n in range(1, len(ids) + 1)]
    for line in data:
        assert line.startswith("data: ") and json.loads(line[6:])["object"] == "chat.completion.chunk"


def test_client_request_id_is_echoed_and_every_answer_has_an_id_of_its_own(http):
    answers = [
        http.post(
            "/v1/chat/completions",
            headers={"x-request-id": "my-trace-123"},
            json={"model": MODEL, "messages": QUESTION, "max_tokens": 3},
        )
        for _ in range(2)
    ]
    assert all(r.status_code == 200 and r.headers["x-request-id"] == "my-trace-123" for r in answers)
    ids = [r.json()["id"] for r in answers]
    # The answer's id is ours (what it is resumed and read back by), unique even when the client reuses its own.
    assert all(i.startswith("chatcmpl-") for i in ids) and ids[0] != ids[1]
    assert [r.headers["x-llmserve-response-id"] for r in answers] == ids


def test_max_tokens_is_honoured(openai_client):
    response = openai_client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        temperature=0,
        max_tokens=7,
    )
    assert response.usage.completion_tokens == 7
    assert response.choices[0].finish_reason == "length"


def test_what_the_server_does_not_serve_is_a_400_naming_it_never_a_silent_plain_answer(openai_client):
    """The stock SDK with audio, reasoning effort, deprecated functions, or a misspelt field: a clear error, not
    text that ignores it."""
    import openai

    asks = [
        ({"modalities": ["text", "audio"]}, "modalities", "unsupported_parameter"),
        ({"reasoning_effort": "high"}, "reasoning_effort", "unsupported_parameter"),
        ({"functions": [{"name": "get_weather", "parameters": {}}]}, "functions", "unsupported_parameter"),
        ({"tool_choice": "required"}, "tool_choice", "invalid_value"),
        ({"extra_body": {"rag": False, "temprature": 0}}, "temprature", "unknown_parameter"),
    ]
    for extra, param, code in asks:
        with pytest.raises(openai.BadRequestError) as info:
            openai_client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, **extra)
        assert info.value.code == code and info.value.param == param, info.value.body
    # Sent with their off values (frameworks do), they are fine.
    answer = openai_client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=4, tools=[], tool_choice="none", logprobs=False,
        response_format={"type": "text"}, metadata={"team": "search"}, store=True, extra_body={"rag": False},
    )  # fmt: skip
    assert answer.choices[0].message.content
