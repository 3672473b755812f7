"""The console's web plumbing: who is signed in (an API key kept in a cookie and checked by the gateway on every
request, so a revoked key loses the console at once), the page templates, and the route class that turns a
missing sign-in into the login page and our typed errors into an error page of their status.

The cookie holds the key itself: Redis keeps only key digests (state/api_keys.py), so a server-side session
would have to store the plaintext key. It is HttpOnly (no script reads it), SameSite=Strict (no other site's page
sends it, which is the console's CSRF guard for its POST forms), Secure over HTTPS, and scoped to /console.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from ray.exceptions import RayError
from redis.exceptions import RedisError

from core.errors import AuthenticationFailed, LLMServeError, PermissionDenied, typed
from deployments.gateway import Principal
from deployments.ingress_state import IngressState

ASSETS = Path(__file__).parent / "console_assets"
COOKIE = "llmserve_console"
SESSION_S = 8 * 3600
# Pages are rendered for one viewer and may show a new key once: never cached, never framed (clickjacking of
# the admin forms), and only our own script and stylesheet run.
HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
        "form-action 'self'"
    ),
}


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if ts else "-"


def _usd(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 0.1 or value == 0:
        return f"${value:,.2f}"
    return f"${value:.6f}".rstrip("0")  # a few requests' spend: keep its digits


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(ASSETS / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_templates.filters.update(when=_when, usd=_usd, number=_number)


class SignInRequired(Exception):
    """No cookie, or a key the gateway no longer accepts (revoked, expired, wrong)."""


def base_path(request: Request) -> str:
    """The Serve route prefix the app is mounted under ('' at the root), for links, redirects and the cookie."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def url(request: Request, path: str) -> str:
    return f"{base_path(request)}/console{path}"


async def viewer(request: Request) -> Principal:
    """FastAPI dependency: the signed-in key's principal (its own tenant; the console never acts for another)."""
    key = request.cookies.get(COOKIE)
    if not key:
        raise SignInRequired("sign in with an API key")
    ingress: IngressState = request.app.state.ingress
    try:
        who = await ingress.gateway.authenticate(f"Bearer {key}")
    except AuthenticationFailed as exc:
        raise SignInRequired(exc.message) from exc
    request.state.console_viewer = who  # for an error page's nav
    return who


def same_origin(request: Request) -> None:
    """A form POST must come from a console page of this server: the browser's Origin (or, without it, Referer)
    names this host. Beside the SameSite=Strict cookie, this refuses a sibling subdomain's page (same site, other
    origin) and another site's login form (which would sign a victim in with the attacker's key)."""
    sent = request.headers.get("origin") or request.headers.get("referer")
    host = request.headers.get("x-forwarded-host") or request.headers.get("host", "")
    if sent is None or urlsplit(sent).netloc != host:
        raise PermissionDenied("console forms are accepted from this server's own pages only")


def require_admin(who: Principal) -> None:
    if not who.admin:
        raise PermissionDenied("this action needs an admin key; tenant keys see the console read-only")


def signed_in(request: Request, key: str) -> RedirectResponse:
    """To the overview, with the session cookie set."""
    response = RedirectResponse(url(request, ""), status_code=303)
    response.set_cookie(
        COOKIE,
        key,
        max_age=SESSION_S,
        path=f"{base_path(request)}/console",
        httponly=True,
        samesite="strict",
        # behind a proxy that ends TLS, the scheme it saw
        secure="https" in (request.url.scheme, request.headers.get("x-forwarded-proto", "").lower()),
    )
    return response


def signed_out(request: Request) -> RedirectResponse:
    """To the login page (saying so), with the session cookie cleared."""
    response = RedirectResponse(url(request, "/login?bye=1"), status_code=303)
    response.delete_cookie(COOKIE, path=f"{base_path(request)}/console", httponly=True, samesite="strict")
    return response


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A page: `template` with the base path and `context`."""
    return HTMLResponse(fragment(request, template, **context), status_code=status)


def fragment(request: Request, template: str, **context: Any) -> str:
    """`template` rendered to a string (a whole page, or a part that a script puts in one)."""
    return _templates.get_template(template).render(base=base_path(request), **context)


def error_page(request: Request, exc: BaseException) -> Response:
    """Our typed error (or a form that did not validate) as a page with its status; JSON under /console/api."""
    exc = typed(exc)
    if isinstance(exc, ValidationError | RequestValidationError):
        status, message = 400, "; ".join(_readable(e) for e in exc.errors())
    elif isinstance(exc, LLMServeError):
        status, message = exc.status, exc.message
    else:  # a RedisError that typed() did not map, or a deployment (retriever) that did not answer
        status, message = 503, f"a backing service is unavailable: {type(exc).__name__}"
    if request.url.path.startswith(url(request, "/api/")):
        if isinstance(exc, LLMServeError):
            return JSONResponse(exc.to_error_body(), status_code=status)
        if status == 503:
            return api_error(status, message, "service_unavailable", "state_store_unavailable")
        return api_error(status, message, "invalid_request_error", None)
    who = getattr(request.state, "console_viewer", None)
    return render(request, "error.html", status, who=who, active="", code=status, message=message)


def api_error(status: int, message: str, kind: str, code: str | None) -> JSONResponse:
    """An /api error in the OpenAI shape the rest of the server answers with."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status_code=status)


def _readable(error: Any) -> str:
    where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query"))
    return f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid"))


class ConsoleRoute(APIRoute):
    """The console's routes: a missing or refused key sends a page to the login page (303) and an /api call gets
    401; our typed errors become an error page; every response gets the security headers above. Errors from the
    dependencies are caught here too, as FastAPI resolves them inside the route handler."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def console_handler(request: Request) -> Response:
            try:
                if request.method == "POST":
                    same_origin(request)
                response = await handler(request)
            except SignInRequired as exc:
                if request.url.path.startswith(url(request, "/api/")):
                    response = api_error(401, str(exc), "authentication_error", "invalid_api_key")
                else:
                    response = RedirectResponse(url(request, "/login"), status_code=303)
            except (LLMServeError, RedisError, RayError, ValidationError, RequestValidationError) as exc:
                response = error_page(request, exc)
            for name, value in HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return console_handler
