"""The W&B sink really writes an offline run that can be read back (no network)."""

import time

import pytest

from observability.wandb_reader import history_rows, offline_run_files, summary
from observability.wandb_sink import MetricsSink


def rows_written(directory, expected: int, timeout_s: float = 30.0) -> list[dict]:
    """Every history row of the offline runs under directory, once `expected` are there or the time is up.

    W&B's service process writes the files: on a loaded machine a run's last rows land a moment after finish().
    """
    deadline = time.monotonic() + timeout_s
    while len(rows := [r for f in offline_run_files(directory) for r in history_rows(f)]) < expected:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return rows


def test_records_reach_the_offline_run(tmp_path):
    sink = MetricsSink(mode="offline", project="t", directory=tmp_path, run_name="r", group="g", flush_interval_s=0.2)
    for i in range(3):
        sink.record({"ttft_s": 0.1 * (i + 1), "completion_tokens": i + 1})
    assert sink.flush()
    sink.close()
    [run_file] = offline_run_files(tmp_path)
    rows = rows_written(tmp_path, 3)
    assert [r["completion_tokens"] for r in rows] == [1, 2, 3]
    assert rows[0]["ttft_s"] == 0.1
    deadline = time.monotonic() + 30  # the run summary: totals and latency percentiles (written at finish)
    while (totals := summary(run_file)).get("requests") != 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert totals["requests"] == 3 and totals["total_completion_tokens"] == 6
    assert totals["ttft_s_p50"] == pytest.approx(0.2) and totals["ttft_s_p99"] == pytest.approx(0.3)


def test_disabled_sink_records_nothing(tmp_path):
    sink = MetricsSink(mode="disabled", project="t", directory=tmp_path, run_name="r", group="g")
    sink.record({"x": 1})
    assert sink.flush()
    sink.close()
    assert offline_run_files(tmp_path) == []


def test_a_resumed_run_goes_on_after_its_last_step(tmp_path):
    from observability.wandb_runs import next_step

    assert next_step(tmp_path, "app-1-orchestrator") == 0
    first = MetricsSink(mode="offline", project="t", directory=tmp_path, run_name="r", group="g",
                        run_id="app-1-orchestrator", flush_interval_s=0.2)  # fmt: skip
    for i in range(3):
        first.record({"completion_tokens": i})
    assert first.flush()
    deadline = time.monotonic() + 60  # the last row is in the file while the run goes on (committed, not held)
    while not any(r.get("completion_tokens") == 2 for f in offline_run_files(tmp_path) for r in history_rows(f)):
        assert time.monotonic() < deadline, "the last row logged was never written"
        time.sleep(0.5)
    first.close()
    assert next_step(tmp_path, "app-1-orchestrator") == 3
    again = MetricsSink(mode="offline", project="t", directory=tmp_path, run_name="r", group="g",
                        run_id="app-1-orchestrator", start_step=3, flush_interval_s=0.2)  # fmt: skip
    again.record({"completion_tokens": 9})
    assert again.flush()
    again.close()
    steps = sorted(r["_step"] for r in rows_written(tmp_path, 4))
    assert steps == [0, 1, 2, 3]  # two folders of one run, its steps in one sequence


def test_a_sink_whose_run_failed_to_start_drops_rows_and_fails_flushes_at_once(tmp_path):
    sink = MetricsSink(mode="offline", project="t", directory=tmp_path / "file", run_name="r", group="g")
    sink._dead = True  # what a failed wandb.init leaves
    sink.record({"x": 1})
    assert sink._records.qsize() == 0 and sink.flush(timeout_s=0.1) is False
    sink.close()
