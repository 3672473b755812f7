"""/v1/completions: a raw prompt continued by the real model (no chat template), streamed and whole, through
the stock openai SDK; stored and read back like a chat answer; what it does not serve is a 400 naming it."""

import httpx
import pytest

from tests.integration.conftest import MASTER_KEY, MODEL, MODEL_CACHE_DIR

pytestmark = pytest.mark.integration
PROMPT = "The capital of France is the city of"


def test_a_prompt_is_continued_as_it_is_not_as_a_chat(openai_client):
    from core.tokens import TokenCounter

    completion = openai_client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0)
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    (choice,) = completion.choices
    assert "Paris" in choice.text and choice.finish_reason in ("stop", "length")
    counter = TokenCounter.for_model(f"{MODEL_CACHE_DIR}/{MODEL}")
    assert completion.usage.prompt_tokens == counter.count_text(PROMPT)  # no chat template around it
    assert completion.usage.completion_tokens == counter.count_text(choice.text) <= 6


def test_a_streamed_completion_adds_up_to_the_whole_one_and_reads_back(openai_client, http):
    whole = openai_client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0)
    stream = openai_client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert all(c.object == "text_completion" for c in chunks) and len({c.id for c in chunks}) == 1
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    stored = http.get(f"/v1/completions/{chunks[0].id}")
    assert stored.status_code == 200 and stored.json()["choices"][0]["text"] == whole.choices[0].text
    resumed = http.get(f"/v1/completions/{chunks[0].id}", params={"stream": "true", "starting_after": 1})
    texts = [line for line in resumed.text.splitlines() if line.startswith("data: {")]
    assert texts and all('"object":"text_completion"' in t for t in texts)


def test_several_choices_and_what_completions_do_not_serve(openai_client, base_url):
    two = openai_client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, n=2, temperature=1.0, seed=3)
    assert [c.index for c in two.choices] == [0, 1]
    for body, param in (
        ({"echo": True}, "echo"),
        ({"suffix": "!"}, "suffix"),
        ({"logprobs": 2}, "logprobs"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"frobnicate": 1}, "frobnicate"),
    ):
        response = httpx.post(
            f"{base_url}/v1/completions",
            json={"model": MODEL, "prompt": PROMPT, "max_tokens": 4, **body},
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
        )
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["param"] == param, response.text
