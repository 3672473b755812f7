"""The ingress's door, as plain ASGI middleware (Starlette's BaseHTTPMiddleware would re-pipe every streamed
chunk through an extra task): a request id, the caller's identity and the tenant it acts for, admin-only routes,
and the body size limit, all decided before the body is parsed, so an unauthenticated request gets 401 and an
oversized one 413 without being read into a model.

Every decision is made on the path the app routes: under a Serve route prefix the ASGI path still holds the
prefix (`/api/admin/keys`, root_path `/api`), and the app routes what follows the root path. Deciding on the
raw path would leave `/<prefix>/admin/...` unguarded.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import LLMServeError, PayloadTooLarge, PermissionDenied
from core.names import validate_tenant_id
from deployments.gateway import Gateway
from deployments.http_errors import error_response, route_path
from observability import tracing

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_GUARDED = ("/v1/", "/admin/")
TENANT_HEADER = "x-llmserve-tenant"  # an admin key acting for another tenant
TRACE_HEADER = b"x-llmserve-trace-id"


class GatewayMiddleware:
    """`gateway` authenticates; bodies over `max_body_bytes` (over `max_file_bytes` for uploads to /v1/files)
    get 413."""

    def __init__(self, app: ASGIApp, *, gateway: Gateway, max_body_bytes: int, max_file_bytes: int):
        self.app = app
        self._gateway = gateway
        self._max_body_bytes = max_body_bytes
        self._max_file_bytes = max_file_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        incoming = headers.get("x-request-id", "")
        request_id = incoming if _REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        # Serve's proxy already puts x-request-id (the client's, or a new one) on every response.
        path = route_path(scope)
        method = scope.get("method", "")
        # The request's span: a child of the client's traceparent when it sent one; current for the whole
        # call (the app sends its streamed body before it returns), its trace id a response header.
        with tracing.span(
            f"{method} {_route_template(scope, path)}",
            tracing.extract(headers),
            kind=tracing.SpanKind.SERVER,
            request_id=request_id,
            **{"http.request.method": method, "url.path": path},
        ) as server:
            send = _with_trace_header(send, tracing.trace_id(server))
            token = tracing.REQUEST_ID.set(request_id)
            try:
                await self._guarded(scope, receive, send, headers, path, request_id)
            finally:
                tracing.REQUEST_ID.reset(token)

    async def _guarded(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[str, str], path: str, request_id: str
    ) -> None:
        state = scope["state"]
        if path.startswith(_GUARDED) or path in ("/v1", "/admin"):
            try:
                with tracing.span("auth"):
                    principal = await self._gateway.authenticate(_authorization(headers))
                if path.startswith("/admin") and not principal.admin:
                    raise PermissionDenied("admin routes need an admin key")
                if headers.get(TENANT_HEADER):
                    tenant = validate_tenant_id(headers[TENANT_HEADER], param=TENANT_HEADER)
                    principal = await self._gateway.acting_for(principal, tenant)
                state["principal"] = principal
                uploading = path == "/v1/files" and scope.get("method") == "POST"
                limit = self._max_file_bytes if uploading else self._max_body_bytes
                receive = await _bounded_body(headers, receive, limit)
            except LLMServeError as exc:
                await error_response(exc, request_id, path)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _with_trace_header(send: Send, trace_id: str) -> Send:
    """`send` that puts `x-llmserve-trace-id` on the response's headers."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start" and trace_id:
            message = {**message, "headers": [*message.get("headers", []), (TRACE_HEADER, trace_id.encode())]}
        await send(message)

    return sending


def _route_template(scope: Scope, path: str) -> str:
    """The route's template (`/v1/batches/{batch_id}`), not its path: span names stay few. Read from the
    app's router before routing; a path no route matches is named by its first two segments."""
    from starlette.routing import Match

    app = scope.get("app")
    for route in getattr(getattr(app, "router", None), "routes", []):
        match, _ = route.matches({**scope, "path": path, "root_path": ""})
        if match == Match.FULL:
            return getattr(route, "path", path)
    return "/".join(path.split("/")[:3]) or "/"


def _authorization(headers: dict[str, str]) -> str:
    """`Authorization: Bearer <key>`, or Anthropic clients' `x-api-key: <key>`."""
    if headers.get("authorization") or not headers.get("x-api-key"):
        return headers.get("authorization", "")
    return f"Bearer {headers['x-api-key']}"


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


async def _bounded_body(headers: dict[str, str], receive: Receive, limit: int) -> Receive:
    """413 by Content-Length without reading; a body without one (chunked) is read up to the limit and
    replayed, so a client cannot stream an unbounded body past the check."""
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit() or int(length) > limit:
            raise PayloadTooLarge(f"request body larger than {limit} bytes")
        return receive
    if "chunked" not in headers.get("transfer-encoding", "").lower():
        return receive
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away: let the app see it
            return _replay([message], receive)
        body = message.get("body", b"")
        size += len(body)
        if size > limit:
            raise PayloadTooLarge(f"request body larger than {limit} bytes")
        parts.append(body)
        if not message.get("more_body", False):
            return _replay([{"type": "http.request", "body": b"".join(parts), "more_body": False}], receive)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
