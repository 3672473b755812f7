"""README's table of served endpoints and the app's routes are one: every row names routes the app has, and every
OpenAI- or Anthropic-compatible route the app has is in the table."""

import re
from pathlib import Path

from fastapi.routing import APIRoute

from deployments import chat_api, embeddings_api, messages_api, openai_api, responses_api

README = Path(__file__).resolve().parents[2] / "README.md"
COMPATIBLE = re.compile(r"^/v1/(chat/completions|completions|embeddings|responses|messages|models)")


def _table_routes() -> set[tuple[str, str]]:
    text = README.read_text()
    table = text[text.index("| endpoint | served |") :].split("\n\n", 1)[0]
    routes = set()
    for row in table.splitlines()[2:]:
        first_cell = row.split("|")[1]
        routes |= set(re.findall(r"`(GET|POST|DELETE) (/v1/[^`]+)`", first_cell))
    return routes


def _app_routes() -> set[tuple[str, str]]:
    found = set()
    for module in (chat_api, openai_api, embeddings_api, messages_api, responses_api):
        for route in module.router.routes:
            if isinstance(route, APIRoute) and COMPATIBLE.match(route.path):
                found |= {(method, re.sub(r"\{[^}]+\}", "{id}", route.path)) for method in route.methods}
    return found


def test_the_readme_table_lists_exactly_the_compatible_routes():
    table = {(m, re.sub(r"\{[^}]+\}", "{id}", p)) for m, p in _table_routes()}
    assert table == _app_routes()
