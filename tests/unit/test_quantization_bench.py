"""The side-by-side quantization benchmark's own arithmetic: weight sizes from safetensors headers, answer checks."""

import torch
from safetensors.torch import save_file

from benchmarks.quantization import agreement, read_questions, right_answers, weight_bytes


def test_weights_in_memory_take_the_served_dtype_for_floats_and_keep_packed_integers(tmp_path):
    save_file(
        {
            "embed.weight": torch.zeros(10, 4, dtype=torch.float32),  # 40 floats
            "q.weight_packed": torch.zeros(4, 2, dtype=torch.int32),  # 8 int32 = 64 int4
            "q.weight_scale": torch.zeros(4, 1, dtype=torch.float32),
        },
        str(tmp_path / "model.safetensors"),
    )
    as_bf16 = weight_bytes(tmp_path, "bfloat16")
    assert as_bf16["memory_bytes"] == 40 * 2 + 8 * 4 + 4 * 2
    assert weight_bytes(tmp_path, "float32")["memory_bytes"] == 40 * 4 + 8 * 4 + 4 * 4
    assert as_bf16["disk_bytes"] == (tmp_path / "model.safetensors").stat().st_size


def test_answers_are_checked_against_the_expected_word_and_compared_word_by_word():
    assert right_answers(["It is Paris.", "Rome, of course", "No idea"], [["Paris"], ["rome"], []]) == {
        "right": 2,
        "of": 2,
    }
    same = agreement(["a b c d", "x y"], ["a b c d", "x z"])
    assert same["greedy_same"] == 0.5
    assert same["greedy_prefix_share"] == (1 + 0.5) / 2


def test_the_shipped_questions_mostly_have_a_known_answer():
    questions = read_questions()
    assert len(questions) >= 16
    assert sum(bool(words) for words in questions.values()) >= 12
