"""Turn request records into serving metrics: a pure function, with no clock and no network."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from coserve.metrics.record import RequestRecord
from coserve.metrics.slo import SLOSet, slo_for

OVERALL = "overall"


@dataclass(frozen=True)
class LatencyStats:
    """Milliseconds; all None when there were no samples."""

    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    count: int = 0

    @classmethod
    def of(cls, seconds: Sequence[float]) -> LatencyStats:
        if len(seconds) == 0:
            return cls()
        ms = np.asarray(seconds, dtype=float) * 1000
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(float(ms.mean()), float(p50), float(p90), float(p99), len(ms))


@dataclass(frozen=True)
class GroupMetrics:
    """Metrics of one model's requests, or of all of them."""

    completed: int
    failed: int
    duration_s: float
    request_throughput: float  # completed requests per second
    output_throughput: float  # output tokens per second
    total_token_throughput: float  # prompt + output tokens per second
    total_input_tokens: int
    total_output_tokens: int
    ttft_ms: LatencyStats
    tpot_ms: LatencyStats
    itl_ms: LatencyStats
    e2e_ms: LatencyStats
    slo_attainment: float | None = None  # fraction of ALL requests (failed ones miss) meeting the SLO
    goodput: float | None = None  # requests per second that met the SLO


@dataclass(frozen=True)
class BenchmarkMetrics:
    overall: GroupMetrics
    per_model: dict[str, GroupMetrics] = field(default_factory=dict)


def run_duration(records: Sequence[RequestRecord]) -> float:
    """From the first arrival to the last request's end (or send, for one that never ended)."""
    if not records:
        return 0.0
    start = min(r.arrival_time for r in records)
    end = max(r.end_time if r.end_time is not None else r.send_time for r in records)
    return max(end - start, 0.0)


def steady_throughput(records: Sequence[RequestRecord], start: float, end: float) -> float:
    """Requests served per second within [start, end), each finished request counting the share of
    its output chunks that arrived in the window. Taken after a warm-up and before arrivals stop,
    this is the offered rate when the server keeps up and its capacity when it does not. A
    whole-run throughput also holds the ramp-up and the drain, whose length is set by the last few
    requests, and counting whole completions in the window jitters with whichever requests straddle
    its edges; shares of chunks do not."""
    if not end > start:
        raise ValueError(f"an empty window [{start}, {end})")
    served = 0.0
    for r in records:
        if r.success and r.chunk_times:
            inside = bisect_left(r.chunk_times, end) - bisect_left(r.chunk_times, start)
            served += inside / len(r.chunk_times)
    return served / (end - start)


def compute_metrics(records: Sequence[RequestRecord], slos: SLOSet = None, duration_s: float | None = None,
                    models: Sequence[str] = ()) -> BenchmarkMetrics:
    """Per-model and overall metrics. All groups share the run's duration, so per-model
    throughputs add up to the overall one. `models` fixes the order of the per-model groups (and
    lists models that got no request); others follow in order of first appearance."""
    duration = run_duration(records) if duration_s is None else duration_s
    by_model: dict[str, list[RequestRecord]] = {model: [] for model in models}
    for record in records:
        by_model.setdefault(record.model, []).append(record)
    per_model = {model: group_metrics(group, slos, duration) for model, group in by_model.items()}
    return BenchmarkMetrics(group_metrics(records, slos, duration), per_model)


def group_metrics(records: Sequence[RequestRecord], slos: SLOSet, duration_s: float) -> GroupMetrics:
    done = [r for r in records if r.success]
    input_tokens = sum(r.prompt_tokens for r in done)
    output_tokens = sum(r.output_tokens for r in done)
    per_second = lambda amount: amount / duration_s if duration_s > 0 else 0.0
    attainment = goodput = None
    if any(slo_for(slos, r.model) is not None for r in records):
        met = sum(_meets(r, slos) for r in records)
        attainment = met / len(records)  # `any` above guarantees there is at least one record
        goodput = per_second(met)
    return GroupMetrics(
        completed=len(done),
        failed=len(records) - len(done),
        duration_s=duration_s,
        request_throughput=per_second(len(done)),
        output_throughput=per_second(output_tokens),
        total_token_throughput=per_second(input_tokens + output_tokens),
        total_input_tokens=input_tokens,
        total_output_tokens=output_tokens,
        ttft_ms=LatencyStats.of([r.ttft for r in done if r.ttft is not None]),
        tpot_ms=LatencyStats.of([r.tpot for r in done if r.tpot is not None]),
        itl_ms=LatencyStats.of([gap for r in done for gap in r.itls]),
        e2e_ms=LatencyStats.of([r.e2e for r in done if r.e2e is not None]),
        slo_attainment=attainment,
        goodput=goodput,
    )


def _meets(record: RequestRecord, slos: SLOSet) -> bool:
    slo = slo_for(slos, record.model)
    # A model without an SLO of its own (per-model SLOs) has nothing to miss unless it failed.
    return record.success if slo is None else slo.met_by(record)
