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


def test_every_engine_metric_the_dashboard_queries_is_one_vllm_defines():
    """vLLM's metrics reach Prometheus through Ray as ray_vllm_<name> (':' becomes '_')."""
    import vllm.v1.metrics.loggers as loggers

    source = Path(loggers.__file__).read_text()
    defined = {name.replace(":", "_") for name in re.findall(r'"(vllm:[a-z_]+)"', source)}
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {
        re.sub(r"_(bucket|sum|count|total)$", "", name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bray_(vllm_[a-z0-9_]+)", target["expr"])
    }
    assert {
        "vllm_request_queue_time_seconds",
        "vllm_request_prefill_time_seconds",
        "vllm_kv_cache_usage_perc",
    } <= queried
    assert queried <= defined, f"not vLLM metrics: {queried - defined}"


def test_the_dashboard_can_be_narrowed_to_a_node_and_a_model():
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"datasource", "instance", "model"} <= set(variables)
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            assert 'instance=~"$instance"' in target["expr"], (panel["title"], target["expr"])
