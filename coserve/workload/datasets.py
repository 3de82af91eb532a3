"""Request lengths (prompt and output tokens): synthetic ranges, or rows of a vendored trace."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from coserve.workload.traces import TRACES, Trace, load_trace

DATASETS = ("random", *TRACES)


@dataclass(frozen=True)
class LengthSpec:
    dataset: str = "random"
    input_len: int = 1024  # `random` only: the centre of the prompt-length range
    output_len: int = 128  # `random` only
    range_ratio: float = 0.0  # `random` only: lengths are uniform in len * [1 - r, 1 + r]
    max_input_len: int | None = None  # caps, so a long trace fits a small model's context
    max_output_len: int | None = None

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if not 0 <= self.range_ratio < 1:
            raise ValueError(f"range_ratio must be in [0, 1), got {self.range_ratio}")
        for name in ("input_len", "output_len", "max_input_len", "max_output_len"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.dataset != "random":
            load_trace(self.dataset)  # cached; a broken install fails here, before any request is sent

    @property
    def is_replay(self) -> bool:
        """Whether the dataset carries its own arrival times."""
        trace = TRACES.get(self.dataset)
        return trace is not None and trace.time_column is not None


def sample_lengths(spec: LengthSpec, num: int, rng: np.random.Generator) -> Trace:
    """`num` (input, output) length pairs, capped. Replay traces give their first `num` requests in
    order, with timestamps; length tables are sampled (without replacement while rows last)."""
    if spec.dataset == "random":
        trace = Trace(_uniform_around(spec.input_len, spec.range_ratio, num, rng),
                      _uniform_around(spec.output_len, spec.range_ratio, num, rng), None)
    elif spec.is_replay:
        trace = _first_rows(load_trace(spec.dataset), num, spec.dataset)
    else:
        table = load_trace(spec.dataset)
        rows = rng.choice(len(table), size=num, replace=num > len(table))
        trace = Trace(table.input_lens[rows], table.output_lens[rows], None)
    return Trace(_cap(trace.input_lens, spec.max_input_len), _cap(trace.output_lens, spec.max_output_len),
                 trace.timestamps)


def _uniform_around(length: int, ratio: float, num: int, rng: np.random.Generator) -> np.ndarray:
    low = max(1, math.floor(length * (1 - ratio)))
    high = max(low, math.ceil(length * (1 + ratio)))
    return rng.integers(low, high + 1, size=num)


def _first_rows(trace: Trace, num: int, name: str) -> Trace:
    if num > len(trace):
        raise ValueError(f"{name} holds {len(trace)} requests; asked for {num}")
    return Trace(trace.input_lens[:num], trace.output_lens[:num], trace.timestamps[:num])


def _cap(lengths: np.ndarray, cap: int | None) -> np.ndarray:
    return np.clip(lengths, 1, cap).astype(np.int64)
