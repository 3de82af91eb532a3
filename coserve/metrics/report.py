"""A plain-text table of BenchmarkMetrics: one column per model, then the overall column."""

from __future__ import annotations

from collections.abc import Callable

from coserve.metrics.summary import OVERALL, BenchmarkMetrics, GroupMetrics

Row = tuple[str, Callable[[GroupMetrics], float | int | None]]

COUNT_ROWS: list[Row] = [
    ("Completed requests", lambda m: m.completed),
    ("Failed requests", lambda m: m.failed),
    ("Duration (s)", lambda m: m.duration_s),
    ("Request throughput (req/s)", lambda m: m.request_throughput),
    ("Output token throughput (tok/s)", lambda m: m.output_throughput),
    ("Total token throughput (tok/s)", lambda m: m.total_token_throughput),
    ("Total input tokens", lambda m: m.total_input_tokens),
    ("Total output tokens", lambda m: m.total_output_tokens),
]


def latency_rows(name: str, attribute: str) -> list[Row]:
    stat = lambda key: lambda m: getattr(getattr(m, attribute), key)
    return [(f"{key.capitalize()} {name} (ms)", stat(key)) for key in ("mean", "p50", "p90", "p99")]


SLO_ROWS: list[Row] = [
    ("SLO attainment (%)", lambda m: None if m.slo_attainment is None else 100 * m.slo_attainment),
    ("Goodput (req/s)", lambda m: m.goodput),
]

ROWS: list[Row] = [
    *COUNT_ROWS, *latency_rows("TTFT", "ttft_ms"), *latency_rows("TPOT", "tpot_ms"),
    *latency_rows("ITL", "itl_ms"), *latency_rows("E2E", "e2e_ms"), *SLO_ROWS,
]


def format_table(metrics: BenchmarkMetrics, title: str = "Serving Benchmark Result") -> str:
    groups = {**metrics.per_model, OVERALL: metrics.overall}
    has_slo = metrics.overall.slo_attainment is not None
    rows = [row for row in ROWS if has_slo or row not in SLO_ROWS]
    label_width = max(len(label) for label, _ in rows)
    widths = [max(12, len(name)) for name in groups]
    header = " " * label_width + "".join(f"  {name:>{w}}" for name, w in zip(groups, widths))
    lines = [f" {title} ".center(len(header), "="), header, "-" * len(header)]
    for label, value in rows:
        cells = "".join(f"  {_fmt(value(m)):>{w}}" for m, w in zip(groups.values(), widths))
        lines.append(f"{label:<{label_width}}{cells}")
    lines.append("=" * len(header))
    return "\n".join(lines)


def _fmt(value: float | int | None) -> str:
    if value is None:
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.2f}"
