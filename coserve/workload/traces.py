"""The vendored trace files (coserve/data/traces): length tables and timestamped request logs."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cache
from pathlib import Path

import numpy as np

TRACE_DIR = Path(__file__).resolve().parent.parent / "data" / "traces"


@dataclass(frozen=True)
class TraceFile:
    filename: str
    input_column: str
    output_column: str
    time_column: str | None = None  # only request logs have one


TRACES = {
    "sharegpt-lengths": TraceFile(
        "sharegpt_8k_filtered_stats_llama2_tokenizer.csv", "num_prefill_tokens", "num_decode_tokens"),
    "arxiv-lengths": TraceFile(
        "arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv",
        "num_prefill_tokens", "num_decode_tokens"),
    "azure-code": TraceFile("azure_llm_2023_code.csv", "ContextTokens", "GeneratedTokens", "TIMESTAMP"),
    "azure-conv": TraceFile("azure_llm_2023_conv.csv", "ContextTokens", "GeneratedTokens", "TIMESTAMP"),
}


@dataclass(frozen=True)
class Trace:
    input_lens: np.ndarray
    output_lens: np.ndarray
    timestamps: np.ndarray | None  # seconds since the first row; None for length-only tables

    def __len__(self) -> int:
        return len(self.input_lens)


def parse_timestamp(text: str) -> float:
    """Seconds since the epoch of 'YYYY-MM-DD HH:MM:SS.fffffff' (Azure writes 7 fraction digits,
    more than datetime parses before Python 3.11)."""
    whole, _, fraction = text.strip().partition(".")
    # Read as UTC: only differences matter, and local time could put a DST jump inside the trace.
    seconds = datetime.strptime(whole, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    return seconds + (float("0." + fraction) if fraction else 0.0)


@cache
def load_trace(name: str) -> Trace:
    if name not in TRACES:
        raise ValueError(f"unknown trace {name!r}; known: {sorted(TRACES)}")
    spec = TRACES[name]
    path = TRACE_DIR / spec.filename
    try:
        return _read(path, spec)
    except (OSError, KeyError, ValueError, IndexError, TypeError, OverflowError) as exc:
        # The files ship with the package: a missing or edited one is a broken install, said plainly.
        raise ValueError(f"trace {name!r} cannot be read from {path}: {type(exc).__name__}: {exc}") from exc


def _read(path: Path, spec: TraceFile) -> Trace:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    # Parsed through float so that an export writing counts as "74.0" still loads.
    column = lambda key: _frozen(np.array([round(float(row[key])) for row in rows], dtype=np.int64))
    timestamps = None
    if spec.time_column:
        absolute = np.array([parse_timestamp(row[spec.time_column]) for row in rows])
        timestamps = _frozen(absolute - absolute[0])
    return Trace(column(spec.input_column), column(spec.output_column), timestamps)


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False  # load_trace is cached: one caller must not edit another's copy
    return array
