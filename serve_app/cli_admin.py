"""`llmserve keys`, `llmserve tenants` and `llmserve cost`: the admin surface of a running server (an admin key:
the master key, or a key created with --admin)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from serve_app.cli_common import (
    ConfigOption,
    MasterKeyOption,
    ServerOption,
    admin_call,
    console,
    parse_duration,
)

keys_app = typer.Typer(help="API keys (a running server's /admin/keys; needs an admin key).", no_args_is_help=True)
tenants_app = typer.Typer(
    help="Tenants: the unit that owns data and has limits (needs an admin key).", no_args_is_help=True
)

Rpm = Annotated[int | None, typer.Option(help="Requests per minute.")]
Tpm = Annotated[int | None, typer.Option(help="Tokens per minute.")]
MaxParallel = Annotated[int | None, typer.Option(help="Requests in flight at once.")]
BudgetUsd = Annotated[float | None, typer.Option(help="Spend allowed per budget window, USD.")]
BudgetWindow = Annotated[str, typer.Option(help="When the budget starts again: total (never), daily or monthly.")]
Models = Annotated[list[str] | None, typer.Option(help="Allowed models (repeat); default all.")]


def _limits(rpm, tpm, max_parallel, budget_usd, budget_window, models) -> dict:
    if budget_window not in ("total", "daily", "monthly"):
        raise typer.BadParameter("total, daily or monthly", param_hint="--budget-window")
    return {
        "rpm": rpm,
        "tpm": tpm,
        "max_parallel": max_parallel,
        "budget_usd": budget_usd,
        "budget_window": budget_window,
        "models": models or None,
    }


def _cell(value) -> str:
    return "-" if value is None else str(value)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A name for the key's owner.")],
    tenant: Annotated[str | None, typer.Option(help="The tenant it belongs to (made if new); default its own.")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="An admin key: manages keys and tenants, sees all.")] = False,
    expires_in: Annotated[str | None, typer.Option(help="It stops working after this: 90s, 30m, 12h, 7d.")] = None,
    rpm: Rpm = None,
    tpm: Tpm = None,
    max_parallel: MaxParallel = None,
    budget_usd: BudgetUsd = None,
    budget_window: BudgetWindow = "total",
    models: Models = None,
    server: ServerOption = None,
    master_key: MasterKeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Create a key. It is printed once: only its SHA-256 is stored."""
    body = {
        "name": name,
        "tenant": tenant,
        "admin": admin,
        **_limits(rpm, tpm, max_parallel, budget_usd, budget_window, models),
    }
    if expires_in:
        body["expires_in_s"] = parse_duration(expires_in)
    created = admin_call(server, master_key, config, "POST", "/admin/keys", json=body)
    console.print(
        f"key id {created['key_id']} for {created['name']!r} in tenant {created['tenant']!r}"
        f"{' (admin)' if created['admin'] else ''}. The key (shown once, store it now):"
    )
    console.print(created["key"], highlight=False, soft_wrap=True)


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    server: ServerOption = None,
    master_key: MasterKeyOption = None,
    config: ConfigOption = None,
) -> None:
    """List keys with their tenant and limits (never the keys themselves)."""
    rows = admin_call(server, master_key, config, "GET", "/admin/keys", params={"tenant": tenant} if tenant else {})[
        "data"
    ]
    table = Table("key id", "name", "tenant", "admin", "rpm", "tpm", "parallel", "budget $", "models", "state")
    for r in rows:
        state = "revoked" if r["revoked"] else ("expires" if r["expires_at"] else "")
        table.add_row(
            r["key_id"], r["name"], r["tenant"], "yes" if r["admin"] else "",
            *(_cell(r[k]) for k in ("rpm", "tpm", "max_parallel", "budget_usd")),
            ",".join(r["models"] or ["all"]), state,
        )  # fmt: skip
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id_or_name: Annotated[str, typer.Argument(help="A key id, or a name (revokes all its keys).")],
    server: ServerOption = None,
    master_key: MasterKeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Revoke keys. Takes effect at once on every replica."""
    revoked = admin_call(server, master_key, config, "DELETE", f"/admin/keys/{key_id_or_name}")["revoked"]
    console.print(f"revoked: {', '.join(revoked)}")


@tenants_app.command("list")
def tenants_list(server: ServerOption = None, master_key: MasterKeyOption = None, config: ConfigOption = None) -> None:
    """Every tenant with its keys, usage and limits."""
    rows = admin_call(server, master_key, config, "GET", "/admin/tenants")["data"]
    table = Table("tenant", "name", "keys", "requests", "tokens", "cost $", "budget $", "window", "rpm", "tpm")
    for t in rows:
        u, lim = t["usage"], t["limits"]
        table.add_row(
            t["id"], t["name"], str(len(t["keys"])), str(u["requests"]),
            str(u["prompt_tokens"] + u["completion_tokens"]), f"{u['cost_usd']:.6f}", _cell(lim["budget_usd"]),
            lim["budget_window"], _cell(lim["rpm"]), _cell(lim["tpm"]),
        )  # fmt: skip
    console.print(table)


@tenants_app.command("show")
def tenants_show(
    tenant: Annotated[str, typer.Argument(help="The tenant id.")],
    server: ServerOption = None,
    master_key: MasterKeyOption = None,
    config: ConfigOption = None,
) -> None:
    """One tenant: limits, usage, keys, and how many conversations, files and batches it holds."""
    console.print_json(json.dumps(admin_call(server, master_key, config, "GET", f"/admin/tenants/{tenant}")))


@tenants_app.command("limits")
def tenants_limits(
    tenant: Annotated[str, typer.Argument(help="The tenant id (made if new).")],
    name: Annotated[str | None, typer.Option(help="A display name.")] = None,
    rpm: Rpm = None,
    tpm: Tpm = None,
    max_parallel: MaxParallel = None,
    budget_usd: BudgetUsd = None,
    budget_window: BudgetWindow = "total",
    models: Models = None,
    server: ServerOption = None,
    master_key: MasterKeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Set a tenant's limits (replacing them; they apply beside each key's own)."""
    body = {"name": name, **_limits(rpm, tpm, max_parallel, budget_usd, budget_window, models)}
    result = admin_call(server, master_key, config, "PUT", f"/admin/tenants/{tenant}", json=body)
    console.print(f"tenant {result['id']!r}: {result['limits']}")


@tenants_app.command("delete")
def tenants_delete(
    tenant: Annotated[str, typer.Argument(help="The tenant id.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
    server: ServerOption = None,
    master_key: MasterKeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Delete a tenant and all it owns: keys, conversations, documents, files, batches, usage."""
    if not yes:
        typer.confirm(f"Delete tenant {tenant!r} and all of its data?", abort=True)
    removed = admin_call(server, master_key, config, "DELETE", f"/admin/tenants/{tenant}")["removed"]
    console.print(f"deleted tenant {tenant!r}: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in removed.items()))


def cost(
    gpu_hour_usd: Annotated[
        float | None,
        typer.Option(help="USD per GPU-hour of a self-hosted replica, per replica-hour on CPU (default: settings)."),
    ] = None,
    server: ServerOption = None,
    master_key: MasterKeyOption = None,
    config: ConfigOption = None,
) -> None:
    """$/1M tokens per provider, and the utilisation at which self-hosting breaks even, from measured traffic."""
    params = {"gpu_hour_usd": gpu_hour_usd} if gpu_hour_usd is not None else {}
    report = admin_call(server, master_key, config, "GET", "/admin/providers", params=params)
    table = Table("provider", "kind", "requests", "tokens", "failures", "cost $", "$/1M tokens", "breaker")
    for p in report["data"]:
        u = p["usage"]
        per_mtok = p.get("usd_per_mtok")
        table.add_row(
            p["name"], p["kind"], str(u["requests"]), str(u["prompt_tokens"] + u["completion_tokens"]),
            str(u["failures"]), f"{u['cost_usd']:.6f}", "-" if per_mtok is None else f"{per_mtok:.4f}", p["breaker"],
        )  # fmt: skip
    console.print(table)
    own = report.get("self_hosted")
    if own and own["tokens_per_s_busy"] is not None:
        if report.get("accelerator") == "cpu":  # no GPUs to count: the price is a replica's hour
            priced = f"${report['gpu_hour_usd']:g}/replica-hour (CPU)"
        else:
            priced = f"${report['gpu_hour_usd']:g}/GPU-hour x {report['gpus_per_replica']} GPU(s)"
        console.print(
            f"self-hosted: {own['tokens_per_s_busy']:.1f} tokens/s while busy at {priced} "
            f"= ${own['usd_per_mtok_full_use']:.4f} per 1M tokens at full use"
        )
        if own["break_even_utilisation"] is not None:
            console.print(
                f"self-hosting is cheaper than {own['compared_with']} above "
                f"{own['break_even_utilisation'] * 100:.1f} % utilisation"
            )
    else:
        console.print("self-hosted: no measured traffic yet")
    for model, d in (report.get("scaling") or {}).items():
        n = d["numbers"]
        console.print(
            f"scale or spill, {model}: {d['action']} -> {d['replicas']} replica(s), spill {d['spill_fraction']:.0%} "
            f"(demand {n['demand_tokens_per_s']:.1f} tok/s, utilisation {_share(d['utilisation'])}, break-even "
            f"{_share(d['break_even_utilisation'])}, replica {d['tokens_per_s_source']} tokens/s): {d['reason']}"
        )


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"
