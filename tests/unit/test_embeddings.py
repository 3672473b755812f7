"""The embeddings request as OpenAI defines it, the base64 encoding the openai SDK decodes, and inputs longer
than the model reads refused by index instead of cut short."""

import base64

import numpy as np
import pytest
from pydantic import ValidationError

from core.embeddings import EmbeddingRequest, encode_vector
from rag.embedder import Embedder, InputTooLong


@pytest.mark.parametrize(
    ("given", "inputs"),
    [("hi", ["hi"]), (["a", "b"], ["a", "b"]), ([1, 2, 3], [[1, 2, 3]]), ([[1], [2, 3]], [[1], [2, 3]])],
)
def test_every_input_form_is_one_list_of_inputs(given, inputs):
    assert EmbeddingRequest(model="m", input=given).inputs() == inputs


@pytest.mark.parametrize("given", ["", [], [[]], ["a", 1], ["x"] * 2049])
def test_empty_mixed_or_too_many_inputs_are_refused(given):
    with pytest.raises(ValidationError):
        EmbeddingRequest(model="m", input=given)


def test_base64_is_little_endian_float32_as_the_sdk_reads_it():
    vector = [0.25, -1.5, 3.0]
    decoded = np.frombuffer(base64.b64decode(encode_vector(vector, "base64")), dtype="<f4")
    assert decoded.tolist() == vector and encode_vector(vector, "float") == vector


@pytest.fixture(scope="module")
def embedder():
    return Embedder()


def test_tokens_are_counted_as_the_model_reads_them_and_token_ids_embed_like_their_text(embedder):
    text = "The cat sat on the mat."
    ids = embedder._model.tokenizer(text, add_special_tokens=False)["input_ids"]
    (by_text, by_ids), tokens = embedder.embed_inputs([text, ids])
    assert tokens == 2 * (len(ids) + 2)
    assert np.allclose(by_text, by_ids, atol=1e-5)


def test_an_input_longer_than_the_model_reads_is_named_not_truncated(embedder):
    with pytest.raises(InputTooLong) as refused:
        embedder.embed_inputs(["fine", "word " * 300])
    assert refused.value.index == 1
