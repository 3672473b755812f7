"""`llmserve rag` and `llmserve batches`: a tenant's documents and batches on a running server, as the key it
acts with sees them (its tenant's; an admin key may name another with --tenant)."""

from __future__ import annotations

import threading
from typing import Annotated
from urllib.parse import quote

import typer
from rich.table import Column, Table

from serve_app.cli_common import (
    ApiKeyOption,
    ConfigOption,
    MasterKeyOption,
    ServerOption,
    admin_call,
    call,
    console,
    server_client,
)

rag_app = typer.Typer(help="RAG collections and documents of your tenant on a running server.", no_args_is_help=True)
TenantOption = Annotated[
    str | None, typer.Option(help="Act for this tenant (admin keys only; sends X-LLMServe-Tenant).")
]


def _client(server, key, config, tenant):
    client = server_client(server, key, config)
    if tenant:
        client.headers["X-LLMServe-Tenant"] = tenant
    return client


@rag_app.command("collections")
def rag_collections(
    tenant: TenantOption = None, server: ServerOption = None, api_key: ApiKeyOption = None, config: ConfigOption = None
) -> None:
    """Your collections, and the shared ones you may read."""
    with _client(server, api_key, config, tenant) as client:
        rows = call(client, "GET", "/v1/rag/collections")["data"]
    table = Table("collection", "shared", "chunks")
    for c in rows:
        table.add_row(c["id"], "yes" if c["shared"] else "", str(c["chunks"]))
    console.print(table)


@rag_app.command("documents")
def rag_documents(
    collection: Annotated[str, typer.Argument(help="A collection (yours, or shared.<name>).")],
    tenant: TenantOption = None,
    server: ServerOption = None,
    api_key: ApiKeyOption = None,
    config: ConfigOption = None,
) -> None:
    """The documents in a collection, with their chunk counts."""
    with _client(server, api_key, config, tenant) as client:
        rows = call(client, "GET", f"/v1/rag/collections/{quote(collection, safe='')}/documents")["data"]
    table = Table("source", "chunks", "content sha256")
    for d in rows:
        table.add_row(d["source"], str(d["chunks"]), d["content_sha256"][:16])
    console.print(table)


@rag_app.command("delete")
def rag_delete(
    collection: Annotated[str, typer.Argument(help="The collection.")],
    source: Annotated[
        str | None, typer.Argument(help="One document's source; without it, the whole collection.")
    ] = None,
    tenant: TenantOption = None,
    server: ServerOption = None,
    api_key: ApiKeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Delete one document, or a collection with all its documents."""
    path = f"/v1/rag/collections/{quote(collection, safe='')}/documents"
    if source is not None:  # sources are often paths: their slashes stay (the route takes a path)
        path += "/" + quote(source, safe="/")
    with _client(server, api_key, config, tenant) as client:
        call(client, "DELETE", path)
    console.print(f"deleted {source!r} from {collection!r}" if source else f"deleted collection {collection!r}")


@rag_app.command("share")
def rag_share(
    name: Annotated[str, typer.Argument(help="The shared collection's name (requests call it shared.<name>).")],
    tenants: Annotated[list[str], typer.Option("--tenant", help="A tenant that may read it (repeat).")],
    server: ServerOption = None,
    master_key: MasterKeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Say which tenants may read a shared collection (replaces the list; admin keys write its documents)."""
    result = admin_call(
        server, master_key, config, "PUT", f"/admin/rag/shared/{quote(name, safe='')}", json={"tenants": tenants}
    )
    console.print(f"{result['id']} is readable by: {', '.join(result['tenants']) or 'admins only'}")


def batches(
    watch: Annotated[bool, typer.Option(help="Refresh every 2 s until no batch is running.")] = False,
    ids: Annotated[
        bool, typer.Option(help="Only ids: batch, status, output file, error file (tab-separated).")
    ] = False,
    limit: Annotated[int, typer.Option(help="How many of the newest batches to show.")] = 20,
    tenant: TenantOption = None,
    server: ServerOption = None,
    api_key: ApiKeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Your tenant's batches (OpenAI Batch API) with their progress and counts, and the queue for admin keys."""
    from rich.live import Live
    from rich.progress_bar import ProgressBar

    client = _client(server, api_key, config, tenant)

    def render() -> tuple[Table, bool]:
        data = call(client, "GET", "/v1/batches", params={"limit": limit})["data"]
        whole = {"overflow": "fold", "min_width": 12}  # ids whole (folded on a narrow screen), never cut with "…"
        table = Table(
            Column("batch", **whole), "status", "progress", "done/total", "completed", "failed",
            Column("output file", **whole), Column("error file", **whole),
            caption_justify="left",
        )  # fmt: skip
        running = False
        for b in data:
            counts = b["request_counts"]
            done = counts["completed"] + counts["failed"]
            running |= b["status"] in ("validating", "in_progress", "finalizing", "cancelling")
            table.add_row(
                b["id"], b["status"], ProgressBar(total=max(counts["total"], 1), completed=done, width=24),
                f"{done}/{counts['total']}", str(counts["completed"]), str(counts["failed"]),
                b["output_file_id"] or "-", b["error_file_id"] or "-",
            )  # fmt: skip
        queue = client.get("/admin/batch-queue")
        if queue.status_code == 200:
            q = queue.json()
            table.caption = f"queue: {q['queue_depth']} requests waiting or running, oldest {q['oldest_age_s']:.0f} s"
        table.caption = (table.caption + "; " if table.caption else "") + "--ids: the ids alone, one batch per line"
        return table, running

    with client:
        if ids:
            for b in call(client, "GET", "/v1/batches", params={"limit": limit})["data"]:
                print("\t".join((b["id"], b["status"], b["output_file_id"] or "-", b["error_file_id"] or "-")))
            return
        table, running = render()
        if not watch or not running:
            console.print(table)
            return
        with Live(table, console=console, refresh_per_second=2) as live:
            while running:
                threading.Event().wait(2.0)
                table, running = render()
                live.update(table)
