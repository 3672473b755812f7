"""deploy/serve-cpu.yaml (the CPU twin of deploy/serve-gpu.yaml) deployed the way a cluster operator does it:
`ray start --head`, then `serve deploy`, against production-style state: a password-protected Redis with AOF
(deploy/redis.conf) and a Chroma server process. Secrets and addresses reach the app through the Ray node's
environment, never the config file."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import chromadb
import httpx
import pytest
import yaml
from openai import OpenAI

from core.names import ADMIN_TENANT
from rag.collections import physical_name
from tests.services import ROOT, ChromaServer, RedisServer, free_port, wait_until

pytestmark = pytest.mark.integration
TWIN = ROOT / "deploy" / "serve-cpu.yaml"
KEY = "sk-twin-master-key-0123456789"
BIN = Path(sys.executable).parent
ZORVIA = "Zorvia is a small planet. The capital city of Zorvia is Quenlar."


class Cluster:
    """A Ray head started with `ray start --head --block` in its own process group and temp dir, so it is
    stopped by killing that group (a machine-wide `ray stop` would also stop the test session's Ray)."""

    def __init__(self, workdir: Path, env: dict[str, str]):
        self.dashboard = f"http://127.0.0.1:{free_port()}"
        ports = {"--port": free_port(), "--ray-client-server-port": free_port()}
        ports |= {"--dashboard-agent-listen-port": free_port(), "--dashboard-port": self.dashboard.rsplit(":", 1)[1]}
        args = [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "8", "--disable-usage-stats"]
        args += ["--temp-dir", str(workdir / "ray")] + [str(x) for kv in ports.items() for x in kv]
        self.log = open(workdir / "ray-start.log", "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            args, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        # Up when it answers: 401 too, since Ray 2.60 turns token authentication on for `ray start` clusters.
        wait_until(lambda: httpx.get(f"{self.dashboard}/api/version").status_code in (200, 401), 120, "dashboard")
        # The `serve` CLI sends the cluster's token (~/.ray/auth_token) only when told to.
        self.cli_env = {**env, "RAY_AUTH_MODE": "token"}

    def serve(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "serve"), *args, "-a", self.dashboard],
            capture_output=True,
            text=True,
            timeout=120,
            env=self.cli_env,
        )

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
                self.process.wait(timeout=30)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        self.log.close()


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("twin")
    redis_server = RedisServer(workdir / "redis").start()
    chroma = ChromaServer(workdir / "chroma").start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "LLMSERVE_"))}
    env |= {"REDIS_URL": redis_server.url, "LLMSERVE_RAG__CHROMA_URL": chroma.url, "LLMSERVE_MASTER_KEY": KEY}
    env |= {"LLMSERVE_DATA_DIR": str(workdir / "data"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if "LLMSERVE_TEST_MODEL_CACHE_DIR" in os.environ:
        env["LLMSERVE_ENGINE__MODEL_CACHE_DIR"] = os.environ["LLMSERVE_TEST_MODEL_CACHE_DIR"]
    config = yaml.safe_load(TWIN.read_text())
    http_port = free_port()
    config["http_options"]["port"] = http_port
    config_path = workdir / "serve-cpu.yaml"
    config_path.write_text(yaml.safe_dump(config))
    cluster = None
    try:
        cluster = Cluster(workdir, env)
        deployed = cluster.serve("deploy", str(config_path))
        assert deployed.returncode == 0, deployed.stderr
        wait_until(lambda: _app_status(cluster)["status"] == "RUNNING", 420, "the twin app")
        yield cluster, f"http://127.0.0.1:{http_port}", redis_server, chroma
    finally:
        if cluster is not None:
            cluster.stop()
        chroma.stop()
        redis_server.stop()
        shutil.rmtree(workdir / "ray", ignore_errors=True)


def _app_status(cluster: Cluster) -> dict:
    status = cluster.serve("status")
    assert status.returncode == 0, status.stderr
    return yaml.safe_load(status.stdout)["applications"]["llmserve"]


def test_serve_status_reports_every_deployment_healthy(twin):
    cluster, *_ = twin
    app = _app_status(cluster)
    assert app["status"] == "RUNNING"
    assert set(app["deployments"]) == {
        "Ingress",
        "Orchestrator",
        "Retriever",
        "BatchWorker",
        "LLM:SmolLM2-135M-Instruct",
    }
    assert {d["status"] for d in app["deployments"].values()} == {"HEALTHY"}


def test_the_twin_answers_with_rag_from_the_chroma_server_and_state_in_the_password_redis(twin):
    _, url, redis_server, chroma = twin
    ingest = httpx.post(
        f"{url}/v1/rag/documents",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"collection": "twin", "documents": [{"source": "zorvia.md", "text": ZORVIA}]},
        timeout=60,
    )
    assert ingest.status_code == 200, ingest.text
    client = OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)
    started = time.monotonic()
    reply = client.chat.completions.create(
        model="SmolLM2-135M-Instruct",
        temperature=0,
        max_tokens=24,
        messages=[{"role": "user", "content": "What is the capital city of Zorvia?"}],
        extra_body={"rag": {"collection": "twin"}, "conversation_id": "twin-1"},
    )
    assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
    # Retrieval went to the Chroma server: the cited chunk is the document ingested through the twin.
    citation = reply.model_extra["citations"][0]
    assert citation["source"] == "zorvia.md" and "Quenlar" in citation["text"]
    assert time.monotonic() - started < 60
    # The chunks live in the Chroma server, not on a local disk.
    server_side = chromadb.HttpClient(host="127.0.0.1", port=int(chroma.url.rsplit(":", 1)[1]))
    assert server_side.get_collection(physical_name(ADMIN_TENANT, "twin")).count() >= 1  # the admin tenant's "twin"
    # The turn was committed to the password-protected Redis, under the (master key's) tenant.
    keys = list(redis_server.client().scan_iter(f"llmserve:t:{{{ADMIN_TENANT}}}:conv:twin-1*"))
    assert keys, "no conversation key in the production Redis"
