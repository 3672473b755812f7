"""Real server processes that tests start themselves: a production-configured Redis (deploy/redis.conf:
AOF, password), a Redis Sentinel in front of it, and a Chroma server (`chroma run`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from benchmarks.ports import free_port

ROOT = Path(__file__).parents[1]
REDIS_CONF = ROOT / "deploy" / "redis.conf"


def redis_values(client, name: str) -> list:
    """Every value a Redis key holds, whatever its type (for scans that must not find something)."""
    return {
        "hash": lambda: list(client.hgetall(name).values()),
        "set": lambda: list(client.smembers(name)),
        "string": lambda: [client.get(name)],
        "list": lambda: client.lrange(name, 0, -1),
        "zset": lambda: client.zrange(name, 0, -1),
        "stream": lambda: [fields for _, fields in client.xrange(name)],
    }[client.type(name)]()


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # not up yet
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not come up in {timeout_s} s")


@dataclass
class RedisServer:
    """redis-server started from deploy/redis.conf, on its own port and data folder, with a password."""

    data_dir: Path
    password: str = "s3cret-pass"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, decode_responses=True)

    def start(self) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir)]
        args += ["--requirepass", self.password, "--masterauth", self.password, "--daemonize", "no"]
        args += ["--logfile", str(self.data_dir / "redis.log")]
        self.process = subprocess.Popen([_redis_server(), str(REDIS_CONF), *args])
        wait_until(lambda: self.client().ping(), 10, f"redis on {self.port}")
        return self

    def stop(self, kill: bool = False) -> None:
        """SIGTERM: a clean shutdown (AOF flushed). kill=True: SIGKILL, a crash."""
        _stop(self.process, kill)
        self.process = None


@dataclass
class SentinelServer:
    """One Redis Sentinel watching `master` as service `service_name`."""

    master: RedisServer
    work_dir: Path
    service_name: str = "llmserve"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://:{self.master.password}@127.0.0.1:{self.port}/{self.service_name}/0"

    def start(self) -> SentinelServer:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        conf = self.work_dir / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.work_dir}\n"
            f"sentinel monitor {self.service_name} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel auth-pass {self.service_name} {self.master.password}\n"
        )
        self.process = subprocess.Popen(
            [_redis_server(), str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis(port=self.port, decode_responses=True)
        wait_until(lambda: client.sentinel_master(self.service_name)["ip"], 10, f"sentinel on {self.port}")
        return self

    def stop(self) -> None:
        _stop(self.process)
        self.process = None


@dataclass
class ChromaServer:
    """`chroma run` (Chroma's own server) on a folder; the app reaches it through chromadb.HttpClient."""

    path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ChromaServer:
        chroma = Path(sys.executable).with_name("chroma")
        self.process = subprocess.Popen(
            [str(chroma), "run", "--path", str(self.path), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: httpx.get(f"{self.url}/api/v2/heartbeat").status_code == 200, 30, "chroma server")
        return self

    def stop(self) -> None:
        _stop(self.process)
        self.process = None


def _stop(process: subprocess.Popen | None, kill: bool = False) -> None:
    """SIGTERM (a clean shutdown) or SIGKILL (a crash), then wait for it."""
    if process is None:
        return
    if kill:
        process.kill()
    else:
        process.terminate()
    process.wait(timeout=20)


def _redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise RuntimeError("redis-server is not installed (apt install redis-server)")
    return path
