"""`python -m benchmarks bench --compare`'s report: ratios against bare vLLM, and the plots, from known numbers."""

from benchmarks.compare import COLUMNS, markdown, plot


def level(tok_s: float, ttft_ms: float, concurrency: int) -> dict:
    metrics = {key: 1.0 for key, _ in COLUMNS}
    samples = {"ttft": [ttft_ms - 5, ttft_ms, ttft_ms + 5], "itl": [50.0, 60.0], "e2e": [900.0, 1000.0]}
    return {
        **metrics,
        "concurrency": concurrency,
        "output_tok_per_s": tok_s,
        "ttft_p50_ms": ttft_ms,
        "samples": samples,
    }


RESULTS = {
    "vllm": {"c=1": level(10.0, 200.0, 1), "c=8": level(40.0, 1000.0, 8)},
    "llmserve": {"c=1": level(9.5, 230.0, 1), "c=8": level(20.0, 1100.0, 8)},
}


def test_the_table_gives_throughput_ratios_and_ttft_differences_against_bare_vllm():
    rows = {tuple(cell.strip() for cell in line.split("|")[1:3]): line for line in markdown(RESULTS).splitlines()}
    assert rows[("vllm", "c=8")].rstrip(" |").endswith("1.000 | +0.0")
    assert rows[("llmserve", "c=1")].rstrip(" |").endswith("0.950 | +30.0")
    assert rows[("llmserve", "c=8")].rstrip(" |").endswith("0.500 | +100.0")


def test_plots_are_written(tmp_path):
    plot(RESULTS, tmp_path)
    for name in ("throughput_ttft.png", "latency_cdf.png"):
        assert (tmp_path / name).stat().st_size > 10_000
