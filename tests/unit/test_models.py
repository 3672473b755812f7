import pytest
from pydantic import ValidationError

from core.models import ChatRequest

BASE = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_rag_false_turns_retrieval_off():
    assert ChatRequest(**BASE, rag=False).rag.enabled is False
    assert ChatRequest(**BASE, rag={"collection": "docs", "top_k": 2}).rag.top_k == 2


def test_text_content_parts_are_flattened():
    req = ChatRequest(
        model="m",
        messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
    )
    assert req.messages[0].content == "ab"


def test_max_completion_tokens_is_accepted_as_max_tokens():
    assert ChatRequest(**BASE, max_completion_tokens=12).max_tokens == 12


@pytest.mark.parametrize(
    "extra",
    [
        {"conversation_id": "bad id with spaces"},
        {"conversation_id": "x" * 200},
        {"temperature": 3},
        {"n": 9},
        {"top_logprobs": 2},
        {"tool_choice": "required"},
        {"tools": [{"type": "function", "function": {"name": "a b"}}]},
        {
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": {"name": "g"}},
        },
        {"response_format": {"type": "json_schema"}},
        {"logit_bias": {"abc": 1}},
        {"messages": [{"role": "tool", "content": "sunny"}]},
        {
            "messages": [
                {
                    "role": "user",
                    "content": "x",
                    "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}],
                }
            ]
        },
        {"stop": ["a", "b", "c", "d", "e"]},
        {"rag": {"top_k": 0}},
        {"rag": {"unknown": 1}},
        {"messages": []},
        {"messages": [{"role": "robot", "content": "x"}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
    ],
)
def test_invalid_requests_are_refused(extra):
    with pytest.raises(ValidationError):
        ChatRequest(**{**BASE, **extra})
