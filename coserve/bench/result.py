"""BenchmarkResult: the config, the metrics and every request record of one run; saved as JSON."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from coserve.bench.config import BenchmarkConfig
from coserve.metrics import SLO, BenchmarkMetrics, LatencySLO, RequestRecord, SLOSet, format_table


@dataclass
class BenchmarkResult:
    config: BenchmarkConfig
    metrics: BenchmarkMetrics
    records: list[RequestRecord]
    started_at: str  # ISO wall-clock time of the start, to tell saved runs apart

    def table(self) -> str:
        return format_table(self.metrics)

    def to_dict(self) -> dict[str, Any]:
        workload = self.config.workload
        config = asdict(self.config)
        config["slos"] = _slos_dict(self.config.slos)
        shares = dict(zip(workload.models, workload.weights().tolist()))
        # A replayed trace sets its own rate; the shares then only pick each request's model.
        rates = None if workload.lengths.is_replay else {m: workload.total_rate * s for m, s in shares.items()}
        return strict_json({
            "started_at": self.started_at,
            "config": config,
            "model_shares": shares,
            "model_rates": rates,
            "metrics": {"overall": asdict(self.metrics.overall),
                        "per_model": {m: asdict(g) for m, g in self.metrics.per_model.items()}},
            "requests": [_record_dict(r) for r in self.records],
        })

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())


def _slos_dict(slos: SLOSet) -> dict[str, Any] | None:
    if slos is None or isinstance(slos, SLO | LatencySLO):
        return None if slos is None else asdict(slos)
    return {model: asdict(slo) for model, slo in slos.items()}


def _record_dict(record: RequestRecord) -> dict[str, Any]:
    derived = {"ttft": record.ttft, "tpot": record.tpot, "e2e": record.e2e}
    return {**asdict(record), **derived}


def strict_json(value: Any) -> Any:
    """Infinite rates become the string 'inf' (and NaN None): plain JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(item) for item in value]
    return value


def write_json(path: str | Path, value: Any) -> Path:
    """`value` as strict JSON (see strict_json) at `path`, its folder made if missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(strict_json(value), indent=1, allow_nan=False))
    return path
