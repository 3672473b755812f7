"""Batch intake and finalisation, apart from HTTP and from the workers.

Intake reads the input file's JSONL, refuses malformed lines into the error file (the batch goes on with the
rest), and queues the valid requests. Finalisation turns the result lines into the output and error files
once every line has one result; it is idempotent (file ids derive from the batch id), so the janitor may
redo a finalisation whose worker died half-way.
"""

from __future__ import annotations

import json
import re
import time
import uuid

from pydantic import ValidationError

from core.errors import InvalidRequest, NotFound
from core.models import ChatRequest
from state.batches import TERMINAL, BatchStore
from state.files import FileStore

ENDPOINT = "/v1/chat/completions"
_WINDOW = re.compile(r"^(\d{1,4})h$")


def error_record(custom_id: str | None, code: str, message: str, line: int | None = None) -> dict:
    """An error-file line for a request that got no response (OpenAI's shape, plus the input line number)."""
    error = {"code": code, "message": message}
    if line is not None:
        error["line"] = line
    return {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": custom_id, "response": None, "error": error}


def response_record(custom_id: str, request_id: str, status: int, body: dict) -> dict:
    """An output- or error-file line for a request that got a response."""
    response = {"status_code": status, "request_id": request_id, "body": body}
    return {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": custom_id, "response": response, "error": None}


def parse_line(raw: str, number: int, endpoint: str, seen: set[str]) -> tuple[str, dict] | dict:
    """(custom_id, body) for a valid request line, else its error record."""
    try:
        item = json.loads(raw)
    except json.JSONDecodeError as exc:
        return error_record(None, "invalid_json", f"line {number} is not JSON: {exc.msg}", number)
    if not isinstance(item, dict):
        return error_record(None, "invalid_request", f"line {number} is not a JSON object", number)
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return error_record(None, "missing_custom_id", f"line {number} has no custom_id string", number)
    problem = None
    if custom_id in seen:
        problem = ("duplicate_custom_id", f"custom_id {custom_id!r} is used by an earlier line")
    elif item.get("method") != "POST":
        problem = ("invalid_method", "method must be 'POST'")
    elif item.get("url") != endpoint:
        problem = ("invalid_url", f"url must be the batch's endpoint {endpoint!r}")
    elif not isinstance(item.get("body"), dict):
        problem = ("invalid_request", "body must be a JSON object")
    elif item["body"].get("conversation_id") is not None:
        problem = ("invalid_request", "conversation_id is not supported in batches (each request stands alone)")
    else:
        try:
            ChatRequest.model_validate({**item["body"], "stream": False})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            problem = ("invalid_request", f"body.{where}: {first['msg']}")
    if problem:
        return error_record(custom_id, problem[0], problem[1], number)
    seen.add(custom_id)
    return custom_id, {**item["body"], "stream": False}


def window_seconds(window: str) -> int:
    match = _WINDOW.match(window)
    if not match or not 1 <= int(match.group(1)) <= 168:
        raise InvalidRequest("completion_window must be like '24h' (1h to 168h)", param="completion_window")
    return int(match.group(1)) * 3600


async def intake(
    store: BatchStore,
    files: FileStore,
    tenant: str,
    owner: str,
    input_file_id: str,
    endpoint: str,
    completion_window: str,
    metadata: dict | None,
    max_lines: int,
) -> dict:
    """Create a batch from an uploaded file: validating -> in_progress (requests queued), or failed."""
    if endpoint != ENDPOINT:
        raise InvalidRequest(f"endpoint must be {ENDPOINT!r}; other endpoints are not batched", param="endpoint")
    window_s = window_seconds(completion_window)
    info = await files.get(tenant, input_file_id)
    if info is None:
        raise NotFound(f"no file {input_file_id!r}", param="input_file_id")
    if info["purpose"] != "batch":
        raise InvalidRequest(f"file {input_file_id!r} has purpose {info['purpose']!r}, not 'batch'", "input_file_id")
    batch_id = await store.create(tenant, owner, input_file_id, endpoint, window_s, completion_window, metadata)
    raw = await files.content(tenant, input_file_id) or b""
    try:
        lines = [(n, line) for n, line in enumerate(raw.decode("utf-8").splitlines(), 1) if line.strip()]
    except UnicodeDecodeError:
        lines = []
        problem = ("invalid_file", "the input file is not UTF-8 text")
    else:
        problem = None
        if not lines:
            problem = ("empty_file", "the input file has no request lines")
        elif len(lines) > max_lines:
            problem = ("too_many_requests", f"the input file has {len(lines)} requests; at most {max_lines}")
    if problem:
        errors = json.dumps([{"code": problem[0], "message": problem[1], "param": "input_file_id", "line": None}])
        await store.set_status(tenant, batch_id, "failed", errors=errors)
        return await store.get(tenant, batch_id)

    seen: set[str] = set()
    valid, rejected = [], []
    for number, line in lines:
        parsed = parse_line(line, number, endpoint, seen)
        (rejected if isinstance(parsed, dict) else valid).append((number, parsed))
    await store.set_total(tenant, batch_id, len(lines))
    for number, record in rejected:
        await store.commit_rejected(tenant, batch_id, number, record)
    if await store.start(tenant, batch_id):
        await store.enqueue(tenant, batch_id, owner, [(n, cid, body) for n, (cid, body) in valid])
    if not valid or (await store.fields(tenant, batch_id))["status"] == "cancelling":
        await finalize(store, files, tenant, batch_id)
    return await store.get(tenant, batch_id)


async def finalize(store: BatchStore, files: FileStore, tenant: str, batch_id: str) -> None:
    """Write the output and error files and the batch's final status. Safe to run twice."""
    fields = await store.fields(tenant, batch_id)
    if not fields or fields["status"] in TERMINAL:
        return
    owner = fields["owner"]
    updates: dict[str, str] = {}
    for which, field, suffix in (("out", "output_file_id", "output"), ("err", "error_file_id", "error")):
        lines = await store.result_lines(tenant, batch_id, which)
        if lines:
            content = ("\n".join(lines) + "\n").encode()
            name = f"{batch_id}_{suffix}.jsonl"
            file_id = f"file-{batch_id}-{suffix}"
            made = await files.create(tenant, owner, name, "batch_output", content, file_id=file_id)
            updates[field] = made["id"]
    now = repr(time.time())
    if fields["status"] == "cancelling":
        final = "cancelled"
    elif int(fields.get("skipped", 0)) > 0:
        final = "expired"  # the window ran out with requests left
    else:
        final = "completed"
    updates |= {"status": final, f"{final}_at": now}
    if not fields.get("finalizing_at"):
        updates["finalizing_at"] = now
    await store.update(tenant, batch_id, updates)
