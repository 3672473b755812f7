"""The autoscaling timeline (benchmarks/cluster_load.py's samples) as a PNG and as a W&B run (offline unless
WANDB_MODE says otherwise): replicas, requests waiting for their first token, TTFT and streamed chunks/s."""

from __future__ import annotations

import os
from pathlib import Path

from benchmarks.cluster_load import Recorder


def plot(recorder: Recorder, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = recorder.samples
    t = [s.t for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(10, 9), sharex=True)
    axes[0].step(t, [s.running for s in samples], where="post", label="running")
    axes[0].step(t, [s.starting for s in samples], where="post", label="starting", linestyle="--")
    axes[0].set_ylabel("vLLM replicas")
    axes[1].plot(t, [s.in_flight for s in samples], label="in flight")
    axes[1].plot(t, [s.waiting for s in samples], label="waiting for a first token")
    axes[1].set_ylabel("requests")
    ttft = [(s.t, s.ttft_p50_s) for s in samples if s.ttft_p50_s is not None]
    axes[2].plot([x for x, _ in ttft], [y for _, y in ttft], marker=".", linestyle="none")
    axes[2].set_ylabel("TTFT p50 (s)")
    axes[3].plot(t, [s.chunks_per_s for s in samples])
    axes[3].set_ylabel("chunks/s")
    axes[3].set_xlabel("seconds")
    for ax in axes:
        for at, _ in recorder.events:
            ax.axvline(at, color="grey", linewidth=0.8, linestyle=":")
        ax.grid(alpha=0.3)
    for at, what in recorder.events:
        axes[0].annotate(what, (at, 0), rotation=90, fontsize=7, va="bottom", ha="right")
    axes[0].legend(loc="upper right")
    axes[1].legend(loc="upper right")
    fig.suptitle("Serve autoscaling the vLLM deployment on the worker node")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def log_to_wandb(recorder: Recorder, png: Path, workdir: Path, project: str = "llmserve") -> Path:
    """One step per sample and the PNG, in a run under `workdir`; the run's folder."""
    import wandb

    os.environ.setdefault("WANDB_MODE", "offline")
    run = wandb.init(project=project, dir=str(workdir), job_type="cluster-autoscaling", reinit="finish_previous")
    for s in recorder.samples:
        row = {"replicas/running": s.running, "replicas/starting": s.starting, "requests/in_flight": s.in_flight}
        row |= {"requests/waiting_first_token": s.waiting, "stream/chunks_per_s": s.chunks_per_s, "t_s": s.t}
        if s.ttft_p50_s is not None:
            row["latency/ttft_p50_s"] = s.ttft_p50_s
        run.log(row)
    run.log({"autoscaling": wandb.Image(str(png))})
    run.summary["events"] = [f"{t:.1f} s: {what}" for t, what in recorder.events]
    folder = Path(run.dir).parent
    run.finish()
    return folder
