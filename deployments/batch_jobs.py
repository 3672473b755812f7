"""Batch intake and finalisation, apart from HTTP and from the workers.

Intake reads the input file's JSONL, refuses malformed lines into the error file (the batch goes on with the
rest), and queues the valid requests. Finalisation turns the result lines into the output and error files
once every line has one result; it is idempotent (file ids derive from the batch id), so the janitor may
redo a finalisation whose worker died half-way.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Callable, Coroutine

from pydantic import ValidationError

from core.errors import InvalidRequest, NotFound
from core.models import ChatRequest
from state.batches import TERMINAL, BatchStore
from state.files import FileStore

ENDPOINT = "/v1/chat/completions"
_INTAKE_STEP = 500
_INTAKE_LEASE_S = 60.0  # an intake that has not moved its cursor for this long is resumed by the janitor
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
            if first["type"] == "extra_forbidden":
                problem = ("unknown_parameter", f"Unrecognized request argument supplied: body.{where}")
            else:  # the HTTP API's codes for the same faults (deployments/http_errors.py)
                code = "unsupported_parameter" if first["type"] == "unsupported_parameter" else "invalid_request"
                problem = (code, f"body.{where}: {first['msg']}")
    if problem:
        return error_record(custom_id, problem[0], problem[1], number)
    seen.add(custom_id)
    return custom_id, {**item["body"], "stream": False}


def window_seconds(window: str) -> int:
    match = _WINDOW.match(window)
    if not match or not 1 <= int(match.group(1)) <= 168:
        raise InvalidRequest("completion_window must be like '24h' (1h to 168h)", param="completion_window")
    return int(match.group(1)) * 3600


def parse_file(raw: bytes, endpoint: str, max_lines: int) -> tuple[tuple[str, str] | None, list[tuple[int, object]]]:
    """(problem with the whole file or None, [(line number, (custom_id, body) | error record)]). Pure and
    deterministic: intake runs it in a thread, and the janitor again when it resumes a cut-off intake."""
    try:
        lines = [(n, line) for n, line in enumerate(raw.decode("utf-8").splitlines(), 1) if line.strip()]
    except UnicodeDecodeError:
        return ("invalid_file", "the input file is not UTF-8 text"), []
    if not lines:
        return ("empty_file", "the input file has no request lines"), []
    if len(lines) > max_lines:
        return ("too_many_requests", f"the input file has {len(lines)} requests; at most {max_lines}"), []
    seen: set[str] = set()
    return None, [(number, parse_line(line, number, endpoint, seen)) for number, line in lines]


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
    queue_in_background: Callable[[Coroutine], object] | None = None,
) -> dict:
    """Create a batch from an uploaded file: its lines checked (in a thread: up to `max_lines` of them), then
    validating -> in_progress with the lines queued, or failed. With `queue_in_background`, the queueing goes on
    after this returns (the batch object is answered at once); cut off, the workers' janitor resumes it from
    its cursor."""
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
    problem, parsed = await asyncio.to_thread(parse_file, raw, endpoint, max_lines)
    if problem:
        errors = json.dumps([{"code": problem[0], "message": problem[1], "param": "input_file_id", "line": None}])
        await store.set_status(tenant, batch_id, "failed", errors=errors)
        return await store.get(tenant, batch_id)
    await store.set_total(tenant, batch_id, len(parsed))
    await store.start(tenant, batch_id)
    queueing = queue_lines(store, files, tenant, batch_id, parsed)
    if queue_in_background is None:
        await queueing
    else:
        queue_in_background(queueing)
    return await store.get(tenant, batch_id)


async def queue_lines(
    store: BatchStore, files: FileStore, tenant: str, batch_id: str, parsed: list[tuple[int, object]] | None = None
) -> None:
    """File the malformed lines and queue the rest, from the batch's intake cursor on, `_INTAKE_STEP` lines at a
    time (the cursor moves after each step; a step redone after a crash queues a line twice at most, and its
    result is still committed once). Then finish the batch if nothing is left to run."""
    fields = await store.fields(tenant, batch_id)
    if not fields:
        return
    if parsed is None:  # resumed by the janitor: parse the input file again (deterministic)
        raw = await files.content(tenant, fields["input_file_id"]) or b""
        _, parsed = await asyncio.to_thread(parse_file, raw, fields["endpoint"], 10**9)
    cursor, owner = int(fields.get("intake_cursor") or 0), fields["owner"]
    todo = [(n, p) for n, p in parsed if n > cursor]
    for start in range(0, len(todo), _INTAKE_STEP):
        step = todo[start : start + _INTAKE_STEP]
        for number, record in step:
            if isinstance(record, dict):
                await store.commit_rejected(tenant, batch_id, number, record)
        valid = [(n, cid, body) for n, p in step if not isinstance(p, dict) for cid, body in [p]]
        if valid:  # queued even when the batch was cancelled meanwhile: the workers skip and count them
            await store.enqueue(tenant, batch_id, owner, valid)
        progress = {"intake_cursor": str(step[-1][0]), "intake_until": repr(time.time() + _INTAKE_LEASE_S)}
        await store.update(tenant, batch_id, progress)
    await store.update(tenant, batch_id, {"intake_done": "1"})
    if not any(not isinstance(p, dict) for _, p in parsed):  # nothing to run: every line is in the error file
        await finalize(store, files, tenant, batch_id)


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
