"""The web console at /console: server-rendered pages over the same stores and functions as the admin API and the
CLI (deployments/console_views.py gathers, deployments/console_web.py signs in and renders).

Admin keys see every tenant and may create and revoke keys and set tenant limits; tenant keys see their own
tenant's data, read-only. The gateway middleware guards only /v1 and /admin: every route here signs its caller
in itself (`viewer`). The forms POST with the session cookie, which is SameSite=Strict: a page of another site
cannot send it, which is what guards these forms against CSRF. The routes are left out of the OpenAPI schema:
they are pages, not API.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.datastructures import FormData

from core.errors import AuthenticationFailed, NotFound, PayloadTooLarge
from deployments import admin_api, console_views
from deployments.console_web import (
    ASSETS,
    ConsoleRoute,
    fragment,
    render,
    require_admin,
    signed_in,
    signed_out,
    url,
    viewer,
)
from deployments.gateway import Principal
from deployments.ingress_state import IngressState, ingress_state

router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)
State = Annotated[IngressState, Depends(ingress_state)]
Viewer = Annotated[Principal, Depends(viewer)]
Tenant = Annotated[str | None, Query(max_length=63)]
MAX_FORM_BYTES = 64 * 1024  # the middleware's body limit does not cover /console
STATIC = {"console.css": "text/css", "console.js": "text/javascript"}
LIMIT_FIELDS = ("rpm", "tpm", "max_parallel", "budget_usd", "budget_window")


async def _form(request: Request) -> FormData:
    length = request.headers.get("content-length", "")
    if not length.isdigit() or int(length) > MAX_FORM_BYTES:
        raise PayloadTooLarge(f"a console form is at most {MAX_FORM_BYTES} bytes, sent with Content-Length")
    return await request.form()


def _limits(form: FormData) -> dict[str, Any]:
    """The limit fields of a form: blanks are 'unlimited' (None); models comma-separated."""
    fields: dict[str, Any] = {f: str(form.get(f) or "").strip() or None for f in LIMIT_FIELDS}
    fields["budget_window"] = fields["budget_window"] or "total"
    models = [m.strip() for m in str(form.get("models") or "").split(",") if m.strip()]
    fields["models"] = models or None
    return fields


async def _page(
    request: Request, ingress: IngressState, who: Principal, template: str, active: str, **ctx: Any
) -> Response:
    return render(
        request,
        template,
        who=who,
        active=active,
        choices=await console_views.tenant_choices(ingress, who),
        picked=ctx.pop("picked", None),
        **ctx,
    )


# --- signing in -------------------------------------------------------------------------------------------
@router.get("/login")
async def login_page(request: Request, bye: bool = False) -> Response:
    note = "Signed out." if bye else ""
    return render(request, "login.html", who=None, active="", error="", note=note)


@router.post("/login")
async def login(request: Request, ingress: State) -> Response:
    key = str((await _form(request)).get("key") or "").strip()
    try:
        await ingress.gateway.authenticate(f"Bearer {key}")
    except AuthenticationFailed as exc:
        return render(request, "login.html", 401, who=None, active="", error=exc.message, note="")
    return signed_in(request, key)


@router.post("/logout")
async def logout(request: Request) -> Response:
    return signed_out(request)


@router.get("/static/{name}")
async def static(name: str) -> Response:
    if name not in STATIC:
        raise NotFound(f"no console asset {name!r}")
    return FileResponse(ASSETS / "static" / name, media_type=STATIC[name], headers={"Cache-Control": "max-age=300"})


# --- overview (live charts) ---------------------------------------------------------------------------------
@router.get("")
async def overview(request: Request, ingress: State, who: Viewer, tenant: Tenant = None) -> Response:
    live = await console_views.live(ingress, who, tenant)
    return await _page(request, ingress, who, "overview.html", "overview", live=live, picked=tenant)


@router.get("/api/samples")
async def samples(
    request: Request,
    ingress: State,
    who: Viewer,
    tenant: Tenant = None,
    window_s: Annotated[float, Query(ge=10, le=3600)] = 300,
) -> JSONResponse:
    """The overview's live panel, refreshed every 2 s by console.js: numbers, and the charts as SVG."""
    live = await console_views.live(ingress, who, tenant, window_s)
    return JSONResponse({**live, "html": fragment(request, "_live.html", live=live)})


# --- keys and tenants ---------------------------------------------------------------------------------------
@router.get("/keys")
async def keys(
    request: Request, ingress: State, who: Viewer, tenant: Tenant = None, revoked: str = "", updated: str = ""
) -> Response:
    view = await console_views.keys_and_tenants(ingress, who, tenant)
    notice = f"Revoked {revoked}." if revoked else f"Saved the limits of tenant {updated}." if updated else ""
    return await _page(request, ingress, who, "keys.html", "keys", **view, created=None, notice=notice, picked=tenant)


@router.post("/keys")
async def create_key(request: Request, ingress: State, who: Viewer) -> Response:
    """The admin API's POST /admin/keys from a form; the page shows the new key once."""
    require_admin(who)
    form = await _form(request)
    expires = str(form.get("expires_in_s") or "").strip() or None
    body = admin_api.NewKey(
        name=str(form.get("name") or "").strip(),
        tenant=str(form.get("tenant") or "").strip() or None,
        admin=form.get("admin") == "on",
        expires_in_s=expires,
        response_cache={"on": True, "off": False}.get(str(form.get("response_cache") or "")),
        **_limits(form),
    )
    created = await admin_api.create_key(body, ingress)
    view = await console_views.keys_and_tenants(ingress, who, None)
    return await _page(request, ingress, who, "keys.html", "keys", **view, created=created, notice="")


@router.post("/keys/{key_id}/revoke")
async def revoke_key(request: Request, key_id: str, ingress: State, who: Viewer) -> Response:
    require_admin(who)
    await _form(request)
    revoked = await admin_api.revoke_key(key_id, ingress)
    return RedirectResponse(url(request, f"/keys?revoked={','.join(revoked['revoked'])}"), status_code=303)


@router.post("/tenants/{tenant}/limits")
async def tenant_limits(request: Request, tenant: str, ingress: State, who: Viewer) -> Response:
    """The admin API's PUT /admin/tenants/{tenant} from a form: replaces the tenant's limits (and its name)."""
    require_admin(who)
    form = await _form(request)
    body = admin_api.TenantUpdate(name=str(form.get("name") or "").strip() or None, **_limits(form))
    await admin_api.update_tenant(tenant, body, ingress)
    return RedirectResponse(url(request, f"/keys?updated={tenant}"), status_code=303)


# --- the other pages ----------------------------------------------------------------------------------------
@router.get("/usage")
async def usage(request: Request, ingress: State, who: Viewer, tenant: Tenant = None) -> Response:
    view = await console_views.usage(ingress, who, tenant)
    return await _page(request, ingress, who, "usage.html", "usage", **view, picked=tenant)


@router.get("/providers")
async def providers(request: Request, ingress: State, who: Viewer) -> Response:
    """Server-wide (every tenant's traffic and cost): admin keys only."""
    require_admin(who)
    report = await console_views.providers(ingress, who)
    return await _page(request, ingress, who, "providers.html", "providers", report=report)


@router.get("/batches")
async def batches(request: Request, ingress: State, who: Viewer, tenant: Tenant = None) -> Response:
    view = await console_views.batches(ingress, who, tenant)
    return await _page(request, ingress, who, "batches.html", "batches", **view, picked=tenant)


@router.get("/batches/{batch_id}")
async def batch(request: Request, batch_id: str, ingress: State, who: Viewer, tenant: Tenant = None) -> Response:
    view = await console_views.batch(ingress, who, tenant or who.tenant, batch_id)
    return await _page(request, ingress, who, "batch.html", "batches", **view)


@router.get("/files/{file_id}")
async def file_content(file_id: str, ingress: State, who: Viewer, tenant: Tenant = None) -> Response:
    meta, content = await console_views.file_content(ingress, who, tenant or who.tenant, file_id)
    disposition = f'attachment; filename="{meta["id"]}.jsonl"'  # our id, not the uploaded name: no quoting to get wrong
    return Response(content, media_type="application/octet-stream", headers={"Content-Disposition": disposition})


@router.get("/conversations")
async def conversations(request: Request, ingress: State, who: Viewer, tenant: Tenant = None) -> Response:
    view = await console_views.conversations(ingress, who, tenant)
    return await _page(request, ingress, who, "conversations.html", "conversations", **view, picked=tenant)


@router.get("/conversations/{conversation_id}")
async def conversation(
    request: Request, conversation_id: str, ingress: State, who: Viewer, tenant: Tenant = None
) -> Response:
    view = await console_views.conversation(ingress, who, tenant or who.tenant, conversation_id)
    return await _page(request, ingress, who, "conversation.html", "conversations", **view)


@router.get("/rag")
async def rag(request: Request, ingress: State, who: Viewer, tenant: Tenant = None) -> Response:
    view = await console_views.collections(ingress, who, tenant)
    return await _page(request, ingress, who, "rag.html", "rag", **view, picked=tenant)


@router.get("/rag/{collection}")
async def rag_documents(
    request: Request, collection: str, ingress: State, who: Viewer, tenant: Tenant = None
) -> Response:
    view = await console_views.documents(ingress, who, tenant or who.tenant, collection)
    return await _page(request, ingress, who, "documents.html", "rag", **view)
