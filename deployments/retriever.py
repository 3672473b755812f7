"""Retriever deployment: embeds queries and searches Chroma; also the ingestion path while the app runs
(an on-disk Chroma index is only searchable by the process that wrote it).

Queries that arrive together are embedded in one forward pass (`serve.batch`, no wait: a batch is whatever
queued while the previous one ran), on `rag.torch_threads` threads. Concurrent single-query passes,
each with its own spinning OpenMP threads, took the engine's core on small machines.
"""

from __future__ import annotations

import asyncio

from ray import serve

from core.errors import NotFound
from core.models import Citation, IngestRequest, IngestResponse
from core.setting_groups import RagSettings
from rag.embedder import Embedder
from rag.ingest import ingest_document
from rag.store import ChunkStore, make_client, validate_collection_name


@serve.deployment(name="Retriever")
class Retriever:
    def __init__(self, rag: RagSettings):
        self._rag = rag
        self._embedder = Embedder(torch_threads=rag.torch_threads)
        self._embed_queries.set_max_batch_size(rag.batch_size)
        client = make_client(path=None if rag.chroma_url else rag.chroma_path, url=rag.chroma_url)
        self._store = ChunkStore(client)
        self._write_lock = asyncio.Lock()

    async def retrieve(self, query: str, collection: str | None, top_k: int, min_score: float) -> list[Citation]:
        """Chunks at least `min_score` similar to `query`. A collection named explicitly must exist;
        the default one may not yet (a fresh install has ingested nothing)."""
        name = validate_collection_name(collection or self._rag.collection)
        if collection and not await asyncio.to_thread(self._store.has_collection, name):
            raise NotFound(f"RAG collection {name!r} does not exist; ingest documents first", param="rag.collection")
        vector = await self._embed_queries(query)
        hits = await asyncio.to_thread(self._store.query, name, vector, top_k)
        return [
            Citation(source=h.source, chunk_id=h.chunk_id, score=round(h.score, 4), text=h.text)
            for h in hits
            if h.score >= min_score
        ]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def _embed_queries(self, queries: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._embedder.embed, queries)

    async def ingest(self, request: IngestRequest) -> IngestResponse:
        name = validate_collection_name(request.collection or self._rag.collection)
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
                        self._rag.chunk_chars,
                        self._rag.chunk_overlap_chars,
                    )
                )
        return IngestResponse(collection=name, data=results)

    async def health(self) -> None:
        await asyncio.to_thread(self._store.heartbeat)
