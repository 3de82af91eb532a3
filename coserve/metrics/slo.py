"""Latency SLOs: absolute bounds (`ttft:200 tpot:50`), or MuxServe's request latency within a multiple
of what the same request takes alone (`LatencySLO`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from coserve.metrics.record import RequestRecord
from coserve.validation import is_finite_number


@dataclass(frozen=True)
class SLO:
    """Bounds in milliseconds; a bound left None is not checked."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    def __post_init__(self) -> None:
        for name in ("ttft_ms", "tpot_ms", "e2e_ms"):
            bound = getattr(self, name)
            if bound is not None and not (is_finite_number(bound) and bound > 0):
                raise ValueError(f"SLO {name} must be a positive finite number of milliseconds, got {bound!r}")

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
            try:
                bounds[f"{name}_ms"] = float(value)
            except ValueError:
                raise ValueError(f"SLO term {term!r}: {value!r} is not a number of milliseconds") from None
        return cls(**bounds)

    def scaled(self, scale: float) -> SLO:
        """MuxServe's SLO: `scale` times the latency the model reaches serving requests alone."""
        _check_scale(scale)
        times = lambda bound: None if bound is None else bound * scale
        return SLO(times(self.ttft_ms), times(self.tpot_ms), times(self.e2e_ms))


@dataclass(frozen=True)
class LatencySLO:
    """MuxServe's SLO: a request meets it when its end-to-end latency is within `scale` times the
    latency the same request has alone on the device. That base is the prefill of its prompt,
    interpolated between the measured `(prompt tokens, ms)` points (and extrapolated from the
    nearest two beyond them), plus one `decode_ms` step per output token after the first (the
    prefill yields the first). Unlike one TTFT bound per model, the budget grows with the request:
    a long answer may wait longer for its first token."""

    prefill_ms: tuple[tuple[int, float], ...]
    decode_ms: float
    scale: float = 1.0

    def __post_init__(self) -> None:
        lengths = [length for length, _ in self.prefill_ms]
        if len(lengths) < 2 or lengths != sorted(set(lengths)):
            raise ValueError(f"prefill_ms needs two or more points at increasing prompt lengths, got {self.prefill_ms}")
        times = (self.decode_ms, self.scale, *(ms for _, ms in self.prefill_ms))
        if not all(is_finite_number(value) and value > 0 for value in times):
            raise ValueError("decode_ms, scale and every prefill time must be positive finite numbers")

    def base_ms(self, prompt_tokens: int, output_tokens: int) -> float:
        """The request's latency alone: its prefill plus its decode steps."""
        points = self.prefill_ms
        right = next((i for i, (length, _) in enumerate(points) if length >= prompt_tokens), len(points) - 1)
        (x0, y0), (x1, y1) = points[max(right, 1) - 1], points[max(right, 1)]
        prefill = y0 + (y1 - y0) * (prompt_tokens - x0) / (x1 - x0)
        return max(prefill, 0.0) + max(output_tokens - 1, 0) * self.decode_ms

    def met_by(self, record: RequestRecord) -> bool:
        if not record.success or record.e2e is None:
            return False
        base = self.base_ms(record.prompt_tokens or record.input_len, record.output_tokens)
        return record.e2e * 1000 <= self.scale * base

    def scaled(self, scale: float) -> LatencySLO:
        _check_scale(scale)
        return LatencySLO(self.prefill_ms, self.decode_ms, self.scale * scale)


def _check_scale(scale: float) -> None:
    if not (is_finite_number(scale) and scale > 0):
        raise ValueError(f"an SLO scale must be a positive finite number, got {scale!r}")


AnySLO = SLO | LatencySLO
SLOSet = AnySLO | Mapping[str, AnySLO] | None  # one SLO for all models, one per model, or none


def slo_for(slos: SLOSet, model: str) -> AnySLO | None:
    if slos is None or isinstance(slos, SLO | LatencySLO):
        return slos
    return slos.get(model)
