"""Chunks in Chroma: on disk (PersistentClient) on one machine, a Chroma server (HttpClient) on a cluster.

An on-disk client keeps its vector index in memory: another process's writes are counted but not searched
until it reopens. So when the app runs, ingestion goes through the Retriever deployment that owns the client.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import chromadb
from chromadb.config import Settings as ChromaSettings
from chromadb.errors import NotFoundError

_COLLECTION_METADATA = {"hnsw:space": "cosine"}


@dataclass(frozen=True)
class Hit:
    chunk_id: str
    source: str
    text: str
    score: float  # cosine similarity, 1 = identical


def source_key(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_client(path: Path | None = None, url: str | None = None) -> chromadb.api.ClientAPI:
    settings = ChromaSettings(anonymized_telemetry=False)
    if url:
        parsed = urlparse(url)
        return chromadb.HttpClient(
            host=parsed.hostname or "127.0.0.1",
            port=parsed.port or (443 if parsed.scheme == "https" else 8000),
            ssl=parsed.scheme == "https",
            settings=settings,
        )
    if path is None:
        raise ValueError("either a path or a url is needed")
    path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(path), settings=settings)


class ChunkStore:
    def __init__(self, client: chromadb.api.ClientAPI):
        self._client = client

    def heartbeat(self) -> int:
        return self._client.heartbeat()

    def _collection(self, name: str, create: bool):
        """`name` is Chroma's own (rag/collections.py maps request names to it)."""
        if create:
            return self._client.get_or_create_collection(name, metadata=_COLLECTION_METADATA)
        try:
            return self._client.get_collection(name)
        except (NotFoundError, ValueError):
            return None

    def has_collection(self, name: str) -> bool:
        return self._collection(name, create=False) is not None

    def document_hash(self, collection: str, source: str) -> str | None:
        """Content hash of the stored version of `source`, or None when it is not stored."""
        col = self._collection(collection, create=False)
        if col is None:
            return None
        got = col.get(where={"source": source}, limit=1, include=["metadatas"])
        metadatas = got.get("metadatas") or []
        return str(metadatas[0]["doc_hash"]) if metadatas else None

    def replace_document(
        self, collection: str, source: str, doc_hash: str, chunks: list[str], embeddings: list[list[float]]
    ) -> None:
        """Store the chunks of one version of `source`, then drop its older versions.

        New ids embed the content hash, so the new version is written before the old one is deleted:
        a concurrent query sees one version or the other (briefly both), never none.
        """
        col = self._collection(collection, create=True)
        prefix = f"{source_key(source)}:{doc_hash[:12]}"
        ids = [f"{prefix}:{i}" for i in range(len(chunks))]
        metadatas = [{"source": source, "doc_hash": doc_hash, "chunk_index": i} for i in range(len(chunks))]
        step = max(1, self._client.get_max_batch_size())
        for lo in range(0, len(ids), step):
            hi = lo + step
            col.upsert(
                ids=ids[lo:hi],
                documents=chunks[lo:hi],
                embeddings=embeddings[lo:hi],
                metadatas=metadatas[lo:hi],
            )
        col.delete(where={"$and": [{"source": source}, {"doc_hash": {"$ne": doc_hash}}]})

    def delete_document(self, collection: str, source: str) -> None:
        col = self._collection(collection, create=False)
        if col is not None:
            col.delete(where={"source": source})

    def count(self, collection: str) -> int:
        col = self._collection(collection, create=False)
        return col.count() if col is not None else 0

    def query(self, collection: str, embedding: list[float], top_k: int) -> list[Hit]:
        col = self._collection(collection, create=False)
        if col is None:
            return []
        result = col.query(
            query_embeddings=[embedding], n_results=top_k, include=["documents", "metadatas", "distances"]
        )
        hits = []
        for chunk_id, text, meta, distance in zip(
            result["ids"][0],
            result["documents"][0],
            result["metadatas"][0],
            result["distances"][0],
            strict=True,
        ):
            hits.append(Hit(chunk_id=chunk_id, source=str(meta["source"]), text=text, score=1.0 - float(distance)))
        return hits

    def collections(self, prefix: str) -> dict[str, int]:
        """Chroma collections whose name starts with `prefix`, with their chunk counts."""
        names = [c if isinstance(c, str) else c.name for c in self._client.list_collections()]
        return {name: self.count(name) for name in sorted(names) if name.startswith(prefix)}

    def documents(self, collection: str) -> list[tuple[str, int, str]]:
        """(source, chunks, content hash) of every document stored in a collection, by source."""
        col = self._collection(collection, create=False)
        if col is None:
            return []
        found: dict[str, list] = {}
        for meta in col.get(include=["metadatas"]).get("metadatas") or []:
            entry = found.setdefault(str(meta["source"]), [0, str(meta["doc_hash"])])
            entry[0] += 1
        return [(source, chunks, doc_hash) for source, (chunks, doc_hash) in sorted(found.items())]

    def document_chunks(self, collection: str, source: str) -> list[tuple[str, int, str, str]]:
        """(chunk id, index, text, content hash) of one document's chunks, in order; [] when it is not stored."""
        col = self._collection(collection, create=False)
        if col is None:
            return []
        got = col.get(where={"source": source}, include=["documents", "metadatas"])
        rows = zip(got["ids"], got["documents"] or [], got["metadatas"] or [], strict=True)
        chunks = [(cid, int(meta["chunk_index"]), text, str(meta["doc_hash"])) for cid, text, meta in rows]
        return sorted(chunks, key=lambda c: c[1])

    def delete_collection(self, collection: str) -> bool:
        if self._collection(collection, create=False) is None:
            return False
        self._client.delete_collection(collection)
        return True
