"""The Grafana dashboard against a real Prometheus (Debian's `prometheus` package) scraping the session's stack
with deploy/prometheus.yml's job (its discovery file swapped for the stack's metrics port): every query of every
panel returns data.

This file runs after the session's other integration tests (pytest keeps file order), whose failovers, 503s,
errors and batches are in the counters by then. Only vLLM's preemption counter may be absent: vLLM exports it
from the first preemption on, and this load never fills the KV cache."""

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.integration.conftest import MASTER_KEY, MODEL
from tests.services import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[2]
DASHBOARD = ROOT / "observability" / "grafana" / "llmserve.json"
SCRAPE_CONFIG = ROOT / "deploy" / "prometheus.yml"
EXPORTED_FROM_THE_FIRST_EVENT = ("ray_vllm_num_preemptions_total",)


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: apt-get install prometheus (.ci/run does)")
    return found


def test_the_shipped_scrape_config_is_valid():
    done = subprocess.run([_binary("promtool"), "check", "config", str(SCRAPE_CONFIG)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def prometheus(stack, tmp_path_factory):
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    config["global"]["scrape_interval"] = "1s"
    (job,) = config["scrape_configs"]
    del job["file_sd_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{stack.settings.metrics.export_port}"]}]
    folder = tmp_path_factory.mktemp("prometheus")
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [
            _binary("prometheus"),
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(folder / "prometheus.log", "w"),  # noqa: SIM115 - open as long as the process
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (folder / "prometheus.log").read_text()[-2000:]
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (
            panel["title"],
            target["expr"].replace("$__rate_interval", "1m").replace("$instance", ".*").replace("$model", ".*"),
        )
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]


def _load(base_url: str, headers: dict, stop: threading.Event, errors: list[str]) -> None:
    """Requests one after another until told to stop: the engine's gauges (KV-cache use, running, waiting) are
    exported only while it works, and the same long prompt each time makes prefix-cache hits."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 24, "rag": False}
    with httpx.Client(base_url=base_url, headers=headers, timeout=120) as client:
        while not stop.is_set():
            reply = client.post("/v1/chat/completions", json=body)
            if reply.status_code != 200:
                errors.append(f"{reply.status_code} {reply.text[:300]}")
                stop.set()


# ~330 tokens: vLLM's CPU backend caches prefixes in blocks of 128 tokens (platforms/cpu.py), so a shorter prompt
# never hits.
PROMPT = "Describe, in two short sentences, how a river carries sand from the mountains down to the sea. " * 16


def test_every_dashboard_query_returns_data_from_the_running_stack(prometheus, http, base_url):
    assert http.post("/v1/chat/completions", json={"model": MODEL}).status_code == 400
    stop, errors = threading.Event(), []
    auth = {"Authorization": f"Bearer {MASTER_KEY}"}
    loader = threading.Thread(target=_load, args=(base_url, auth, stop, errors), daemon=True)
    loader.start()
    try:
        _wait_for_every_query(prometheus, errors)
    finally:
        stop.set()
        loader.join(timeout=120)
    print(f"\n[prometheus] {len(_queries())} dashboard queries, each with data")


def _wait_for_every_query(prometheus: str, load_errors: list[str]) -> None:
    deadline = time.monotonic() + 120  # Ray's agent exports every few seconds; Prometheus scrapes every second
    while True:
        assert not load_errors, f"the background load failed: {load_errors}"
        empty = []
        for title, expr in _queries():
            reply = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
            assert reply["status"] == "success", (title, expr, reply)
            if not reply["data"]["result"] and not any(m in expr for m in EXPORTED_FROM_THE_FIRST_EVENT):
                empty.append(f"{title}: {expr}")
        if not empty:
            break
        assert time.monotonic() < deadline, "queries without data:\n" + "\n".join(empty)
        time.sleep(3)
