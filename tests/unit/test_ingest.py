"""Ingestion against a real on-disk Chroma and the real all-MiniLM-L6-v2 embedder."""

import pytest

from rag.embedder import EMBEDDING_DIM, Embedder
from rag.ingest import ingest_document, iter_text_files, read_document
from rag.store import ChunkStore, make_client

FACT = "The capital of the planet Zorvia is Quenlar, a city built on floating basalt."
FILLER = "\n\n".join(f"Section {i}. Gardening notes about tomatoes and irrigation schedules." for i in range(30))


@pytest.fixture(scope="module")
def embedder():
    return Embedder()


@pytest.fixture
def store(tmp_path):
    return ChunkStore(make_client(path=tmp_path / "chroma"))


def ingest(store, embedder, doc):
    return ingest_document(store, embedder, "facts", doc, chunk_chars=300, overlap_chars=50)


def test_embeddings_are_unit_vectors_of_384_dims(embedder):
    [v] = embedder.embed(["hello"])
    assert len(v) == EMBEDDING_DIM
    assert abs(sum(x * x for x in v) - 1.0) < 1e-3


def test_ingesting_twice_leaves_no_duplicates(tmp_path, store, embedder):
    path = tmp_path / "zorvia.md"
    path.write_text(f"# Zorvia\n\n{FACT}\n\n{FILLER}")
    first = ingest(store, embedder, read_document(path))
    assert first.status == "added" and first.chunks > 3
    count = store.count("facts")
    again = ingest(store, embedder, read_document(path))
    assert again.status == "unchanged"
    assert store.count("facts") == count


def test_a_changed_file_replaces_its_old_chunks(tmp_path, store, embedder):
    path = tmp_path / "doc.md"
    path.write_text(f"{FACT}\n\n{FILLER}")
    ingest(store, embedder, read_document(path))
    path.write_text("Zorvia's capital moved to Brellin in the year 3012.")
    result = ingest(store, embedder, read_document(path))
    assert result.status == "replaced" and result.chunks == 1
    assert store.count("facts") == 1
    [hit] = store.query("facts", embedder.embed(["capital of Zorvia"])[0], top_k=5)
    assert "Brellin" in hit.text and hit.source == str(path.resolve())


def test_an_emptied_file_leaves_nothing_behind(tmp_path, store, embedder):
    path = tmp_path / "doc.txt"
    path.write_text(FACT)
    ingest(store, embedder, read_document(path))
    path.write_text("")
    assert ingest(store, embedder, read_document(path)).status == "empty"
    assert store.count("facts") == 0


def test_the_fact_is_the_best_hit_for_its_question(tmp_path, store, embedder):
    path = tmp_path / "zorvia.md"
    path.write_text(f"{FILLER}\n\n{FACT}\n\n{FILLER}")
    ingest(store, embedder, read_document(path))
    hits = store.query("facts", embedder.embed(["What is the capital of Zorvia?"])[0], top_k=3)
    assert "Quenlar" in hits[0].text
    assert hits[0].score > hits[-1].score


def test_folders_are_searched_for_text_files(tmp_path):
    (tmp_path / "a.md").write_text("a")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("b")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    assert [p.name for p in iter_text_files([tmp_path])] == ["a.md", "b.txt"]
    with pytest.raises(FileNotFoundError):
        list(iter_text_files([tmp_path / "missing.md"]))
