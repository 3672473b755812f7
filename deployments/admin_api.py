"""Admin routes (the master key only; the gateway middleware refuses everyone else): API keys, and what each
provider did and cost."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import Field

from core.errors import InvalidRequest, NotFound
from deployments.ingress_state import IngressState, ingress_state
from deployments.providers.report import provider_report
from state.api_keys import KeyLimits

router = APIRouter()
State = Annotated[IngressState, Depends(ingress_state)]


class NewKey(KeyLimits):
    name: str = Field(..., min_length=1, max_length=200)


@router.post("/admin/keys")
async def create_key(body: NewKey, ingress: State) -> dict:
    key, record = await ingress.gateway.keys.create(body.name, KeyLimits(**body.model_dump(exclude={"name"})))
    return {"key": key, **record.model_dump()}


@router.get("/admin/keys")
async def list_keys(ingress: State) -> dict:
    return {"object": "list", "data": [r.model_dump() for r in await ingress.gateway.keys.list()]}


@router.delete("/admin/keys/{key_id_or_name}")
async def revoke_key(key_id_or_name: str, ingress: State) -> dict:
    revoked = await ingress.gateway.keys.revoke(key_id_or_name)
    if not revoked:
        raise NotFound(f"no API key with id or name {key_id_or_name!r}", param="key_id_or_name")
    return {"revoked": revoked}


@router.get("/admin/providers")
async def providers(ingress: State, gpu_hour_usd: float | None = None) -> dict:
    """Usage, cost and breaker state per provider, and the self-hosted break-even utilisation."""
    if gpu_hour_usd is not None and gpu_hour_usd < 0:
        raise InvalidRequest("gpu_hour_usd must not be negative", param="gpu_hour_usd")
    return await provider_report(
        ingress.routing, ingress.pricing, ingress.gpus_per_replica, ingress.redis, ingress.redis_prefix, gpu_hour_usd
    )
