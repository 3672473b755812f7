"""One W&B run per deployment per start of the app.

An offline W&B run takes one writer, and a deployment has replicas that come, go and restart. So one Ray actor
per start of the app (detached, named after the app) owns the runs: one per deployment, with a stable id
(`<app>-<start>-<deployment>`), grouped by the start, `job_type` the deployment. Replicas send it their rows in
batches from a background thread (`RemoteRuns`), never on a request. A replica restart changes nothing; the
writer itself, killed, is restarted by Ray and resumes the same run ids (`resume="allow"`; offline, that is a
second folder with the same id, which `wandb sync` joins). The start is the writer's creation: it finishes its
runs and exits when its app is no longer deployed, so the next start makes new runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

import ray

from core.setting_groups import MetricsSettings
from observability.wandb_sink import MetricsSink

logger = logging.getLogger(__name__)
NAMESPACE = "llmserve"
_APP_CHECK_S = 15.0
_MAX_QUEUED = 20_000


def writer_name(app: str) -> str:
    return f"wandb-runs-{app}"


class RunWriter:
    """The runs of one start of `app`, one per deployment."""

    def __init__(self, app: str, start: str, mode: str, project: str, directory: str, group: str, every_s: float):
        self._app, self._start = app, start
        self._sink_args = dict(mode=mode, project=project, directory=Path(directory), flush_interval_s=every_s)
        self._group = f"{group}-{start}"
        self._sinks: dict[str, MetricsSink] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._exit_with_app, name="wandb-runs-watch", daemon=True).start()

    def record(self, deployment: str, rows: list[dict[str, Any]], config: dict[str, Any]) -> None:
        sink = self._sink(deployment, config)
        for row in rows:
            sink.record(row)

    def flush(self) -> bool:
        return all(sink.flush() for sink in list(self._sinks.values()))

    def runs(self) -> dict[str, str]:
        """deployment -> run id."""
        return {deployment: self.run_id(deployment) for deployment in self._sinks}

    def run_id(self, deployment: str) -> str:
        return f"{self._app}-{self._start}-{deployment}".lower()

    def _sink(self, deployment: str, config: dict[str, Any]) -> MetricsSink:
        with self._lock:
            sink = self._sinks.get(deployment)
            if sink is None:
                sink = self._sinks[deployment] = MetricsSink(
                    **self._sink_args,
                    run_name=f"{deployment} ({self._start})",
                    group=self._group,
                    job_type=deployment,
                    run_id=self.run_id(deployment),
                    config={**config, "app": self._app, "start": self._start, "deployment": deployment},
                )
            return sink

    def _exit_with_app(self) -> None:
        from ray import serve

        while True:
            time.sleep(_APP_CHECK_S)
            try:
                deployed = self._app in serve.status().applications
            except Exception:  # the controller is restarting: ask again later
                continue
            if not deployed:
                for sink in self._sinks.values():
                    sink.close()
                logger.info("app %s is gone: its W&B runs are finished", self._app)
                ray.kill(ray.get_runtime_context().current_actor, no_restart=True)  # not restarted, unlike a crash
                return


class RemoteRuns:
    """A replica's side: rows queued here and sent to its app's RunWriter every `every_s`."""

    def __init__(self, metrics: MetricsSettings, app: str, deployment: str, config: dict[str, Any]):
        self._metrics, self._app, self._deployment, self._config = metrics, app, deployment, config
        self._rows: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._send_lock = threading.Lock()
        self._writer = None
        self.dropped = 0
        self._thread = threading.Thread(target=self._loop, name="wandb-remote", daemon=True)
        self._thread.start()

    def record(self, values: dict[str, Any]) -> None:
        """Enqueue one request's row; never blocks, never raises (nor grows without bound while the writer is
        away: past `_MAX_QUEUED` rows new ones are dropped, and counted)."""
        if self._rows.qsize() >= _MAX_QUEUED:
            self.dropped += 1
            return
        self._rows.put(values)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Send what is queued and wait until the writer logged it."""
        try:
            self._send()
            return bool(ray.get(self._get_writer().flush.remote(), timeout=timeout_s))
        except Exception:
            logger.exception("W&B flush failed")
            return False

    def close(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._stop.wait(self._metrics.flush_interval_s):
            try:
                self._send()
            except Exception:  # the writer is restarting: its rows stay queued for the next round
                logger.warning("W&B rows not sent yet", exc_info=True)
        with contextlib.suppress(Exception):
            self._send()

    def _send(self) -> None:
        with self._send_lock:
            rows = []
            while True:
                try:
                    rows.append(self._rows.get_nowait())
                except queue.Empty:
                    break
            if not rows:
                return
            try:
                ray.get(self._get_writer().record.remote(self._deployment, rows, self._config), timeout=60)
            except Exception:
                for row in rows:  # sent again next round (the writer logs a row once it got the batch)
                    self._rows.put(row)
                self._writer = None
                raise

    def _get_writer(self):
        if self._writer is None:
            self._writer = writer_for(self._metrics, self._app)
        return self._writer


def writer_for(metrics: MetricsSettings, app: str):
    """The app's RunWriter actor: the one this start made, or a new one (this is the start)."""
    actor = ray.remote(RunWriter).options(
        name=writer_name(app),
        namespace=NAMESPACE,
        get_if_exists=True,
        lifetime="detached",
        num_cpus=0,
        max_restarts=-1,
        max_task_retries=-1,
        max_concurrency=8,
    )
    return actor.remote(
        app,
        time.strftime("%Y%m%d-%H%M%S"),
        metrics.resolved_wandb_mode(),
        metrics.wandb_project,
        str(metrics.wandb_dir or Path(".")),
        metrics.wandb_group or "llmserve",
        metrics.flush_interval_s,
    )


def sink_for(metrics: MetricsSettings, deployment: str, config: dict[str, Any]) -> MetricsSink | RemoteRuns:
    """Where a replica's rows go: its app's run for `deployment` in Serve; a run of its own elsewhere."""
    if metrics.resolved_wandb_mode() == "disabled":
        return MetricsSink.for_settings(metrics, run_name=deployment, config=config)
    try:
        from ray import serve

        app = serve.get_replica_context().app_name
    except Exception:  # not in a Serve replica (a test or a script)
        return MetricsSink.for_settings(metrics, run_name=f"{deployment}-{os.getpid()}", config=config)
    return RemoteRuns(metrics, app, deployment, config)
