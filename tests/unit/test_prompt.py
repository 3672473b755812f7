from deployments.prompt import CHARS_PER_TOKEN, build_prompt, retrieval_query, trim_history
from serve_app.models import ChatMessage, Citation


def m(role, content):
    return ChatMessage(role=role, content=content)


def test_history_goes_between_system_and_new_turn():
    history = [m("user", "hi"), m("assistant", "hello")]
    prompt = build_prompt(history, [m("system", "be brief"), m("user", "again")], [], max_model_len=2048, max_tokens=64)
    assert [p["role"] for p in prompt] == ["system", "user", "assistant", "user"]
    assert prompt[0]["content"] == "be brief" and prompt[-1]["content"] == "again"


def test_context_goes_into_the_last_user_message_only():
    cites = [Citation(source="/docs/zorvia.md", chunk_id="a:0", score=0.9, text="Zorvia's capital is Quenlar.")]
    prompt = build_prompt(
        [], [m("user", "first"), m("assistant", "ok"), m("user", "capital?")], cites, max_model_len=2048, max_tokens=64
    )
    assert prompt[0]["content"] == "first"
    last = prompt[-1]["content"]
    assert "Zorvia's capital is Quenlar." in last and "/docs/zorvia.md" in last and last.endswith("Question: capital?")


def test_developer_role_is_sent_as_system():
    prompt = build_prompt([], [m("developer", "rules"), m("user", "x")], [], max_model_len=2048, max_tokens=64)
    assert prompt[0] == {"role": "system", "content": "rules"}


def test_history_is_trimmed_oldest_first_to_fit_the_window():
    history = [m("user" if i % 2 == 0 else "assistant", f"message {i} " + "x" * 300) for i in range(20)]
    prompt = build_prompt(history, [m("user", "now")], [], max_model_len=512, max_tokens=256)
    kept = prompt[:-1]
    assert 0 < len(kept) < 20
    assert kept[-1]["content"].startswith("message 19")  # newest kept
    assert kept[0]["role"] == "user"  # never starts on an assistant message
    assert sum(len(p["content"]) for p in prompt) <= (512 - 256) * CHARS_PER_TOKEN


def test_trim_drops_everything_when_no_budget():
    assert trim_history([m("user", "a"), m("assistant", "b")], 0) == []


def test_retrieval_query_is_the_last_user_message():
    assert retrieval_query([m("user", "one"), m("assistant", "x"), m("user", "two")]) == "two"
    assert retrieval_query([m("system", "s")]) is None
