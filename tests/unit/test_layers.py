"""The house reads from the ground up: no import of ours runs upward (DESIGN.md §1, "Layers").

    serve_app/                      builder, runtime, CLI, model preparation         (top)
    deployments/                    the Serve deployments, gateway, providers
    state/   rag/   observability/  Redis, retrieval, metrics: each on core alone
    core/                           settings, models, errors, pricing, tokens        (ground: imports nothing of ours)

benchmarks/ is a harness outside the product: it may import anything, and nothing of the product imports it.
Every import counts: at module level, inside functions, under TYPE_CHECKING, and "module:attr" import paths
handed to Serve. `python -m tests.unit.test_layers [ROOT]` prints how many imports run between the packages.
"""

from __future__ import annotations

import ast
import re
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).parents[2]
PRODUCT = ("core", "state", "rag", "observability", "deployments", "serve_app")
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "state": {"core", "state"},
    "rag": {"core", "rag"},
    "observability": {"core", "observability"},
    "deployments": {"core", "state", "rag", "observability", "deployments"},
    "serve_app": set(PRODUCT),
    "benchmarks": {*PRODUCT, "benchmarks", "tests"},
}
OURS = (*PRODUCT, "benchmarks", "tests")
_IMPORT_PATH = re.compile(rf"^({'|'.join(OURS)})(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def imports(path: Path) -> list[tuple[str, int]]:
    """(top-level package of ours, line) for every import in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _IMPORT_PATH.match(node.value):
            names = [node.value]
        found += [(name.split(".")[0].split(":")[0], node.lineno) for name in names]
    return [(top, line) for top, line in found if top in OURS]


def edges(root: Path = ROOT) -> list[tuple[str, str, str]]:
    """(importing package, imported package, where) for every import between our packages."""
    out = []
    for package in ALLOWED:
        for path in sorted((root / package).rglob("*.py")) if (root / package).is_dir() else []:
            for target, line in imports(path):
                out.append((package, target, f"{path.relative_to(root)}:{line}"))
    return out


def test_no_import_runs_upward():
    upward = [
        f"{where}: {source} imports {target}" for source, target, where in edges() if target not in ALLOWED[source]
    ]
    assert upward == []


def test_the_check_sees_an_upward_import(tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "x.py").write_text(
        "from core.keys import key_hash\ndef f():\n    from deployments.gateway import Gateway\n"
        "POLICY = 'serve_app.builder:build_app'\n"
    )
    assert [(s, t) for s, t, _ in edges(tmp_path)] == [
        ("state", "core"),
        ("state", "deployments"),
        ("state", "serve_app"),
    ]


if __name__ == "__main__":
    counts = Counter((s, t) for s, t, _ in edges(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT) if s != t)
    for (source, target), n in sorted(counts.items()):
        mark = "" if target in ALLOWED.get(source, set()) else "   <- runs upward"
        print(f"{source:>13} -> {target:<13} {n:3d}{mark}")
