"""A multi-node Ray cluster on one Linux machine, for trying a cluster deployment (`serve deploy`, replicas
placed by custom resources, a node lost and back) without a second machine. Needs root.

Each Ray node runs in a network namespace of its own, with its own IP on a bridge that veth pairs join:

    10.77.0.1   the bridge, in the machine's own namespace (where `serve deploy` and clients run)
    10.77.0.2   node `head`: the Ray head (GCS, Serve controller, HTTP proxy) and the light deployments
    10.77.0.3+  nodes `worker1`...: Ray workers with the custom resource the vLLM replicas need
    10.77.0.10  node `state`: Redis (deploy/redis.conf, a password) and a Chroma server, servers of their own

    python -m deploy.netns_cluster up                 # network, Redis, Chroma, Ray head and worker
    python -m deploy.netns_cluster deploy             # serve deploy deploy/serve-cpu.yaml, placed by resources
    python -m deploy.netns_cluster kill-node worker1  # SIGKILL every process of that node
    python -m deploy.netns_cluster start-node worker1
    python -m deploy.netns_cluster down

Losing a node is killing every process in its namespace (`ip netns pids`), which is what a machine that dies
looks like to the rest of the cluster. The state of a running cluster is kept in <workdir>/cluster.json.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
import typer
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GCS_PORT = 6380
DASHBOARD_PORT = 8265
HTTP_PORT = 8000
REDIS_PORT = 6379
CHROMA_PORT = 8000
WORKER_RESOURCE = "llm_node"  # what each vLLM replica needs (a GPU node's stand-in for accelerator_type)
HEAD_RESOURCE = "cpu_node"  # what each light replica needs (ingress, orchestrator, retriever, batch worker)


@dataclass
class Node:
    name: str
    ip: str
    num_cpus: int = 4
    resources: dict[str, float] = field(default_factory=dict)


@dataclass
class NetnsCluster:
    """The cluster's layout and secrets; `create()` builds it, `destroy()` removes every trace of it."""

    workdir: Path
    prefix: str = "llms"
    subnet: str = "10.77.0"
    workers: int = 1
    worker_replicas: int = 2  # vLLM replicas each worker can hold (its units of WORKER_RESOURCE)
    redis_password: str = field(default_factory=lambda: secrets.token_hex(12))
    master_key: str = field(default_factory=lambda: "sk-" + secrets.token_hex(16))
    env: dict[str, str] = field(default_factory=dict)  # more environment for the Ray nodes (provider keys)

    # -- layout

    @property
    def bridge_ip(self) -> str:
        return f"{self.subnet}.1"

    @property
    def head(self) -> Node:
        return Node("head", f"{self.subnet}.2", 4, {HEAD_RESOURCE: 100})

    def worker(self, i: int) -> Node:
        return Node(f"worker{i}", f"{self.subnet}.{2 + i}", 4, {WORKER_RESOURCE: self.worker_replicas})

    @property
    def state_node(self) -> Node:
        return Node("state", f"{self.subnet}.10")

    def nodes(self) -> list[Node]:
        return [self.state_node, self.head, *(self.worker(i) for i in range(1, self.workers + 1))]

    def node(self, name: str) -> Node:
        for node in self.nodes():
            if node.name == name:
                return node
        raise KeyError(f"no node {name!r}: {[n.name for n in self.nodes()]}")

    def namespace(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br0"

    @property
    def redis_url(self) -> str:
        return f"redis://:{self.redis_password}@{self.state_node.ip}:{REDIS_PORT}/0"

    @property
    def chroma_url(self) -> str:
        return f"http://{self.state_node.ip}:{CHROMA_PORT}"

    @property
    def dashboard(self) -> str:
        return f"http://{self.head.ip}:{DASHBOARD_PORT}"

    @property
    def url(self) -> str:
        return f"http://{self.head.ip}:{HTTP_PORT}"

    # -- the network

    def create(self) -> None:
        """The bridge, one namespace per node joined to it by a veth pair, Redis and Chroma, the Ray head and
        its workers. Removes a cluster of the same prefix left behind first."""
        self.destroy()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.save()
        # Ray turns token authentication on for `ray start` clusters; every node (one file system) reads this one.
        subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], check=True, capture_output=True)
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.bridge_ip}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for node in self.nodes():
            ns, outside = self.namespace(node.name), f"{self.prefix}-{node.name}"[:15]
            _ip("netns", "add", ns)
            _ip("link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", outside, "master", self.bridge, "up")
            for args in (
                ("addr", "add", f"{node.ip}/24", "dev", "eth0"),
                ("link", "set", "eth0", "up"),
                ("link", "set", "lo", "up"),
                ("route", "add", "default", "via", self.bridge_ip),
            ):
                _ip("-n", ns, *args)
        self.start_state()
        self.start_node("head")
        for i in range(1, self.workers + 1):
            self.start_node(f"worker{i}")

    def destroy(self) -> None:
        """Every namespace of this prefix (a cluster left behind may have had more workers) and the bridge."""
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
        names = {line.split()[0] for line in listed if line.startswith(f"{self.prefix}-")}
        for ns in names | {self.namespace(node.name) for node in self.nodes()}:
            self._kill_namespace(ns)
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
        subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True)

    def save(self) -> None:
        """The layout and its secrets (Redis password, master key): readable by the owner only."""
        state = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
        path = self.workdir / "cluster.json"
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(json.dumps(state, indent=2))

    @classmethod
    def load(cls, workdir: Path) -> NetnsCluster:
        state = json.loads((workdir / "cluster.json").read_text())
        return cls(**{**state, "workdir": Path(state["workdir"])})

    # -- processes

    def run_in(self, node: str, args: list[str], log: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """`args` started in the node's namespace, in a session of its own, its output in <workdir>/<log>."""
        with open(self.workdir / log, "a") as out:
            return subprocess.Popen(
                ["ip", "netns", "exec", self.namespace(node), *args],
                env=env or self.node_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.workdir,
            )

    def node_env(self) -> dict[str, str]:
        """What the app finds in its Ray nodes' environment: state addresses and secrets (not in the config)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "LLMSERVE_"))}
        env |= {"REDIS_URL": self.redis_url, "LLMSERVE_RAG__CHROMA_URL": self.chroma_url}
        env |= {"LLMSERVE_MASTER_KEY": self.master_key, "LLMSERVE_DATA_DIR": str(self.workdir / "data")}
        env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_AUTH_MODE": "token"}
        return env | self.env

    def start_state(self) -> None:
        node, redis_dir = self.state_node, self.workdir / "redis"
        redis_dir.mkdir(exist_ok=True)
        redis_server = shutil.which("redis-server") or "redis-server"
        args = [redis_server, str(ROOT / "deploy" / "redis.conf"), "--port", str(REDIS_PORT), "--bind", node.ip]
        args += ["--requirepass", self.redis_password, "--dir", str(redis_dir), "--daemonize", "no"]
        self.run_in("state", args, "redis.log")
        _wait(lambda: redis.Redis.from_url(self.redis_url, socket_timeout=2).ping(), 30, "the Redis server")
        chroma = [str(BIN / "chroma"), "run", "--path", str(self.workdir / "chroma")]
        self.run_in("state", [*chroma, "--host", node.ip, "--port", str(CHROMA_PORT)], "chroma.log")
        _wait(lambda: httpx.get(f"{self.chroma_url}/api/v2/heartbeat").status_code == 200, 60, "the Chroma server")

    def start_node(self, name: str) -> None:
        """`ray start` in the node's namespace: the head, or a worker joining it."""
        node = self.node(name)
        args = [str(BIN / "ray"), "start", "--node-ip-address", node.ip, "--num-cpus", str(node.num_cpus)]
        args += ["--resources", json.dumps(node.resources), "--disable-usage-stats", "--block"]
        args += ["--object-store-memory", str(512 * 1024 * 1024)]
        if name == "head":
            args += ["--head", "--port", str(GCS_PORT), "--temp-dir", str(self.workdir / "ray")]
            args += ["--dashboard-host", "0.0.0.0", "--dashboard-port", str(DASHBOARD_PORT)]
        else:
            args += ["--address", f"{self.head.ip}:{GCS_PORT}"]
        process = self.run_in(name, args, f"ray-{name}.log")
        up = (lambda: self.node_alive(self.head.ip)) if name == "head" else (lambda: self.node_alive(node.ip))
        _wait(lambda: _running(process, name) and up(), 120, f"Ray node {name}")

    def kill_node(self, name: str) -> list[int]:
        """SIGKILL every process in the node's namespace (the node is lost); the pids it killed."""
        return self._kill_namespace(self.namespace(name))

    @staticmethod
    def _kill_namespace(ns: str) -> list[int]:
        killed: list[int] = []
        for _ in range(20):
            found = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            pids = [int(p) for p in found.stdout.split()]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        return killed

    # -- Ray and Serve, from outside

    def ray_nodes(self) -> list[dict[str, Any]]:
        """Ray's nodes as its dashboard lists them (with their state: ALIVE or DEAD)."""
        reply = httpx.get(f"{self.dashboard}/nodes?view=summary", headers=self.auth(), timeout=10)
        reply.raise_for_status()
        return reply.json()["data"]["summary"]

    def node_alive(self, ip: str) -> bool:
        return any(
            n["raylet"]["state"] == "ALIVE" and n["raylet"].get("nodeManagerAddress", n.get("ip")) == ip
            for n in self.ray_nodes()
        )

    def auth(self) -> dict[str, str]:
        """The cluster's token (Ray turns token authentication on for `ray start` clusters)."""
        token = Path.home() / ".ray" / "auth_token"
        return {"Authorization": f"Bearer {token.read_text().strip()}"} if token.exists() else {}

    def serve(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """The `serve` CLI against this cluster's dashboard."""
        env = {**os.environ, "RAY_AUTH_MODE": "token"}
        command = [str(BIN / "serve"), *args, "-a", self.dashboard]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)

    def placed_config(self, config: Path, args: dict[str, Any] | None = None) -> Path:
        """`config` (a Serve config of this app) placed on this cluster: the vLLM replicas on the workers, the
        light deployments on the head, HTTP on the head's IP; `args`: merged into the app's arguments."""
        placed = yaml.safe_load(config.read_text())
        placed["http_options"] = {**placed.get("http_options", {}), "host": "0.0.0.0", "port": HTTP_PORT}
        app = placed["applications"][0]
        app_args = app.setdefault("args", {})
        app_args.setdefault("engine", {})["ray_resources"] = {WORKER_RESOURCE: 1}
        app_args.setdefault("replicas", {})["light_ray_resources"] = {HEAD_RESOURCE: 0.01}
        _merge(app_args, args or {})
        out = self.workdir / f"placed-{config.name}"
        out.write_text(yaml.safe_dump(placed, sort_keys=False))
        return out

    def deploy(self, config: Path, args: dict[str, Any] | None = None, timeout_s: float = 600) -> None:
        """`serve deploy` the placed config and wait until the app runs."""
        done = self.serve("deploy", str(self.placed_config(config, args)))
        if done.returncode != 0:
            raise RuntimeError(f"serve deploy failed: {done.stderr}")

        def running() -> bool:
            app = self.app()
            if app["status"] == "DEPLOY_FAILED":
                raise RuntimeError(f"the app failed to deploy: {app.get('message', '')[:2000]}")
            return app["status"] == "RUNNING"

        _wait(running, timeout_s, "the app")

    def app(self, name: str = "llmserve") -> dict[str, Any]:
        """The app's details from Serve's REST API: deployments, their replicas and the node each runs on."""
        reply = httpx.get(f"{self.dashboard}/api/serve/applications/", headers=self.auth(), timeout=30)
        reply.raise_for_status()
        return reply.json()["applications"].get(name) or {"status": "NOT_STARTED", "deployments": {}}

    def replicas(self, deployment: str) -> list[dict[str, Any]]:
        """The deployment's replicas (state, node_ip) as Serve reports them."""
        return self.app().get("deployments", {}).get(deployment, {}).get("replicas", [])


def _merge(into: dict[str, Any], more: dict[str, Any]) -> None:
    for key, value in more.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _running(process: subprocess.Popen, name: str) -> bool:
    if process.poll() is not None:
        raise RuntimeError(f"Ray node {name} exited ({process.returncode}): see ray-{name}.log")
    return True


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _wait(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.HTTPError, redis.RedisError, KeyError, OSError, ValueError):  # not up yet
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not come up in {timeout_s:.0f} s")


cli = typer.Typer(help=__doc__.split("\n\n")[0], no_args_is_help=True)
WORKDIR = typer.Option(Path.home() / ".llmserve" / "netns-cluster", help="Where the cluster keeps its files.")


@cli.command()
def up(workdir: Path = WORKDIR, workers: int = 1, worker_replicas: int = 2) -> None:
    """Build the network and start Redis, Chroma, the Ray head and its workers."""
    cluster = NetnsCluster(workdir, workers=workers, worker_replicas=worker_replicas)
    cluster.create()
    typer.echo(f"Ray dashboard {cluster.dashboard}; Redis {cluster.redis_url}; Chroma {cluster.chroma_url}")
    typer.echo(f"master key {cluster.master_key} (also in {workdir / 'cluster.json'})")


@cli.command()
def deploy(config: Path = ROOT / "deploy" / "serve-cpu.yaml", workdir: Path = WORKDIR) -> None:
    """serve deploy CONFIG placed on the cluster, and wait until it runs."""
    cluster = NetnsCluster.load(workdir)
    cluster.deploy(config)
    typer.echo(f"running: {cluster.url}/v1 (key {cluster.master_key})")


@cli.command("kill-node")
def kill_node(name: str, workdir: Path = WORKDIR) -> None:
    """SIGKILL every process of node NAME."""
    typer.echo(f"killed {len(NetnsCluster.load(workdir).kill_node(name))} processes")


@cli.command("start-node")
def start_node(name: str, workdir: Path = WORKDIR) -> None:
    """Start node NAME's Ray again (it rejoins the head)."""
    NetnsCluster.load(workdir).start_node(name)


@cli.command()
def down(workdir: Path = WORKDIR) -> None:
    """Stop every process of the cluster and remove its network."""
    NetnsCluster.load(workdir).destroy()


if __name__ == "__main__":
    cli()
