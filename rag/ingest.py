"""Idempotent ingestion: the same file twice leaves no duplicates; a changed file replaces its old chunks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from core.models import IngestDocument, IngestResult
from rag.chunking import chunk_text
from rag.embedder import Embedder
from rag.store import ChunkStore, content_hash

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst", ".text"}


def iter_text_files(paths: list[Path]) -> Iterator[Path]:
    """Files named directly, and text/markdown files found under named folders (sorted, recursive)."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        elif path.is_file():
            yield path
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")


def read_document(path: Path) -> IngestDocument:
    """The source id is the resolved path, so ingesting from another cwd still finds the same document."""
    return IngestDocument(source=str(path.resolve()), text=path.read_text(encoding="utf-8", errors="replace"))


def ingest_document(
    store: ChunkStore,
    embedder: Embedder,
    collection: str,
    document: IngestDocument,
    chunk_chars: int,
    overlap_chars: int,
) -> IngestResult:
    doc_hash = content_hash(document.text)
    stored = store.document_hash(collection, document.source)
    if stored == doc_hash:
        return IngestResult(source=document.source, status="unchanged", chunks=0)
    chunks = chunk_text(document.text, chunk_chars, overlap_chars)
    if not chunks:  # an emptied file: its old chunks must not keep answering
        if stored is not None:
            store.delete_document(collection, document.source)
        return IngestResult(source=document.source, status="empty", chunks=0)
    store.replace_document(collection, document.source, doc_hash, chunks, embedder.embed(chunks))
    return IngestResult(source=document.source, status="added" if stored is None else "replaced", chunks=len(chunks))
