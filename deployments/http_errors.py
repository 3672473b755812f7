"""The HTTP side of the one error mapping (core/errors.py): OpenAI error responses, their streaming twin, and
the FastAPI handlers that route every failure through it, each counted in llmserve_errors_total."""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from core import errors
from core.errors import InvalidRequest, LLMServeError, QuotaExceeded
from observability import prom

_STARLETTE_TYPES = {
    400: ("invalid_request_error", "invalid_body"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
}


def error_body(exc: BaseException, request_id: str | None) -> tuple[int, dict]:
    """core.errors.error_body, counted."""
    status, body = errors.error_body(exc, request_id)
    prom.inc("llmserve_errors_total", type=body["error"]["type"], status=str(status))
    return status, body


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
MESSAGES_PATH = "/v1/messages"


def anthropic_error_body(status: int, body: dict) -> dict:
    """An OpenAI error body as Anthropic's (what Claude clients read): {type: error, error: {type, message}}."""
    error = body["error"]
    message = error["message"] + (f" (param: {error['param']})" if error.get("param") else "")
    return {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}


def _shaped(status: int, body: dict, path: str | None) -> dict:
    return anthropic_error_body(status, body) if path == MESSAGES_PATH else body


def error_response(exc: BaseException, request_id: str | None, path: str | None = None) -> JSONResponse:
    """The error as JSON: OpenAI's shape, or Anthropic's for the Messages API (`path`)."""
    exc = errors.typed(exc)
    status, body = error_body(exc, request_id)
    body = _shaped(status, body, path)
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


def route_path(scope: Scope) -> str:
    """The path the app routes: the ASGI path after the root path (as starlette._utils.get_route_path, which
    Starlette's router matches with)."""
    path, root = scope["path"], scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    if path == root:
        return "/"
    return path[len(root) :] if path[len(root)] == "/" else path


def invalid_request_from(exc: ValidationError) -> InvalidRequest:
    """A request that is valid as sent but not as the chat request it runs as (completions, Messages, Responses):
    its first problem, named."""
    first = exc.errors()[0]
    param = _param(tuple(first["loc"]))
    return InvalidRequest(f"{param or 'body'}: {first['msg']}", param=param)


def _param(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    def path(request: Request) -> str:
        return route_path(request.scope)

    @app.exception_handler(LLMServeError)
    async def _ours(request: Request, exc: LLMServeError) -> JSONResponse:
        return error_response(exc, getattr(request.state, "request_id", None), path(request))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = exc.errors()
        first = problems[0] if problems else {}
        param = _param(tuple(first.get("loc", ())))
        if first.get("type") == "json_invalid":
            message, code, param = "the request body is not valid JSON", "invalid_json", None
        elif first.get("type") == "extra_forbidden":  # OpenAI's own words for a field it does not know
            message, code = f"Unrecognized request argument supplied: {param}", "unknown_parameter"
        elif first.get("type") == "unsupported_parameter":
            message, code = f"{param}: {first.get('msg')}", "unsupported_parameter"
        else:
            message = "; ".join(f"{_param(tuple(e.get('loc', ()))) or 'body'}: {e.get('msg')}" for e in problems[:5])
            code = "missing_required_parameter" if first.get("type") == "missing" else "invalid_value"
        body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
        prom.inc("llmserve_errors_total", type="invalid_request_error", status="400")
        return JSONResponse(_shaped(400, body, path(request)), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind, code = _STARLETTE_TYPES.get(exc.status_code, ("invalid_request_error", str(exc.status_code)))
        body = {"error": {"message": str(exc.detail), "type": kind, "param": None, "code": code}}
        prom.inc("llmserve_errors_total", type=kind, status=str(exc.status_code))
        return JSONResponse(_shaped(exc.status_code, body, path(request)), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unknown(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc, getattr(request.state, "request_id", None), path(request))
