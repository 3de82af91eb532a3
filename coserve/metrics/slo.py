"""Latency SLOs: absolute (`ttft:200 tpot:50`) or a multiple of single-request latency (MuxServe)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from coserve.metrics.record import RequestRecord


@dataclass(frozen=True)
class SLO:
    """Bounds in milliseconds; a bound left None is not checked."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    def met_by(self, record: RequestRecord) -> bool:
        """A failed request misses every SLO; a one-token output has no TPOT to miss."""
        if not record.success:
            return False
        checks = ((self.ttft_ms, record.ttft), (self.tpot_ms, record.tpot), (self.e2e_ms, record.e2e))
        return all(bound is None or value is None or value * 1000 <= bound for bound, value in checks)

    @classmethod
    def parse(cls, terms: list[str]) -> SLO:
        """`["ttft:200", "tpot:50"]` -> SLO(ttft_ms=200, tpot_ms=50)."""
        bounds = {}
        for term in terms:
            name, sep, value = term.partition(":")
            if not sep or name not in ("ttft", "tpot", "e2e"):
                raise ValueError(f"SLO terms look like ttft:MS, tpot:MS or e2e:MS; got {term!r}")
            bounds[f"{name}_ms"] = float(value)
        return cls(**bounds)

    def scaled(self, scale: float) -> SLO:
        """MuxServe's SLO: `scale` times the latency the model reaches serving requests alone."""
        times = lambda bound: None if bound is None else bound * scale
        return SLO(times(self.ttft_ms), times(self.tpot_ms), times(self.e2e_ms))


SLOSet = SLO | Mapping[str, SLO] | None  # one SLO for all models, one per model, or none


def slo_for(slos: SLOSet, model: str) -> SLO | None:
    if slos is None or isinstance(slos, SLO):
        return slos
    return slos.get(model)
