import pytest

from core.models import ChatMessage, Citation
from core.tokens import TokenCounter
from deployments.prompt import build_prompt, retrieval_query


def m(role, content):
    return ChatMessage(role=role, content=content)


@pytest.fixture(scope="module")
def tokens(tokenizer_dir):
    counter = TokenCounter.for_model(str(tokenizer_dir))
    assert counter.exact
    return counter


def test_history_goes_between_system_and_new_turn(tokens):
    history = [m("user", "hi"), m("assistant", "hello")]
    prompt = build_prompt(
        history, [m("system", "be brief"), m("user", "again")], [], max_model_len=2048, max_tokens=64, tokens=tokens
    )
    assert [p["role"] for p in prompt] == ["system", "user", "assistant", "user"]
    assert prompt[0]["content"] == "be brief" and prompt[-1]["content"] == "again"


def test_context_goes_into_the_last_user_message_only(tokens):
    cites = [Citation(source="/docs/zorvia.md", chunk_id="a:0", score=0.9, text="Zorvia's capital is Quenlar.")]
    messages = [m("user", "first"), m("assistant", "ok"), m("user", "capital?")]
    prompt = build_prompt([], messages, cites, max_model_len=2048, max_tokens=64, tokens=tokens)
    assert prompt[0]["content"] == "first"
    last = prompt[-1]["content"]
    assert "Zorvia's capital is Quenlar." in last and "/docs/zorvia.md" in last and last.endswith("Question: capital?")


def test_developer_role_is_sent_as_system(tokens):
    prompt = build_prompt(
        [], [m("developer", "rules"), m("user", "x")], [], max_model_len=2048, max_tokens=64, tokens=tokens
    )
    assert prompt[0] == {"role": "system", "content": "rules"}


def test_history_is_trimmed_oldest_first_to_exactly_what_fits_the_window(tokens):
    history = [m("user" if i % 2 == 0 else "assistant", f"message {i} " + "one two three " * 20) for i in range(20)]
    prompt = build_prompt(history, [m("user", "now")], [], max_model_len=512, max_tokens=256, tokens=tokens)
    kept = prompt[:-1]
    assert 0 < len(kept) < 20
    assert kept[-1]["content"].startswith("message 19")  # newest kept
    assert kept[0]["role"] == "user"  # never starts on an assistant message
    assert tokens.count_messages(prompt) <= 512 - 256  # fits, counted in the model's own tokens
    # ... and is the most that fits: one more pair of the dropped history would not.
    dropped = history[: 20 - len(kept)]
    wider = [{"role": x.role, "content": x.content} for x in dropped[-2:]] + prompt
    assert tokens.count_messages(wider) > 512 - 256


def test_a_turn_that_does_not_fit_alone_is_sent_without_history(tokens):
    history = [m("user", "a"), m("assistant", "b")]
    prompt = build_prompt(
        history, [m("user", "one two three " * 100)], [], max_model_len=128, max_tokens=64, tokens=tokens
    )
    assert [p["role"] for p in prompt] == ["user"]  # the engine answers with its context-length error


def test_retrieval_query_is_the_last_user_message():
    assert retrieval_query([m("user", "one"), m("assistant", "x"), m("user", "two")]) == "two"
    assert retrieval_query([m("system", "s")]) is None
