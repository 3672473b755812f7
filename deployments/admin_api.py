"""Admin routes (admin keys only: the master key and keys created with `admin: true`; the gateway middleware
refuses everyone else): API keys, tenants and their limits, shared RAG collections, and what each provider did
and cost."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from core.errors import InvalidRequest, NotFound
from core.names import ADMIN_TENANT, TENANT_ID_RE, validate_collection_name, validate_tenant_id
from deployments.ingress_state import IngressState, ingress_state
from deployments.providers.report import provider_report
from state.api_keys import Limits
from state.tenant_purge import purge_tenant

router = APIRouter()
State = Annotated[IngressState, Depends(ingress_state)]


class NewKey(Limits):
    name: str = Field(..., min_length=1, max_length=200)
    tenant: str | None = Field(None, description="The tenant the key belongs to (made if new). Default: its own.")
    admin: bool = Field(False, description="An admin key: manages keys and tenants, sees every tenant's data.")
    expires_in_s: float | None = Field(None, gt=0, description="The key stops working this many seconds from now.")
    response_cache: bool | None = Field(
        None,
        description="Answer its deterministic requests from the response cache: true, false (always generate), or "
        "unset (the server's state.response_cache).",
    )


class TenantUpdate(Limits):
    name: str | None = Field(None, min_length=1, max_length=200)


class Grants(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenants: list[str] = Field(..., max_length=10_000, description="Tenants that may read the shared collection.")


@router.post("/admin/keys")
async def create_key(body: NewKey, ingress: State) -> dict:
    limits = Limits(**body.model_dump(include=set(Limits.model_fields)))
    expires_at = time.time() + body.expires_in_s if body.expires_in_s else None
    keys, tenants = ingress.gateway.keys, ingress.gateway.tenants
    options = {"admin": body.admin, "expires_at": expires_at, "response_cache": body.response_cache}
    if body.tenant is not None:
        tenant = validate_tenant_id(body.tenant)
        await tenants.ensure(tenant)
        key, record = await keys.create(body.name, tenant, limits, **options)
    else:  # a tenant of its own, named by the key's id
        key, record = await keys.create(body.name, "", limits, own_tenant=True, **options)
        await tenants.ensure(record.tenant, name=body.name)
    return {"key": key, **record.model_dump()}


@router.get("/admin/keys")
async def list_keys(ingress: State, tenant: Annotated[str | None, Query(max_length=63)] = None) -> dict:
    return {"object": "list", "data": [r.model_dump() for r in await ingress.gateway.keys.list(tenant)]}


@router.delete("/admin/keys/{key_id_or_name}")
async def revoke_key(key_id_or_name: str, ingress: State) -> dict:
    revoked = await ingress.gateway.keys.revoke(key_id_or_name)
    if not revoked:
        raise NotFound(f"no API key with id or name {key_id_or_name!r}", param="key_id_or_name")
    return {"revoked": revoked}


@router.get("/admin/tenants")
async def list_tenants(ingress: State) -> dict:
    tenants = await ingress.gateway.tenants.list()
    return {"object": "list", "data": [await _tenant(ingress, t.id) for t in tenants]}


@router.get("/admin/tenants/{tenant}")
async def show_tenant(tenant: str, ingress: State) -> dict:
    return await _tenant(ingress, tenant)


@router.put("/admin/tenants/{tenant}")
async def update_tenant(tenant: str, body: TenantUpdate, ingress: State) -> dict:
    """Make a tenant, or replace its limits (and name)."""
    validate_tenant_id(tenant)
    store = ingress.gateway.tenants
    await store.ensure(tenant, name=body.name)
    await store.set_limits(tenant, Limits(**body.model_dump(include=set(Limits.model_fields))), name=body.name)
    return await _tenant(ingress, tenant)


@router.delete("/admin/tenants/{tenant}")
async def delete_tenant(tenant: str, ingress: State) -> dict:
    """Delete a tenant and everything it owns: keys, conversations, documents, files, batches, usage."""
    if tenant == ADMIN_TENANT or not TENANT_ID_RE.match(tenant) or await ingress.gateway.tenants.get(tenant) is None:
        raise NotFound(f"no tenant {tenant!r}", param="tenant")
    removed = await purge_tenant(ingress.redis, ingress.redis_prefix, tenant)
    removed["rag_collections"] = await ingress.retriever.delete_tenant.remote(tenant)
    return {"id": tenant, "object": "tenant.deleted", "deleted": True, "removed": removed}


@router.get("/admin/rag/shared")
async def shared_collections(ingress: State) -> dict:
    grants = await ingress.grants.all()
    return {"object": "list", "data": [{"id": f"shared.{n}", "tenants": t} for n, t in grants.items()]}


@router.put("/admin/rag/shared/{name}")
async def grant_shared(name: str, body: Grants, ingress: State) -> dict:
    """Who may read `shared.<name>` (replaces the list; admin keys write it with POST /v1/rag/documents)."""
    validate_collection_name(name, param="name")
    tenants = [validate_tenant_id(t, param="tenants") for t in body.tenants]
    return {"id": f"shared.{name}", "tenants": await ingress.grants.grant(name, tenants)}


@router.get("/admin/providers")
async def providers(ingress: State, gpu_hour_usd: float | None = None) -> dict:
    """Usage, cost and breaker state per provider, and the self-hosted break-even utilisation."""
    if gpu_hour_usd is not None and gpu_hour_usd < 0:
        raise InvalidRequest("gpu_hour_usd must not be negative", param="gpu_hour_usd")
    return await provider_report(
        ingress.routing, ingress.pricing, ingress.gpus_per_replica, ingress.redis, ingress.redis_prefix, gpu_hour_usd,
        ingress.accelerator, ingress.self_hosted_models,
    )  # fmt: skip


async def _tenant(ingress: IngressState, tenant: str) -> dict:
    record = await ingress.gateway.tenants.get(tenant) if TENANT_ID_RE.match(tenant) else None
    if record is None:
        raise NotFound(f"no tenant {tenant!r}", param="tenant")
    keys = await ingress.gateway.keys.list(tenant)
    usage = await ingress.gateway.limiter.usage(tenant, limits=record.limits)
    return {
        "id": record.id,
        "object": "tenant",
        "name": record.name,
        "created": int(record.created),
        "limits": record.limits.model_dump(),
        "usage": usage,
        "keys": [{"key_id": k.key_id, "name": k.name, "admin": k.admin, "revoked": k.revoked} for k in keys],
        "conversations": await ingress.conversations.count(tenant),
        "files": await ingress.files.count(tenant),
        "batches": await ingress.batches.count(tenant),
    }
