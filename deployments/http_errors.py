"""The one error converter: our typed exceptions -> (status, OpenAI error body); its streaming twin; and the
FastAPI handlers that route every failure through it. Unknown exceptions are 500s with a request id."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.serve.exceptions import BackPressureError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from observability import prom
from serve_app.errors import LLMServeError, QuotaExceeded, ServiceUnavailable

logger = logging.getLogger("llmserve.ingress")

_STARLETTE_TYPES = {
    400: ("invalid_request_error", "invalid_body"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
}


def unwrap(exc: BaseException) -> BaseException:
    """Ray re-raises a remote exception as RayTaskError(<cls>), an instance of both classes whose
    original is in `.cause`: follow causes to our typed error if there is one."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        cause = getattr(seen, "cause", None)
        if isinstance(cause, BaseException):
            seen = cause
            continue
        if isinstance(seen, LLMServeError):
            return seen
        seen = seen.__cause__
    return exc


def typed(exc: BaseException) -> BaseException:
    """Our typed error for `exc` where there is one (unwrapping Ray, converting Serve's back-pressure)."""
    exc = unwrap(exc)
    if isinstance(exc, BackPressureError):  # a deployment's queue (max_queued_requests) is full
        return ServiceUnavailable("the server is at capacity; retry shortly", code="overloaded", retry_after_s=1)
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):  # Redis down, or no free connection in time
        return ServiceUnavailable(f"state store unavailable: {type(exc).__name__}", retry_after_s=1)
    return exc


def error_body(exc: BaseException, request_id: str | None) -> tuple[int, dict]:
    exc = typed(exc)
    if isinstance(exc, LLMServeError):
        prom.inc("llmserve_errors_total", type=exc.type, status=str(exc.status))
        return exc.status, exc.to_error_body()
    prom.inc("llmserve_errors_total", type="internal_error", status="500")
    logger.error("request %s failed: %r", request_id, exc, exc_info=exc)
    message = f"internal server error (request id {request_id})" if request_id else "internal server error"
    return 500, {"error": {"message": message, "type": "internal_error", "param": None, "code": "internal_error"}}


def error_response(exc: BaseException, request_id: str | None) -> JSONResponse:
    exc = typed(exc)
    status, body = error_body(exc, request_id)
    headers = {}
    if isinstance(exc, QuotaExceeded):
        headers["x-should-retry"] = "false"  # the openai SDK would otherwise retry a spent budget
    elif status in (429, 503):
        headers["retry-after"] = str(getattr(exc, "retry_after_s", None) or 1)
    return JSONResponse(body, status_code=status, headers=headers)


def sse_error_frame(exc: BaseException, request_id: str | None) -> str:
    """The streaming twin: an error after the first chunk becomes a `data: {"error": ...}` event, which
    the openai SDK raises as APIError."""
    _, body = error_body(exc, request_id)
    return f"data: {json.dumps(body)}\n\n"


def _param(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LLMServeError)
    async def _ours(request: Request, exc: LLMServeError) -> JSONResponse:
        return error_response(exc, getattr(request.state, "request_id", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        param = _param(tuple(first.get("loc", ())))
        if first.get("type") == "json_invalid":
            message, code, param = "the request body is not valid JSON", "invalid_json", None
        else:
            message = "; ".join(f"{_param(tuple(e.get('loc', ()))) or 'body'}: {e.get('msg')}" for e in errors[:5])
            code = "missing_required_parameter" if first.get("type") == "missing" else "invalid_value"
        body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
        prom.inc("llmserve_errors_total", type="invalid_request_error", status="400")
        return JSONResponse(body, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind, code = _STARLETTE_TYPES.get(exc.status_code, ("invalid_request_error", str(exc.status_code)))
        body = {"error": {"message": str(exc.detail), "type": kind, "param": None, "code": code}}
        prom.inc("llmserve_errors_total", type=kind, status=str(exc.status_code))
        return JSONResponse(body, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unknown(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc, getattr(request.state, "request_id", None))
