import itertools

import pytest

from rag.chunking import chunk_text


def test_short_text_is_one_chunk():
    assert chunk_text("Hello world.", size=100, overlap=10) == ["Hello world."]


def test_empty_text_has_no_chunks():
    assert chunk_text("  \n\n ", size=100, overlap=10) == []


def test_chunks_respect_size_and_cover_all_text():
    paragraphs = [f"Paragraph {i}. " + "Some words here. " * 20 for i in range(10)]
    text = "\n\n".join(paragraphs)
    chunks = chunk_text(text, size=400, overlap=50)
    assert len(chunks) > 5
    assert all(len(c) <= 400 + 50 for c in chunks)
    for i in range(10):
        assert any(f"Paragraph {i}." in c for c in chunks)


def test_neighbouring_chunks_overlap():
    text = " ".join(f"word{i}" for i in range(400))
    chunks = chunk_text(text, size=200, overlap=40)
    for left, right in itertools.pairwise(chunks):
        assert right.split()[0] in left.split()


def test_paragraph_boundaries_are_preferred():
    text = "A" * 150 + "\n\n" + "B" * 150
    chunks = chunk_text(text, size=200, overlap=0)
    assert chunks == ["A" * 150, "B" * 150]


def test_a_word_longer_than_the_chunk_is_still_split():
    chunks = chunk_text("x" * 1000, size=300, overlap=0)
    assert "".join(chunks) == "x" * 1000


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        chunk_text("abc", size=100, overlap=100)
