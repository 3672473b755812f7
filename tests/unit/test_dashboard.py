"""The Grafana dashboard queries exactly the metrics the code defines (observability/prom.py)."""

import json
import re
from pathlib import Path

from observability.prom import COUNTERS, GAUGES, HISTOGRAMS

DASHBOARD = Path(__file__).parents[2] / "observability" / "grafana" / "llmserve.json"


def test_every_dashboard_query_uses_a_defined_metric_and_every_metric_has_a_panel():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = set()
    for expr in exprs:
        for name in re.findall(r"\bray_(llmserve_[a-z0-9_]+)", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert base in HISTOGRAMS or base in COUNTERS or base in GAUGES, f"undefined metric {name!r}"
            if base in HISTOGRAMS:
                assert name != base, f"a histogram is queried through _bucket/_sum/_count, not {name!r}"
            used.add(base)
    defined = set(HISTOGRAMS) | set(COUNTERS) | set(GAUGES)
    assert used == defined, f"metrics without a panel: {defined - used}"
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"])
