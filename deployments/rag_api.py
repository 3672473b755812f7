"""RAG collections and documents, per tenant (HTTP only; the Retriever does the work).

A tenant reads and writes its own collections. A shared collection (`shared.<name>`) is written only by admin
keys and read only by the tenants it is granted to (PUT /admin/rag/shared/{name}); to any other tenant it does
not exist (404). A tenant that may read one but tries to write it gets 403.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends
from redis.exceptions import RedisError

from core.errors import NotFound, PermissionDenied
from core.models import CollectionInfo, DocumentDetail, DocumentInfo, IngestRequest, IngestResponse
from core.names import SHARED_PREFIX, is_shared, validate_collection_name
from deployments.gateway import Principal
from deployments.ingress_state import IngressState, ingress_state, principal

logger = logging.getLogger("llmserve.rag")
router = APIRouter()
State = Annotated[IngressState, Depends(ingress_state)]
Caller = Annotated[Principal, Depends(principal)]


async def _collection(ingress: IngressState, who: Principal, collection: str, *, write: bool) -> str:
    """`collection` when the caller may read it (or write it): else 404, or 403 for writing a shared
    collection it may only read."""
    validate_collection_name(collection, param="collection")
    if not is_shared(collection) or who.admin:
        return collection
    if not await ingress.grants.may_read(who.tenant, collection[len(SHARED_PREFIX) :]):
        raise NotFound(f"RAG collection {collection!r} does not exist", param="collection")
    if write:
        raise PermissionDenied(f"shared collection {collection!r} is written by admin keys only", param="collection")
    return collection


@router.post("/v1/rag/documents", response_model=IngestResponse)
async def ingest(body: IngestRequest, ingress: State, who: Caller) -> IngestResponse:
    """Chunk, embed and upsert documents into a collection of the caller's tenant (what `llmserve ingest`
    calls while the app runs)."""
    if body.collection:
        await _collection(ingress, who, body.collection, write=True)
    ingested = await ingress.retriever.ingest.remote(body, who.tenant)
    await _invalidate(ingress, who, [d.source for d in body.documents])
    return ingested


@router.get("/v1/rag/collections")
async def collections(ingress: State, who: Caller) -> dict:
    """The tenant's collections, and the shared ones it may read."""
    shared = list(await ingress.grants.all()) if who.admin else await ingress.grants.readable(who.tenant)
    found: list[CollectionInfo] = await ingress.retriever.collections.remote(who.tenant, shared)
    return {"object": "list", "data": [c.model_dump() for c in found]}


@router.get("/v1/rag/collections/{collection}/documents")
async def documents(collection: str, ingress: State, who: Caller) -> dict:
    await _collection(ingress, who, collection, write=False)
    found: list[DocumentInfo] = await ingress.retriever.documents.remote(who.tenant, collection)
    return {"object": "list", "collection": collection, "data": [d.model_dump() for d in found]}


@router.delete("/v1/rag/collections/{collection}/documents")
async def delete_collection(collection: str, ingress: State, who: Caller) -> dict:
    """Delete the collection with every document in it."""
    await _collection(ingress, who, collection, write=True)
    cited: list[DocumentInfo] = await ingress.retriever.documents.remote(who.tenant, collection)
    await ingress.retriever.delete_collection.remote(who.tenant, collection)
    await _invalidate(ingress, who, [d.source for d in cited])
    return {"id": collection, "object": "rag.collection.deleted", "deleted": True}


@router.get("/v1/rag/collections/{collection}/documents/{source:path}", response_model=DocumentDetail)
async def document(collection: str, source: str, ingress: State, who: Caller) -> DocumentDetail:
    """One document's chunks, as retrieval sees them."""
    await _collection(ingress, who, collection, write=False)
    return await ingress.retriever.document.remote(who.tenant, collection, source)


@router.delete("/v1/rag/collections/{collection}/documents/{source:path}")
async def delete_document(collection: str, source: str, ingress: State, who: Caller) -> dict:
    await _collection(ingress, who, collection, write=True)
    await ingress.retriever.delete_document.remote(who.tenant, collection, source)
    await _invalidate(ingress, who, [source])
    return {"source": source, "collection": collection, "object": "rag.document.deleted", "deleted": True}


async def _invalidate(ingress: IngressState, who: Principal, sources: list[str]) -> None:
    """Cached answers that cited these documents go. Best effort: the cache key holds the chunks retrieval chose,
    so a changed or deleted document is a miss anyway; this frees what can no longer be hit."""
    if ingress.response_cache is None or not sources:
        return
    try:
        await ingress.response_cache.invalidate(who.tenant, sources)
    except RedisError as exc:
        logger.warning("cached answers citing %d document(s) were not dropped: %r", len(sources), exc)
