"""PNG figures of a run: latency CDFs per model and per-model throughput bars."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from coserve.metrics.record import RequestRecord
from coserve.metrics.summary import BenchmarkMetrics

LATENCIES = (("TTFT", "ttft"), ("TPOT", "tpot"), ("E2E", "e2e"))


def plot_results(metrics: BenchmarkMetrics, records: Sequence[RequestRecord],
                 out_dir: str | Path) -> list[Path]:
    """Write latency_cdf.png and throughput.png under `out_dir`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only: works on headless machines and never opens a window
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [_latency_cdfs(plt, list(metrics.per_model), records, out / "latency_cdf.png"),
             _throughput_bars(plt, metrics, out / "throughput.png")]
    return paths


def _latency_cdfs(plt, models: list[str], records: Sequence[RequestRecord], path: Path) -> Path:
    fig, axes = plt.subplots(1, len(LATENCIES), figsize=(5 * len(LATENCIES), 4), squeeze=False)
    for ax, (label, attribute) in zip(axes[0], LATENCIES):
        for model in models:
            values = [getattr(r, attribute) for r in records if r.model == model]
            ms = np.sort([v * 1000 for v in values if v is not None])
            if ms.size:
                ax.plot(ms, np.arange(1, ms.size + 1) / ms.size, label=model)
        ax.set(xlabel=f"{label} (ms)", ylabel="CDF", title=label, ylim=(0, 1.01))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    return _save(plt, fig, path)


def _throughput_bars(plt, metrics: BenchmarkMetrics, path: Path) -> Path:
    models = list(metrics.per_model)
    fig, (requests_ax, tokens_ax) = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(models) + 4), 4))
    requests_ax.bar(models, [metrics.per_model[m].request_throughput for m in models])
    requests_ax.set(ylabel="requests / s", title="Request throughput")
    tokens_ax.bar(models, [metrics.per_model[m].output_throughput for m in models])
    tokens_ax.set(ylabel="output tokens / s", title="Output token throughput")
    for ax in (requests_ax, tokens_ax):
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    return _save(plt, fig, path)


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_timelines(timelines: dict[str, list[dict]], panels: Sequence[tuple[str, str]], path: str | Path,
                   title: str = "") -> Path:
    """One panel per (key, label) of `panels`, one line per run: `timelines[run]` is a list of
    samples, each a dict with "t" (seconds) and the panels' keys (None: no value at that time)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.4 * len(panels)), sharex=True, squeeze=False)
    for ax, (key, label) in zip(axes[:, 0], panels):
        for run, samples in timelines.items():
            points = [(s["t"], s[key]) for s in samples if s.get(key) is not None]
            if points:
                ax.plot(*zip(*points), label=run, linewidth=1.2)
        ax.set(ylabel=label)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize="small", ncol=len(timelines))
    axes[-1, 0].set(xlabel="time (s)")
    if title:
        axes[0, 0].set_title(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(plt, fig, path)
