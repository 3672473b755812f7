"""The OpenAI Files and Batch API routes (HTTP only; the logic is in deployments/batch_jobs.py and state/).

Every file and batch belongs to the tenant of the key that made it; another tenant gets 404 for it, as if it did
not exist. Admin keys reach another tenant's with the X-LLMServe-Tenant header.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from core.errors import InvalidRequest, NotFound
from deployments.batch_jobs import ENDPOINT, intake
from deployments.gateway import Principal
from deployments.ingress_state import IngressState, ingress_state, principal
from state.files import PURPOSES

router = APIRouter()
T = TypeVar("T")
State = Annotated[IngressState, Depends(ingress_state)]
Caller = Annotated[Principal, Depends(principal)]


class NewBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_file_id: str = Field(..., min_length=1, max_length=200)
    endpoint: str = ENDPOINT
    completion_window: str = "24h"
    metadata: dict[str, str] | None = Field(None, max_length=16)


def _found(value: T | None, kind: str, ident: str) -> T:
    """What a store found in the caller's tenant, else 404: another tenant's file or batch looks like none."""
    if value is None:
        raise NotFound(f"no {kind} {ident!r}", param=f"{kind}_id")
    return value


@router.post("/v1/files")
async def create_file(
    ingress: State, who: Caller, file: Annotated[UploadFile, File()], purpose: Annotated[str, Form()]
) -> dict[str, Any]:
    """Upload a file (multipart: `file`, `purpose`). Batch input: JSONL, one request per line."""
    if purpose not in ("batch", "user_data"):
        raise InvalidRequest(f"purpose must be one of 'batch', 'user_data', not {purpose!r}", param="purpose")
    content = await file.read()
    if not content:
        raise InvalidRequest("the file is empty", param="file")
    return await ingress.files.create(who.tenant, who.kid, file.filename or "upload.jsonl", purpose, content)


@router.get("/v1/files")
async def list_files(
    ingress: State,
    who: Caller,
    purpose: Annotated[Literal[PURPOSES] | None, Query()] = None,  # type: ignore[valid-type]
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> dict[str, Any]:
    data = await ingress.files.list(who.tenant, purpose, limit)
    return {"object": "list", "data": data, "has_more": False}


@router.get("/v1/files/{file_id}")
async def retrieve_file(file_id: str, ingress: State, who: Caller) -> dict[str, Any]:
    return _found(await ingress.files.get(who.tenant, file_id), "file", file_id)


@router.get("/v1/files/{file_id}/content")
async def file_content(file_id: str, ingress: State, who: Caller) -> Response:
    content = _found(await ingress.files.content(who.tenant, file_id), "file", file_id)
    return Response(content, media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, ingress: State, who: Caller) -> dict[str, Any]:
    if not await ingress.files.delete(who.tenant, file_id):
        raise NotFound(f"no file {file_id!r}", param="file_id")
    return {"id": file_id, "object": "file", "deleted": True}


@router.post("/v1/batches")
async def create_batch(body: NewBatch, ingress: State, who: Caller) -> dict[str, Any]:
    """Validate the input file's lines (malformed ones go to the error file) and queue the rest."""
    return await intake(
        ingress.batches,
        ingress.files,
        who.tenant,
        who.kid,
        body.input_file_id,
        body.endpoint,
        body.completion_window,
        body.metadata,
        ingress.batch.max_lines,
        queue_in_background=ingress.background,
    )


@router.get("/v1/batches")
async def list_batches(
    ingress: State,
    who: Caller,
    after: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    data, has_more = await ingress.batches.list(who.tenant, after, limit)
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


@router.get("/v1/batches/{batch_id}")
async def retrieve_batch(batch_id: str, ingress: State, who: Caller) -> dict[str, Any]:
    return _found(await ingress.batches.get(who.tenant, batch_id), "batch", batch_id)


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, ingress: State, who: Caller) -> dict[str, Any]:
    """Stop the batch: requests not yet started are skipped; those running finish and are kept."""
    found = _found(await ingress.batches.get(who.tenant, batch_id), "batch", batch_id)
    if not await ingress.batches.cancel(who.tenant, batch_id) and found["status"] not in ("cancelling", "cancelled"):
        raise InvalidRequest(f"batch {batch_id!r} is {found['status']} and cannot be cancelled", param="batch_id")
    return _found(await ingress.batches.get(who.tenant, batch_id), "batch", batch_id)


@router.get("/admin/batch-queue")
async def batch_queue(ingress: State) -> dict[str, Any]:
    """The queue's depth and the age of its oldest request, and what a worker replica is doing."""
    depth, oldest = await ingress.batches.stats()
    worker = ingress.batch_worker
    status = await worker.status.remote() if worker is not None else None
    return {"queue_depth": depth, "oldest_age_s": round(oldest, 3), "worker": status}
