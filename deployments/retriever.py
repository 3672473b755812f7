"""Retriever deployment: embeds queries and searches Chroma; also ingestion and the document routes while the app
runs (an on-disk Chroma index is only searchable by the process that wrote it).

Every method acts for a tenant, on the collections as that tenant names them (rag/collections.py): a tenant's
"default" is its own, never another's. Whether a tenant may read or write a shared collection is decided by
the caller before (the ingress and the orchestrator hold the grants).

Queries that arrive together are embedded in one forward pass (`serve.batch`, no wait: a batch is whatever
queued while the previous one ran), on `rag.torch_threads` threads. Concurrent single-query passes,
each with its own spinning OpenMP threads, took the engine's core on small machines.
"""

from __future__ import annotations

import asyncio

from ray import serve

from core.errors import InvalidRequest, NotFound
from core.models import (
    Citation,
    CollectionInfo,
    DocumentChunk,
    DocumentDetail,
    DocumentInfo,
    IngestRequest,
    IngestResponse,
)
from core.names import SHARED_PREFIX
from core.setting_groups import MetricsSettings, RagSettings
from observability import tracing
from rag.collections import physical_name, public_name, tenant_prefix
from rag.embedder import BadTokens, Embedder, InputTooLong
from rag.ingest import ingest_document
from rag.store import ChunkStore, make_client


@serve.deployment(name="Retriever")
class Retriever:
    def __init__(self, rag: RagSettings, metrics: MetricsSettings | None = None):
        tracing.setup_tracing("retriever", metrics.otlp_endpoint if metrics else None)
        self._rag = rag
        self._embedder = Embedder(torch_threads=rag.torch_threads)
        self._embed_queries.set_max_batch_size(rag.batch_size)
        client = make_client(path=None if rag.chroma_url else rag.chroma_path, url=rag.chroma_url)
        self._store = ChunkStore(client)
        self._write_lock = asyncio.Lock()

    async def retrieve(
        self,
        query: str,
        tenant: str,
        collection: str | None,
        top_k: int,
        min_score: float,
        traceparent: str | None = None,
    ) -> list[Citation]:
        """Chunks at least `min_score` similar to `query`. A collection named explicitly must exist;
        the default one may not yet (a fresh tenant has ingested nothing)."""
        span = tracing.context_of(traceparent)
        with tracing.span("retriever.retrieve", span, kind=tracing.SpanKind.SERVER, tenant=tenant, top_k=top_k):
            return await self._retrieve(query, tenant, collection, top_k, min_score)

    async def _retrieve(
        self, query: str, tenant: str, collection: str | None, top_k: int, min_score: float
    ) -> list[Citation]:
        name = collection or self._rag.collection
        physical = physical_name(tenant, name)
        if collection:
            await self._existing(physical, name, param="rag.collection")
        with tracing.span("embed"):
            vector = await self._embed_queries(query)
        with tracing.span("chroma.query", collection=physical):
            hits = await asyncio.to_thread(self._store.query, physical, vector, top_k)
        return [
            Citation(source=h.source, chunk_id=h.chunk_id, score=round(h.score, 4), text=h.text)
            for h in hits
            if h.score >= min_score
        ]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def _embed_queries(self, queries: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._embedder.embed, queries)

    async def embed(self, inputs: list[str] | list[list[int]]) -> tuple[list[list[float]], int]:
        """`/v1/embeddings`: the vectors of texts or token lists, and the tokens the model was fed."""
        try:
            return await asyncio.to_thread(self._embedder.embed_inputs, inputs)
        except (InputTooLong, BadTokens) as exc:
            raise InvalidRequest(str(exc), param=f"input[{exc.index}]") from exc

    async def ingest(self, request: IngestRequest, tenant: str) -> IngestResponse:
        name = request.collection or self._rag.collection
        physical = physical_name(tenant, name)
        results = []
        async with self._write_lock:
            for document in request.documents:
                results.append(
                    await asyncio.to_thread(
                        ingest_document,
                        self._store,
                        self._embedder,
                        physical,
                        document,
                        self._rag.chunk_chars,
                        self._rag.chunk_overlap_chars,
                    )
                )
        return IngestResponse(collection=name, data=results)

    # --- the document routes ------------------------------------------------------------------------
    async def collections(self, tenant: str, shared: list[str]) -> list[CollectionInfo]:
        """The tenant's own collections, then the shared ones it may read (`shared`, by name)."""
        own = await asyncio.to_thread(self._store.collections, tenant_prefix(tenant))
        found = [CollectionInfo(id=public_name(p), chunks=n) for p, n in own.items()]
        for name in shared:
            physical = physical_name(tenant, SHARED_PREFIX + name)
            if await asyncio.to_thread(self._store.has_collection, physical):
                chunks = await asyncio.to_thread(self._store.count, physical)
                found.append(CollectionInfo(id=SHARED_PREFIX + name, shared=True, chunks=chunks))
        return found

    async def documents(self, tenant: str, collection: str) -> list[DocumentInfo]:
        physical = await self._existing(physical_name(tenant, collection), collection)
        rows = await asyncio.to_thread(self._store.documents, physical)
        return [DocumentInfo(source=s, chunks=n, content_sha256=h) for s, n, h in rows]

    async def document(self, tenant: str, collection: str, source: str) -> DocumentDetail:
        physical = await self._existing(physical_name(tenant, collection), collection)
        chunks = await asyncio.to_thread(self._store.document_chunks, physical, source)
        if not chunks:
            raise NotFound(f"no document {source!r} in collection {collection!r}", param="source")
        return DocumentDetail(
            source=source,
            collection=collection,
            chunks=len(chunks),
            content_sha256=chunks[0][3],
            data=[DocumentChunk(chunk_id=c, index=i, text=t) for c, i, t, _ in chunks],
        )

    async def delete_document(self, tenant: str, collection: str, source: str) -> None:
        await self.document(tenant, collection, source)  # 404 unless it is there
        async with self._write_lock:
            await asyncio.to_thread(self._store.delete_document, physical_name(tenant, collection), source)

    async def delete_collection(self, tenant: str, collection: str) -> None:
        physical = await self._existing(physical_name(tenant, collection), collection)
        async with self._write_lock:
            await asyncio.to_thread(self._store.delete_collection, physical)

    async def delete_tenant(self, tenant: str) -> int:
        """Delete every collection of a tenant; returns how many."""
        async with self._write_lock:
            names = await asyncio.to_thread(self._store.collections, tenant_prefix(tenant))
            for physical in names:
                await asyncio.to_thread(self._store.delete_collection, physical)
        return len(names)

    async def health(self) -> None:
        await asyncio.to_thread(self._store.heartbeat)

    async def _existing(self, physical: str, name: str, param: str = "collection") -> str:
        if not await asyncio.to_thread(self._store.has_collection, physical):
            raise NotFound(f"RAG collection {name!r} does not exist; ingest documents first", param=param)
        return physical
