"""One W&B run per deployment per start of the app.

An offline W&B run takes one writer, and a deployment has replicas that come, go and restart. So one Ray actor
per start of the app (detached, named after the app) owns the runs: one per deployment, with a stable id
(`<app>-<start>-<deployment>`), grouped by the start, `job_type` the deployment. Replicas send it their rows in
batches from a background thread (`RemoteRuns`), never on a request; the writer answers a batch once it is
logged, and a batch sent again (after a timeout) is logged once. A replica restart changes nothing; the writer
itself, killed, is restarted by Ray and resumes the same run ids (`resume="allow"`; offline, that is a second
folder with the same id, its steps going on after the first folder's, which `wandb sync` joins). The start is
the writer's creation: it finishes its runs and exits when its app is no longer deployed (or Serve has been
unreachable for `_GONE_AFTER_S`), so the next start makes new runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

import ray

from core.setting_groups import MetricsSettings
from observability.wandb_reader import history_rows, offline_run_files
from observability.wandb_sink import MetricsSink

logger = logging.getLogger(__name__)
NAMESPACE = "llmserve"
_APP_CHECK_S = 15.0
_GONE_AFTER_S = 120.0
_MAX_QUEUED = 20_000
_SEEN_BATCHES = 10_000


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
        self._seen: OrderedDict[str, None] = OrderedDict()  # batch ids logged (a batch sent twice counts once)
        threading.Thread(target=self._exit_with_app, name="wandb-runs-watch", daemon=True).start()

    def record(self, deployment: str, batch_id: str, rows: list[dict[str, Any]], config: dict[str, Any]) -> bool:
        """Log a replica's batch of rows; True once they are logged (the replica may forget them then)."""
        with self._lock:
            if batch_id in self._seen:
                return True
        sink = self._sink(deployment, config)
        for row in rows:
            sink.record(row)
        if not sink.flush():
            return False
        with self._lock:
            self._seen[batch_id] = None
            while len(self._seen) > _SEEN_BATCHES:
                self._seen.popitem(last=False)
        return True

    def flush(self) -> bool:
        results = [sink.flush() for sink in list(self._sinks.values())]  # every sink, even after one failed
        return all(results)

    def runs(self) -> dict[str, str]:
        """deployment -> run id."""
        return {deployment: self.run_id(deployment) for deployment in self._sinks}

    def run_id(self, deployment: str) -> str:
        return f"{self._app}-{self._start}-{deployment}".lower()

    def _sink(self, deployment: str, config: dict[str, Any]) -> MetricsSink:
        with self._lock:
            sink = self._sinks.get(deployment)
            if sink is None:
                run_id = self.run_id(deployment)
                sink = self._sinks[deployment] = MetricsSink(
                    **self._sink_args,
                    run_name=f"{deployment} ({self._start})",
                    group=self._group,
                    job_type=deployment,
                    run_id=run_id,
                    config={**config, "app": self._app, "start": self._start, "deployment": deployment},
                    start_step=next_step(self._sink_args["directory"], run_id),
                )
            return sink

    def _exit_with_app(self) -> None:
        from ray import serve

        answered = time.monotonic()
        while True:
            time.sleep(_APP_CHECK_S)
            try:
                deployed = self._app in serve.status().applications
                answered = time.monotonic()
            except Exception:  # the controller is restarting, or Serve was shut down (Ray still up)
                deployed = time.monotonic() - answered < _GONE_AFTER_S
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
        self._pending: tuple[str, list[dict[str, Any]]] | None = None  # a batch the writer did not confirm
        self.dropped = 0
        self._thread = threading.Thread(target=self._loop, name="wandb-remote", daemon=True)
        self._thread.start()

    def record(self, values: dict[str, Any]) -> None:
        """Enqueue one request's row; never blocks, never raises (nor grows without bound while the writer is
        away: past `_MAX_QUEUED` rows new ones are dropped, and counted)."""
        if self._rows.qsize() >= _MAX_QUEUED:
            self.dropped += 1
            if self.dropped % 1000 == 1:
                logger.warning("the W&B writer is away: %d request rows dropped so far", self.dropped)
            return
        self._rows.put(values)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Send what is queued and wait until the writer logged it."""
        try:
            self._send()
            return True
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
        """The batch the writer did not confirm (under its id), then what was queued since."""
        with self._send_lock:
            if self._pending is not None:
                self._send_batch(*self._pending)
                self._pending = None
            rows = []
            while True:
                try:
                    rows.append(self._rows.get_nowait())
                except queue.Empty:
                    break
            if rows:
                self._pending = (uuid.uuid4().hex, rows)
                self._send_batch(*self._pending)
                self._pending = None

    def _send_batch(self, batch_id: str, rows: list[dict[str, Any]]) -> None:
        try:
            call = self._get_writer().record.remote(self._deployment, batch_id, rows, self._config)
            if not ray.get(call, timeout=60):
                raise RuntimeError("the W&B writer could not log the rows")
        except Exception:
            self._writer = None  # looked up again: it may have been restarted
            raise

    def _get_writer(self):
        if self._writer is None:
            self._writer = writer_for(self._metrics, self._app)
        return self._writer


def next_step(directory: Path, run_id: str) -> int:
    """The step after the last one this run's offline folders hold (0 for a new run): a resumed run goes on."""
    last = -1
    for run_file in offline_run_files(directory):
        if run_file.stem == f"run-{run_id}":
            last = max([last, *(int(row.get("_step", -1)) for row in history_rows(run_file))])
    return last + 1


def writer_for(metrics: MetricsSettings, app: str):
    """The app's RunWriter actor: the one this start made, or a new one (this is the start)."""
    actor = ray.remote(RunWriter).options(
        name=writer_name(app),
        namespace=NAMESPACE,
        get_if_exists=True,
        lifetime="detached",
        num_cpus=0,
        max_restarts=-1,
        max_task_retries=0,  # a batch is sent again by its replica, under its id (never replayed twice by Ray)
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
