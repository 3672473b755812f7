"""core/tokens.py: exact counts with the model's own tokenizer and chat template, the one documented estimate,
and the one max_tokens rule."""

import pytest

from core.errors import InvalidRequest
from core.setting_groups import LimitsSettings
from core.tokens import TokenCounter, estimate_prompt_tokens, estimate_tokens, resolve_max_tokens

HI = [{"role": "user", "content": "hello there, how are you?"}]


def test_a_chat_prompt_is_counted_as_the_template_renders_it(tokenizer_dir):
    from tokenizers import Tokenizer

    counter = TokenCounter.for_model(str(tokenizer_dir))
    raw = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    rendered = "<|im_start|>user\nhello there, how are you?<|im_end|>\n<|im_start|>assistant\n"
    assert counter.exact
    assert counter.count_messages(HI) == len(raw.encode(rendered, add_special_tokens=False).ids)
    assert counter.count_text("The capital of France is Paris.") == len(
        raw.encode("The capital of France is Paris.").ids
    )


def test_a_continuation_leaves_the_last_assistant_message_open(tokenizer_dir):
    counter = TokenCounter.for_model(str(tokenizer_dir))
    partial = [*HI, {"role": "assistant", "content": "I am"}]
    whole_turn = counter.count_messages([*HI]) + counter.count_text("I am")
    # no <|im_end|> after the partial answer, no new generation prompt
    assert counter.count_messages(partial) == whole_turn


def test_without_a_tokenizer_counts_fall_back_to_the_documented_estimate(tmp_path):
    counter = TokenCounter.for_model(str(tmp_path / "no-such-model"))
    assert not counter.exact
    assert counter.count_text("x" * 9) == estimate_tokens(9) == 3
    assert counter.count_messages(HI) == estimate_prompt_tokens(HI) == 7 + 4


def test_the_max_tokens_rule():
    limits = LimitsSettings(default_max_tokens=100, max_tokens_cap=200)
    assert resolve_max_tokens(None, limits) == 100
    assert resolve_max_tokens(200, limits) == 200
    with pytest.raises(InvalidRequest) as info:
        resolve_max_tokens(201, limits)
    assert info.value.param == "max_tokens" and "200" in info.value.message
