"""What each console page shows, gathered from the stores and functions the admin API and the CLI use (the admin
API's tenant summary and provider report, the batch queue, the Retriever), and scoped: an admin key sees every
tenant or the one it picks, a tenant key only its own (asking for another is 403)."""

from __future__ import annotations

import time
from typing import Any

from core.errors import NotFound, PermissionDenied
from core.names import ADMIN_TENANT, TENANT_ID_RE
from deployments import admin_api, batch_api
from deployments.console_charts import bar_chart, line_chart, relative_time_labels
from deployments.console_samples import (
    failovers_by_provider,
    read_samples,
    summarize,
    throughput_series,
    ttft_series,
)
from deployments.gateway import Principal
from deployments.ingress_state import IngressState
from deployments.rag_api import _collection as readable_collection
from state.api_keys import Limits
from state.keyspace import tenant_base

MAX_TENANTS = 200  # an "all tenants" page lists at most this many
RUNNING = ("validating", "in_progress", "finalizing", "cancelling")
WINDOW_S = 300.0
BUCKET_S = 10.0
USAGE_DAYS = 14


async def tenants_in_view(ingress: IngressState, who: Principal, pick: str | None) -> list[str]:
    """The tenants a page shows: the picked one (a tenant key may pick only its own), or every tenant for an
    admin key (its own and `admin`, where the master key's objects live, first), or the key's own tenant."""
    if pick:
        if not who.admin and pick != who.tenant:
            raise PermissionDenied("a tenant key sees its own tenant only", param="tenant")
        if pick != ADMIN_TENANT and not TENANT_ID_RE.match(pick):
            raise NotFound(f"no tenant {pick!r}", param="tenant")
        return [pick]
    if not who.admin:
        return [who.tenant]
    every = [who.tenant, ADMIN_TENANT, *(t.id for t in await ingress.gateway.tenants.list())]
    return list(dict.fromkeys(every))[:MAX_TENANTS]


async def tenant_choices(ingress: IngressState, who: Principal) -> list[str]:
    """The tenant picker's options (admin keys only; a tenant key has no choice)."""
    return await tenants_in_view(ingress, who, None) if who.admin else []


# --- overview ---------------------------------------------------------------------------------------------
async def live(ingress: IngressState, who: Principal, pick: str | None, window_s: float = WINDOW_S) -> dict[str, Any]:
    """The live numbers and charts of the last `window_s` seconds (what /console/api/samples returns)."""
    tenants = await tenants_in_view(ingress, who, pick)
    tenant = tenants[0] if pick or not who.admin else None
    now = time.time()
    samples = await read_samples(ingress.redis, ingress.redis_prefix, tenants, window_s=window_s, now=now)
    labels = relative_time_labels(window_s)
    ttft = line_chart(
        ttft_series(samples, now=now), title="Time to first token, per request", unit="ms",
        x_range=(-window_s, 0.0), x_labels=labels, line=False,
    )  # fmt: skip
    throughput = line_chart(
        throughput_series(samples, now=now, window_s=window_s, bucket_s=BUCKET_S),
        title=f"Output tokens/s ({BUCKET_S:g} s buckets)", unit="tok/s", x_range=(-window_s, 0.0), x_labels=labels,
    )  # fmt: skip
    return {
        "tenant": tenant,
        "window_s": window_s,
        "summary": summarize(samples, window_s),
        "charts": {"ttft": ttft, "throughput": throughput},
        "recent": [_recent_row(s) for s in samples[-10:][::-1]],
    }


def _recent_row(sample: dict[str, Any]) -> dict[str, Any]:
    return {
        "time": time.strftime("%H:%M:%S", time.gmtime(sample["ts"])),
        **{k: sample.get(k) for k in ("tenant", "model", "provider", "status", "ttft_s", "completion_tokens")},
    }


# --- keys and tenants --------------------------------------------------------------------------------------
async def keys_and_tenants(ingress: IngressState, who: Principal, pick: str | None) -> dict[str, Any]:
    tenants = await tenants_in_view(ingress, who, pick)
    store = ingress.gateway.keys
    keys = await store.list() if who.admin and not pick else [k for t in tenants for k in await store.list(t)]
    summaries = []
    for tenant in tenants:
        try:
            summaries.append(await admin_api._tenant(ingress, tenant))  # what GET /admin/tenants/{t} returns
        except NotFound:  # the master key's `admin` tenant has no record
            continue
    return {"keys": [k.model_dump() for k in keys], "tenant_rows": summaries}


# --- usage and spend ---------------------------------------------------------------------------------------
async def usage(ingress: IngressState, who: Principal, pick: str | None, days: int = USAGE_DAYS) -> dict[str, Any]:
    """Per tenant: all-time usage, the current budget window's spend against its limits, each key's usage; and
    the requests and spend per UTC day of the tenants shown."""
    tenants = await tenants_in_view(ingress, who, pick)
    limiter, now = ingress.gateway.limiter, time.time()
    dates = [time.strftime("%Y-%m-%d", time.gmtime(now - 86400 * i)) for i in range(days - 1, -1, -1)]
    per_day = {d: {"requests": 0.0, "cost_usd": 0.0, "tokens": 0.0} for d in dates}
    rows = []
    for tenant in tenants:
        record = await ingress.gateway.tenants.get(tenant)
        limits = record.limits if record is not None else Limits()
        keys = [
            {
                "key_id": k.key_id,
                "name": k.name,
                "revoked": k.revoked,
                **await limiter.usage(tenant, k.key_id, k.limits()),
            }
            for k in await ingress.gateway.keys.list(tenant)
        ]
        total = await limiter.usage(tenant, limits=limits)
        if not total["requests"] and not keys and tenant != who.tenant:
            continue
        rows.append({"tenant": tenant, "limits": limits.model_dump(), "usage": total, "keys": keys})
        for date, day in zip(dates, await _daily(ingress, tenant, dates), strict=True):
            per_day[date]["requests"] += day["requests"]
            per_day[date]["cost_usd"] += day["cost_usd"]
            per_day[date]["tokens"] += day["tokens"]
    label = [(d[5:], per_day[d]) for d in dates]  # MM-DD
    return {
        "rows": rows,
        "days": [{"date": d, **per_day[d]} for d in dates],
        "charts": {
            "requests": bar_chart([(d, v["requests"]) for d, v in label], title="Requests per UTC day"),
            "spend": bar_chart([(d, v["cost_usd"]) for d, v in label], title="Spend per UTC day", unit="USD"),
        },
    }


async def _daily(ingress: IngressState, tenant: str, dates: list[str]) -> list[dict[str, float]]:
    """A tenant's usage on each date: the per-day hashes the Limiter's settle script writes (state/limits.py,
    `<p>:t:{T}:usage:<date>`, kept USAGE_TTL_S)."""
    base = tenant_base(ingress.redis_prefix, tenant)
    async with ingress.redis.pipeline(transaction=False) as pipe:
        for date in dates:
            pipe.hgetall(f"{base}:usage:{date}")
        raw = await pipe.execute()
    return [
        {
            "requests": float(r.get("requests", 0)),
            "cost_usd": float(r.get("cost_usd", 0.0)),
            "tokens": float(r.get("prompt_tokens", 0)) + float(r.get("completion_tokens", 0)),
        }
        for r in raw
    ]


# --- providers ---------------------------------------------------------------------------------------------
async def providers(ingress: IngressState, who: Principal) -> dict[str, Any]:
    """GET /admin/providers, with attempts and the failovers of the live window per provider (every tenant's)."""
    report = await admin_api.providers(ingress)
    tenants = await tenants_in_view(ingress, who, None)
    samples = await read_samples(ingress.redis, ingress.redis_prefix, tenants, window_s=WINDOW_S)
    moved = failovers_by_provider(samples)
    for row in report["data"]:
        row["attempts"] = int(row["usage"]["requests"] + row["usage"]["failures"])
        row["failovers_recent"] = moved.get(row["name"], 0)
    report["window_s"] = WINDOW_S
    report["failovers_recent"] = summarize(samples, WINDOW_S)["failovers"]
    return report


# --- batches and files -------------------------------------------------------------------------------------
async def batches(ingress: IngressState, who: Principal, pick: str | None, limit: int = 50) -> dict[str, Any]:
    rows = []
    for tenant in await tenants_in_view(ingress, who, pick):
        found, _ = await ingress.batches.list(tenant, None, limit)
        rows.extend({**b, "tenant": tenant, **_progress(b)} for b in found)
    rows.sort(key=lambda b: b["created_at"] or 0, reverse=True)
    queue = await batch_api.batch_queue(ingress) if who.admin else None
    return {"batches": rows[:limit], "running": any(b["status"] in RUNNING for b in rows), "queue": queue}


def _progress(batch: dict[str, Any]) -> dict[str, Any]:
    counts = batch["request_counts"]
    done = counts["completed"] + counts["failed"]
    return {"done": done, "percent": round(100 * done / counts["total"]) if counts["total"] else 0}


async def batch(ingress: IngressState, who: Principal, tenant: str, batch_id: str) -> dict[str, Any]:
    [tenant] = await tenants_in_view(ingress, who, tenant)
    found = await ingress.batches.get(tenant, batch_id)
    if found is None:
        raise NotFound(f"no batch {batch_id!r}", param="batch_id")
    files = []
    for role in ("input_file_id", "output_file_id", "error_file_id"):
        if found[role]:
            files.append({"role": role.removesuffix("_file_id"), **(await _file(ingress, tenant, found[role]))})
    return {
        "batch": {**found, "tenant": tenant, **_progress(found)},
        "files": files,
        "running": found["status"] in RUNNING,
    }


async def _file(ingress: IngressState, tenant: str, file_id: str) -> dict[str, Any]:
    meta = await ingress.files.get(tenant, file_id)
    return meta if meta is not None else {"id": file_id, "missing": True}


async def file_content(ingress: IngressState, who: Principal, tenant: str, file_id: str) -> tuple[dict, bytes]:
    [tenant] = await tenants_in_view(ingress, who, tenant)
    meta, content = await ingress.files.get(tenant, file_id), await ingress.files.content(tenant, file_id)
    if meta is None or content is None:
        raise NotFound(f"no file {file_id!r}", param="file_id")
    return meta, content


# --- conversations -----------------------------------------------------------------------------------------
async def conversations(ingress: IngressState, who: Principal, pick: str | None, limit: int = 50) -> dict[str, Any]:
    rows = []
    for tenant in await tenants_in_view(ingress, who, pick):
        page, _ = await ingress.conversations.list(tenant, None, limit)
        rows.extend({**c.model_dump(), "tenant": tenant} for c in page)
    rows.sort(key=lambda c: c["updated_at"], reverse=True)
    return {"conversations": rows[:limit]}


async def conversation(ingress: IngressState, who: Principal, tenant: str, conversation_id: str) -> dict[str, Any]:
    [tenant] = await tenants_in_view(ingress, who, tenant)
    messages = await ingress.conversations.history(tenant, conversation_id)
    if not messages:
        raise NotFound(f"no conversation {conversation_id!r}", param="conversation_id")
    return {"tenant": tenant, "id": conversation_id, "messages": [m.model_dump(exclude_none=True) for m in messages]}


# --- RAG -----------------------------------------------------------------------------------------------------
async def collections(ingress: IngressState, who: Principal, pick: str | None) -> dict[str, Any]:
    """Each tenant's collections (a tenant key also sees the shared ones it may read); for an admin key, the
    shared collections once, with who may read them."""
    rows = []
    grants = await ingress.grants.all() if who.admin else {}
    for tenant in await tenants_in_view(ingress, who, pick):
        shared = [] if who.admin else await ingress.grants.readable(tenant)
        found = await ingress.retriever.collections.remote(tenant, shared)
        rows.extend({**c.model_dump(), "tenant": tenant, "readers": []} for c in found)
    if grants:
        found = await ingress.retriever.collections.remote(who.tenant, list(grants))
        rows.extend(
            {**c.model_dump(), "tenant": who.tenant, "readers": grants[c.id.split(".", 1)[1]]}
            for c in found
            if c.shared
        )
    return {"collections": rows}


async def documents(ingress: IngressState, who: Principal, tenant: str, collection: str) -> dict[str, Any]:
    [tenant] = await tenants_in_view(ingress, who, tenant)
    await readable_collection(ingress, who, collection, write=False)  # the rules of GET .../documents
    found = await ingress.retriever.documents.remote(tenant, collection)
    return {"tenant": tenant, "collection": collection, "documents": [d.model_dump() for d in found]}
