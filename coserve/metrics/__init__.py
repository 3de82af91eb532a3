"""Serving metrics from per-request records; shared by the load generator and the simulator."""

from coserve.metrics.plots import plot_results
from coserve.metrics.record import RequestRecord
from coserve.metrics.report import format_table
from coserve.metrics.slo import SLO, LatencySLO, SLOSet, slo_for
from coserve.metrics.summary import (
    OVERALL,
    BenchmarkMetrics,
    GroupMetrics,
    LatencyStats,
    compute_metrics,
    group_metrics,
    run_duration,
    steady_throughput,
)

__all__ = [
    "OVERALL", "SLO", "BenchmarkMetrics", "GroupMetrics", "LatencySLO", "LatencyStats", "RequestRecord", "SLOSet",
    "compute_metrics", "format_table", "group_metrics", "plot_results", "run_duration", "slo_for",
    "steady_throughput",
]
