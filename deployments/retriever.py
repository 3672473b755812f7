"""Retriever deployment: embeds queries and searches Chroma; also the ingestion path while the app runs
(an on-disk Chroma index is only searchable by the process that wrote it)."""

from __future__ import annotations

import asyncio

from ray import serve

from rag.embedder import Embedder
from rag.ingest import ingest_document
from rag.store import ChunkStore, make_client, validate_collection_name
from serve_app.errors import NotFound
from serve_app.models import Citation, IngestRequest, IngestResponse
from serve_app.settings import Settings


@serve.deployment(name="Retriever")
class Retriever:
    def __init__(self, settings: Settings):
        self._settings = settings
        self._embedder = Embedder()
        client = make_client(path=None if settings.chroma_url else settings.chroma_path, url=settings.chroma_url)
        self._store = ChunkStore(client)
        self._write_lock = asyncio.Lock()

    async def retrieve(self, query: str, collection: str | None, top_k: int, min_score: float) -> list[Citation]:
        """Chunks at least `min_score` similar to `query`. A collection named explicitly must exist;
        the default one may not yet (a fresh install has ingested nothing)."""
        name = validate_collection_name(collection or self._settings.rag_collection)
        if collection and not await asyncio.to_thread(self._store.has_collection, name):
            raise NotFound(f"RAG collection {name!r} does not exist; ingest documents first", param="rag.collection")
        hits = await asyncio.to_thread(self._search, query, name, top_k)
        return [
            Citation(source=h.source, chunk_id=h.chunk_id, score=round(h.score, 4), text=h.text)
            for h in hits
            if h.score >= min_score
        ]

    def _search(self, query: str, collection: str, top_k: int):
        [vector] = self._embedder.embed([query])
        return self._store.query(collection, vector, top_k)

    async def ingest(self, request: IngestRequest) -> IngestResponse:
        name = validate_collection_name(request.collection or self._settings.rag_collection)
        results = []
        async with self._write_lock:
            for document in request.documents:
                results.append(
                    await asyncio.to_thread(
                        ingest_document,
                        self._store,
                        self._embedder,
                        name,
                        document,
                        self._settings.chunk_chars,
                        self._settings.chunk_overlap_chars,
                    )
                )
        return IngestResponse(collection=name, data=results)

    async def health(self) -> None:
        await asyncio.to_thread(self._store.heartbeat)
