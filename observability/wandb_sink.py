"""Per-request records to W&B, batched in a background thread so the request path only enqueues.

`wandb.init` (≈0.7 s, starts wandb-core) also happens in that thread, never on a request. Besides the rows:
the run summary (totals, latency percentiles) on every flush, and every `tables_every_s` latency histograms
and a table of requests, tokens and spend by tenant, model and provider.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

from core.setting_groups import MetricsSettings

logger = logging.getLogger(__name__)
_WINDOW = 1000
_MAX_QUEUED = 50_000  # rows waiting for the background thread; past it new rows are dropped (and counted)
_INIT_LOCK = threading.Lock()  # several runs in one process (the run writer) start one at a time


class MetricsSink:
    def __init__(
        self,
        *,
        mode: str,
        project: str,
        directory: Path,
        run_name: str,
        group: str,
        flush_interval_s: float = 2.0,
        config: dict[str, Any] | None = None,
        run_id: str | None = None,
        job_type: str | None = None,
        tables_every_s: float = 300.0,
        start_step: int = 0,
    ):
        """`start_step`: the step of the first row; a resumed run goes on after the steps it has (W&B drops rows
        logged at a step below the run's last one)."""
        self._mode = mode
        self._init_kwargs = dict(
            project=project,
            dir=str(directory),
            name=run_name,
            group=group,
            mode=mode,
            config=config or {},
            id=run_id,
            job_type=job_type,
            resume="allow" if run_id else None,  # the same id again (a restarted writer) continues that run
            reinit="create_new",
        )
        self._tables_every_s = tables_every_s
        self._tables_at = time.monotonic()
        self._by_labels: dict[tuple[str, str, str], Counter[str]] = {}
        directory.mkdir(parents=True, exist_ok=True)
        self._interval = flush_interval_s
        self._step = start_step
        self.dropped = 0
        self._dead = False  # wandb.init failed: rows are dropped, flushes fail at once
        self._records: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=_MAX_QUEUED)
        self._flush_requests: queue.SimpleQueue[threading.Event] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._run = None
        self._count = 0
        self._recent: dict[str, deque[float]] = {
            "ttft_s": deque(maxlen=_WINDOW),
            "e2e_latency_s": deque(maxlen=_WINDOW),
        }
        self._totals: Counter[str] = Counter()
        self._thread: threading.Thread | None = None
        if mode != "disabled":
            self._thread = threading.Thread(target=self._loop, name="wandb-sink", daemon=True)
            self._thread.start()

    @classmethod
    def for_settings(cls, metrics: MetricsSettings, run_name: str, config: dict[str, Any]) -> MetricsSink:
        """A sink configured by the metrics settings group (its W&B dir and group already resolved)."""
        return cls(
            mode=metrics.resolved_wandb_mode(),
            project=metrics.wandb_project,
            directory=metrics.wandb_dir or Path("."),
            run_name=run_name,
            group=metrics.wandb_group or "llmserve",
            flush_interval_s=metrics.flush_interval_s,
            config=config,
        )

    @property
    def run_dir(self) -> str | None:
        return getattr(self._run, "dir", None)

    def record(self, values: dict[str, Any]) -> None:
        """Enqueue one request's record; never blocks, never raises."""
        if self._thread is None or self._dead:
            return
        try:
            self._records.put_nowait(values)
        except queue.Full:
            self.dropped += 1
            if self.dropped % 1000 == 1:
                logger.warning("W&B is behind: %d request rows dropped so far", self.dropped)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Log everything queued so far; True when the background thread confirmed it."""
        if self._thread is None:
            return True
        if self._dead:
            return False
        done = threading.Event()
        self._flush_requests.put(done)
        return done.wait(timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout_s)

    # --- background thread -------------------------------------------------------------------------
    def _loop(self) -> None:
        import wandb

        try:
            with _INIT_LOCK:
                self._run = wandb.init(
                    **self._init_kwargs,
                    settings=wandb.Settings(silent=True, console="off", x_disable_stats=True, x_disable_meta=True),
                )
        except Exception:  # metrics must never take the service down
            logger.exception("wandb.init failed; request metrics will not be recorded")
            self._dead = True
            while True:  # flushes asked before it failed are answered (with nothing)
                try:
                    self._flush_requests.get_nowait().set()
                except queue.Empty:
                    return
        while not self._stop.is_set():
            waiter = None
            with contextlib.suppress(queue.Empty):
                waiter = self._flush_requests.get(timeout=self._interval)
            self._drain()
            if waiter is not None:
                waiter.set()
        self._drain()
        self._run.finish()

    def _drain(self) -> None:
        batch = []
        while True:
            try:
                batch.append(self._records.get_nowait())
            except queue.Empty:
                break
        for values in batch:
            self._count += 1
            try:
                self._run.log(values, step=self._step, commit=True)  # with a step, W&B waits for the next one
            except Exception:
                logger.exception("wandb log failed")
            self._step += 1
        if batch:
            self._summarize(batch)
        if self._count and time.monotonic() - self._tables_at >= self._tables_every_s:
            self._tables_at = time.monotonic()
            self._log_tables()

    def _log_tables(self) -> None:
        """Latency histograms over the recent window and the totals by tenant, model and provider."""
        import wandb

        try:
            counted = ["requests", "errors", "prompt_tokens", "completion_tokens", "cost_usd"]
            rows = [[*labels, *(c[k] for k in counted)] for labels, c in self._by_labels.items()]
            table = wandb.Table(columns=["tenant", "model", "provider", *counted], data=rows)
            values: dict[str, Any] = {"by_tenant_model_provider": table}
            for key, window in self._recent.items():
                if window:
                    values[f"{key}_histogram"] = wandb.Histogram(list(window))
            self._run.log(values, step=self._step, commit=True)
            self._step += 1
        except Exception:
            logger.exception("wandb tables failed")

    def _summarize(self, batch: list[dict[str, Any]]) -> None:
        """Run summary: totals, and latency percentiles over the last _WINDOW requests."""
        for values in batch:
            for key in ("ttft_s", "e2e_latency_s"):
                if isinstance(values.get(key), int | float):
                    self._recent[key].append(values[key])
            for key in ("completion_tokens", "prompt_tokens", "cost_usd"):
                self._totals[key] += values.get(key) or 0
            self._totals["errors"] += 0 if values.get("ok", 1) else 1
            labels = (str(values.get("tenant", "")), str(values.get("model", "")), str(values.get("provider", "")))
            counts = self._by_labels.setdefault(labels, Counter())
            counts["requests"] += 1
            counts["errors"] += 0 if values.get("ok", 1) else 1
            for key in ("prompt_tokens", "completion_tokens", "cost_usd"):
                counts[key] += values.get(key) or 0
        summary = {"requests": self._count, **{f"total_{k}": v for k, v in self._totals.items()}}
        for key, window in self._recent.items():
            if window:
                ordered = sorted(window)
                summary[f"{key}_p50"] = ordered[len(ordered) // 2]
                summary[f"{key}_p99"] = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        try:
            self._run.summary.update(summary)
        except Exception:
            logger.exception("wandb summary update failed")
