"""The OpenAI Files and Batch API routes (HTTP only; the logic is in deployments/batch_jobs.py and state/).

Every file and batch belongs to the API key that made it; another key gets 404 for it, as if it did not
exist. The master key sees everything.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from core.errors import InvalidRequest, NotFound
from deployments.batch_jobs import ENDPOINT, intake
from deployments.gateway import Principal
from deployments.ingress_state import IngressState, ingress_state
from state.batches import BatchStore
from state.files import PURPOSES, FileStore

router = APIRouter()
T = TypeVar("T")
State = Annotated[IngressState, Depends(ingress_state)]


class NewBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_file_id: str = Field(..., min_length=1, max_length=200)
    endpoint: str = ENDPOINT
    completion_window: str = "24h"
    metadata: dict[str, str] | None = Field(None, max_length=16)


def _stores(request: Request) -> tuple[FileStore, BatchStore, Principal]:
    ingress: IngressState = ingress_state(request)
    return ingress.files, ingress.batches, request.state.principal


def _found(value: T | None, kind: str, ident: str) -> T:
    """What a store found for the caller (anything for the master key), else 404: another key's file or batch
    looks like none at all."""
    if value is None:
        raise NotFound(f"no {kind} {ident!r}", param=f"{kind}_id")
    return value


async def _own_batch(request: Request, batch_id: str) -> dict[str, Any]:
    _, batches, principal = _stores(request)
    return _found(await batches.get(principal.kid, batch_id, principal.admin), "batch", batch_id)


@router.post("/v1/files")
async def create_file(
    request: Request, file: Annotated[UploadFile, File()], purpose: Annotated[str, Form()]
) -> dict[str, Any]:
    """Upload a file (multipart: `file`, `purpose`). Batch input: JSONL, one request per line."""
    files, _, principal = _stores(request)
    if purpose not in ("batch", "user_data"):
        raise InvalidRequest(f"purpose must be one of 'batch', 'user_data', not {purpose!r}", param="purpose")
    content = await file.read()
    if not content:
        raise InvalidRequest("the file is empty", param="file")
    return await files.create(principal.kid, file.filename or "upload.jsonl", purpose, content)


@router.get("/v1/files")
async def list_files(
    request: Request,
    purpose: Annotated[Literal[PURPOSES] | None, Query()] = None,  # type: ignore[valid-type]
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> dict[str, Any]:
    files, _, principal = _stores(request)
    data = await files.list(principal.kid, purpose, limit)
    return {"object": "list", "data": data, "has_more": False}


@router.get("/v1/files/{file_id}")
async def retrieve_file(request: Request, file_id: str) -> dict[str, Any]:
    files, _, principal = _stores(request)
    return _found(await files.get(principal.kid, file_id, principal.admin), "file", file_id)


@router.get("/v1/files/{file_id}/content")
async def file_content(request: Request, file_id: str) -> Response:
    files, _, principal = _stores(request)
    content = _found(await files.content(principal.kid, file_id, principal.admin), "file", file_id)
    return Response(content, media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}")
async def delete_file(request: Request, file_id: str) -> dict[str, Any]:
    files, _, principal = _stores(request)
    if not await files.delete(principal.kid, file_id, principal.admin):
        raise NotFound(f"no file {file_id!r}", param="file_id")
    return {"id": file_id, "object": "file", "deleted": True}


@router.post("/v1/batches")
async def create_batch(request: Request, body: NewBatch, ingress: State) -> dict[str, Any]:
    """Validate the input file's lines (malformed ones go to the error file) and queue the rest."""
    files, batches, principal = _stores(request)
    return await intake(
        batches,
        files,
        principal.kid,
        body.input_file_id,
        body.endpoint,
        body.completion_window,
        body.metadata,
        ingress.batch.max_lines,
    )


@router.get("/v1/batches")
async def list_batches(
    request: Request,
    after: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    _, batches, principal = _stores(request)
    data, has_more = await batches.list(principal.kid, after, limit)
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


@router.get("/v1/batches/{batch_id}")
async def retrieve_batch(request: Request, batch_id: str) -> dict[str, Any]:
    return await _own_batch(request, batch_id)


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(request: Request, batch_id: str) -> dict[str, Any]:
    """Stop the batch: requests not yet started are skipped; those running finish and are kept."""
    _, batches, principal = _stores(request)
    found = await _own_batch(request, batch_id)
    if not await batches.cancel(batch_id) and found["status"] not in ("cancelling", "cancelled"):
        raise InvalidRequest(f"batch {batch_id!r} is {found['status']} and cannot be cancelled", param="batch_id")
    return await batches.get(principal.kid, batch_id, principal.admin)


@router.get("/admin/batch-queue")
async def batch_queue(ingress: State) -> dict[str, Any]:
    """The queue's depth and the age of its oldest request, and what a worker replica is doing."""
    depth, oldest = await ingress.batches.stats()
    worker = ingress.batch_worker
    status = await worker.status.remote() if worker is not None else None
    return {"queue_depth": depth, "oldest_age_s": round(oldest, 3), "worker": status}
