"""What every `llmserve` command shares: the settings, the console, and one way to talk to a running server
(a server that does not answer is one line naming its URL, never a traceback; an error is its message)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

console = Console()

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML file of settings (the same groups as LLMSERVE_<GROUP>__<FIELD>)."),
]
ServerOption = Annotated[str | None, typer.Option(help="URL of the running llmserve (default from settings).")]
MasterKeyOption = Annotated[
    str | None, typer.Option("--master-key", envvar="LLMSERVE_MASTER_KEY", help="The master key (or an admin key).")
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option("--api-key", envvar=["LLMSERVE_API_KEY", "LLMSERVE_MASTER_KEY"], help="The API key to act with."),
]


def settings_from(config: Path | None, **groups: dict):
    """The settings, with `groups` ({group: {field: value}}) given as arguments where a value is not None."""
    if config is not None:
        if not config.exists():
            raise typer.BadParameter(f"no such file: {config}", param_hint="--config")
        os.environ["LLMSERVE_CONFIG"] = str(config.resolve())
    from core.settings import Settings

    given = {group: {k: v for k, v in fields.items() if v is not None} for group, fields in groups.items()}
    return Settings(**{group: fields for group, fields in given.items() if fields})


def server_url(settings) -> str:
    return f"http://{settings.server.host}:{settings.server.port}"


def server_client(server: str | None, key: str | None, config: Path | None, what: str = "the API") -> httpx.Client:
    """A client for the running server, authenticated with `key`."""
    if not key:
        raise typer.BadParameter(f"{what} needs a key: set LLMSERVE_MASTER_KEY (or LLMSERVE_API_KEY) or pass it")
    url = server or server_url(settings_from(config))
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> dict:
    """One request; the JSON answer, or one red line and exit 1."""
    try:
        response = client.request(method, path, **kwargs)
    except httpx.TransportError as exc:
        console.print(f"[red]llmserve is not answering at {client.base_url} ({type(exc).__name__}): is it up?[/]")
        raise typer.Exit(1) from None
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        console.print(f"[red]{response.status_code}: {message}[/]")
        raise typer.Exit(1)
    return response.json()


def admin_call(server: str | None, key: str | None, config: Path | None, method: str, path: str, **kwargs: Any) -> dict:
    """One request to the admin API of the running server."""
    with server_client(server, key, config, "the admin API") as client:
        return call(client, method, path, **kwargs)


def server_answers(url: str) -> bool:
    try:
        httpx.get(f"{url}/healthz", timeout=3)
        return True
    except httpx.HTTPError:
        return False


def parse_duration(text: str) -> float:
    """'90s', '30m', '12h', '7d' (or plain seconds) -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        value = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise typer.BadParameter(f"not a duration: {text!r} (e.g. 90s, 30m, 12h, 7d)")
    return value
