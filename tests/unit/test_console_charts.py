"""The console's pure helpers: SVG charts drawn on the server, and the live window's numbers."""

import asyncio
import xml.etree.ElementTree as ET

import pytest

from deployments.console_charts import bar_chart, fmt, line_chart, nice_ceiling, relative_time_labels
from deployments.console_samples import (
    failovers_by_provider,
    percentile,
    read_samples,
    record_request_sample,
    samples_key,
    summarize,
    throughput_series,
    ttft_series,
)
from state.keyspace import tenant_base
from tests.conftest import redis_client

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # well-formed XML, or this raises


def test_nice_ceiling_rounds_up_to_1_2_2_5_5_times_a_power_of_ten():
    assert [nice_ceiling(v) for v in (0, -3, 0.7, 1, 1.01, 2.2, 3, 7, 11, 240, 999)] == [
        1, 1, 1, 1, 2, 2.5, 5, 10, 20, 250, 1000
    ]  # fmt: skip
    assert nice_ceiling(float("nan")) == 1


def test_fmt_keeps_axis_labels_short():
    assert [fmt(v) for v in (0, 0.25, 12, 340, 1500, 2_000_000)] == ["0", "0.25", "12", "340", "1.5k", "2M"]
    assert [fmt(v) for v in (0.5, 0.05, 0.00005, 0.000125)] == ["0.5", "0.05", "0.00005", "0.000125"]  # never 5e-05


def test_a_line_chart_has_one_dot_per_point_in_range_and_a_line_through_them():
    svg = line_chart([(-200, 10), (-100, 30), (-50, 20), (-400, 99)], title="t", unit="ms", x_range=(-300, 0))
    root = parse(svg)
    dots = root.findall(f"{SVG}circle")
    assert len(dots) == 3 and root.get("data-points") == "3"  # the point before the window is left out
    assert root.find(f"{SVG}polyline") is not None
    ys = [float(d.get("cy")) for d in dots]
    assert ys[1] < ys[2] < ys[0]  # 30 is highest on screen (smaller y), then 20, then 10
    xs = [float(d.get("cx")) for d in dots]
    assert xs == sorted(xs)
    assert [d.find(f"{SVG}title").text for d in dots] == ["10 ms", "30 ms", "20 ms"]


def test_a_scatter_has_no_line_and_an_empty_chart_says_so():
    assert "<polyline" not in line_chart([(-1, 1), (-2, 2)], title="t", x_range=(-10, 0), line=False)
    empty = parse(line_chart([], title="t", x_range=(-10, 0)))
    assert empty.get("data-points") == "0"
    assert "no requests" in "".join(empty.itertext())


def test_chart_text_is_escaped():
    svg = line_chart([(0, 1)], title='<script>alert("x")</script>', x_range=(-1, 0), x_labels=[(0, "<b>")])
    assert "<script>" not in svg and "<b>" not in svg
    assert parse(svg).get("aria-label") == '<script>alert("x")</script>'  # as text, after unescaping


def test_the_unit_goes_in_the_title():
    titles = [t.text for t in parse(bar_chart([("a", 1.0)], title="Spend", unit="USD")).findall(f"{SVG}text")]
    assert titles[0] == "Spend (USD)"


def test_bar_chart_heights_are_proportional_and_labels_thin_out():
    bars = [(f"d{i}", float(i)) for i in range(1, 31)]
    root = parse(bar_chart(bars, title="spend", unit="USD", width=400))
    rects = root.findall(f"{SVG}rect")
    assert len(rects) == 30
    heights = [float(r.get("height")) for r in rects]
    assert heights == sorted(heights) and heights[-1] > 0
    assert heights[14] == pytest.approx(heights[29] * 15 / 30, abs=0.2)
    labels = [t.text for t in root.findall(f"{SVG}text") if t.text and t.text.startswith("d")]
    assert 1 < len(labels) < 30  # 30 labels would overlap in 400 px


def test_relative_time_labels():
    assert relative_time_labels(300) == [(-300, "-5m"), (-225, "-3.75m"), (-150, "-2.5m"), (-75, "-1.25m"), (0, "now")]
    assert relative_time_labels(60, count=3) == [(-60, "-60s"), (-30, "-30s"), (0, "now")]


def samples():
    return [
        {"ts": 100.0, "ttft_s": 0.2, "completion_tokens": 10, "status": "ok", "failovers": 0, "cost_usd": 0.001},
        {"ts": 105.0, "ttft_s": 0.4, "completion_tokens": 30, "status": "ok", "failovers": 1, "cost_usd": 0.002,
         "failed_over_from": "self-hosted"},
        {"ts": 118.0, "completion_tokens": 0, "status": "error", "failed_over_from": "a,b"},
    ]  # fmt: skip


def test_summary_of_the_window():
    summary = summarize(samples(), window_s=20)
    assert summary["requests"] == 3 and summary["errors"] == 1
    assert summary["ttft_p50_s"] == 0.2 and summary["ttft_p95_s"] == 0.4
    assert summary["output_tokens"] == 40 and summary["output_tokens_per_s"] == 2.0
    assert summary["failovers"] == 1 and summary["cost_usd"] == pytest.approx(0.003)
    assert percentile([], 0.5) is None and percentile([3, 1, 2], 0.5) == 2


def test_series_place_requests_before_now():
    assert ttft_series(samples(), now=120) == [(-20, 200), (-15, 400)]
    series = throughput_series(samples(), now=120, window_s=30, bucket_s=10)
    assert [x for x, _ in series] == [-20, -10, 0]  # each bucket at its end; the first (90-100] is empty
    assert [y for _, y in series] == [0.0, 4.0, 0.0]  # 10 + 30 tokens at 100 and 105: bucket (100, 110]


def test_failovers_by_provider():
    assert failovers_by_provider(samples()) == {"self-hosted": 1, "a": 1, "b": 1}


def test_samples_round_trip_through_each_tenants_capped_stream(redis_prefix):
    async def go():
        async with redis_client() as client:
            record = {"ttft_s": 0.25, "completion_tokens": 7, "tenant": "acme", "model": "m", "status": "ok",
                      "response_id": "not kept", "rag_chunks": 2, "e2e_latency_s": None}  # fmt: skip
            await record_request_sample(client, redis_prefix, {**record, "ts": 1000.0})
            await record_request_sample(client, redis_prefix, {**record, "tenant": "other", "ts": 1001.0})
            await record_request_sample(client, redis_prefix, {**record, "ts": 1002.0}, [("a", "b"), ("b", "c")])
            await record_request_sample(client, redis_prefix, {**record, "tenant": None})  # no one's: not kept
            everyone = await read_samples(client, redis_prefix, ["acme", "other", "nobody"], window_s=1e12, now=2e3)
            assert [s["tenant"] for s in everyone] == ["acme", "other", "acme"]  # merged, oldest first
            assert everyone[0] == {"ts": 1000.0, "ttft_s": 0.25, "completion_tokens": 7.0, "tenant": "acme",
                                   "model": "m", "status": "ok"}  # fmt: skip
            assert [s["ts"] for s in await read_samples(client, redis_prefix, ["acme", "other"], limit=2)] == [
                1001.0, 1002.0
            ]  # fmt: skip
            acme = await read_samples(client, redis_prefix, ["acme"], window_s=1e12, now=2000.0)
            assert len(acme) == 2 and acme[1]["failed_over_from"] == "a,b"
            assert failovers_by_provider(acme) == {"a": 1, "b": 1}
            # Each stream lives under its tenant's prefix (a tenant's deletion sweeps it) and expires when idle.
            assert 0 < await client.ttl(samples_key(redis_prefix, "acme")) <= 86400
            assert samples_key(redis_prefix, "acme").startswith(f"{tenant_base(redis_prefix, 'acme')}:")
            # The window is by the stream's entry ids (write time), so everything written just now is in it.
            assert len(await read_samples(client, redis_prefix, ["acme", "other"], window_s=60)) == 3
            assert await read_samples(client, redis_prefix, ["acme"], window_s=60, now=1e10) == []

    asyncio.run(go())
