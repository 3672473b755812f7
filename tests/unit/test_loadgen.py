"""The load generator's numbers against a fake server with scripted timings (benchmarks/fake_engine.py):
TTFT 200 ms, then 20 tokens/s (a 50 ms gap) for 10 tokens."""

import asyncio
import contextlib
import socket
import threading
import time

import pytest
import uvicorn

from benchmarks.fake_engine import fake_openai_app
from benchmarks.loadgen import run_level, run_poisson, summarize

BODY = {
    "model": "fake",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 10,
    "stream": True,
    "stream_options": {"include_usage": True},
}


@contextlib.contextmanager
def scripted_server(ttft_s: float, tokens_per_s: float):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(fake_openai_app(ttft_s, tokens_per_s), port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_closed_loop_metrics_match_the_script():
    with scripted_server(0.2, 20.0) as url:
        records, wall = asyncio.run(run_level(url, {}, [BODY] * 6, concurrency=2))
    m = summarize(records, wall, ttft_slo_s=0.3, tpot_slo_s=0.04)
    assert m["requests"] == 6 and m["errors"] == 0
    assert m["ttft_p50_ms"] == pytest.approx(200, abs=30)
    assert m["itl_p50_ms"] == pytest.approx(50, abs=15)
    assert m["tpot_p50_ms"] == pytest.approx(50, abs=15)
    assert m["e2e_p50_ms"] == pytest.approx(200 + 9 * 50, abs=60)
    # 6 requests, 2 at a time, 650 ms each: ~3 rounds
    assert m["req_per_s"] == pytest.approx(6 / (3 * 0.65), rel=0.25)
    assert m["output_tok_per_s"] == pytest.approx(m["req_per_s"] * 10, rel=0.01)
    assert m["goodput_req_per_s"] == 0  # a 40 ms TPOT target: nothing met it
    assert summarize(records, wall, ttft_slo_s=0.3, tpot_slo_s=0.08)["goodput_req_per_s"] == m["req_per_s"]


def test_poisson_arrivals_pace_an_open_loop():
    with scripted_server(0.0, 0.0) as url:
        first, wall = asyncio.run(run_poisson(url, {}, [BODY] * 20, rate=40.0, seed=7))
    assert len(first) == 20 and all(r.status == 200 for r in first)
    assert 0.2 < wall < 2.0  # 20 arrivals at 40/s: about half a second


def test_a_timed_level_cycles_prompts_until_its_duration_is_up():
    with scripted_server(0.05, 100.0) as url:  # ~140 ms per request
        records, wall = asyncio.run(run_level(url, {}, [BODY] * 2, concurrency=2, duration_s=1.0))
    assert 1.0 <= wall < 1.5  # no new request after 1 s; those in flight finish
    assert 10 <= len(records) <= 18 and all(r.status == 200 for r in records)


def test_measure_keeps_every_repeats_raw_latencies_for_the_cdf_plots():
    from benchmarks.bench import Workload, measure

    with scripted_server(0.1, 50.0) as url:
        heard: list[str] = []
        workload = Workload(model="fake", requests=4, max_tokens=5)
        results = measure(url, None, workload, [2], repeats=2, on_level=lambda label, _: heard.append(label))
    assert heard == ["c=2"]  # each level is told as it ends (bench prints it then), not only at the end
    level = results["c=2"]
    samples = level["samples"]
    assert len(samples["ttft"]) == 8 and len(samples["e2e"]) == 8  # 4 requests x 2 repeats
    assert len(samples["itl"]) == 8 * 4  # 5 tokens: 4 gaps each
    assert sorted(samples["ttft"])[4] == pytest.approx(100, abs=30)
    assert sorted(samples["itl"])[16] == pytest.approx(20, abs=10)
    assert level["ttft_p50_ms"] == pytest.approx(100, abs=30)  # the medians are still there


def test_the_gateway_benchmark_runs_a_paced_profile_by_default_and_groups_levels_by_pace():
    from benchmarks.gateway_overhead import paced_profiles

    (default,) = paced_profiles(["64:100"], 64, 20.0)
    assert (default.levels, default.tokens_per_s, default.tokens, default.ttft_ms) == ([64], 100.0, 64, 20.0)
    profiles = paced_profiles(["8:100", "64:100", "16:1000"], 32, 5.0)
    assert [(p.levels, p.tokens_per_s) for p in profiles] == [([8, 64], 100.0), ([16], 1000.0)]
    assert paced_profiles(["none"], 64, 20.0) == []
