"""BenchmarkConfig: what to send, where, and what counts as good service."""

from __future__ import annotations

from dataclasses import dataclass

from coserve.bench.client import COMPLETIONS_ENDPOINT, ENDPOINTS
from coserve.metrics import SLOSet
from coserve.workload import WorkloadSpec


@dataclass(frozen=True)
class BenchmarkConfig:
    workload: WorkloadSpec
    base_url: str = "http://127.0.0.1:8000"
    endpoint: str = COMPLETIONS_ENDPOINT
    max_concurrency: int | None = None  # requests in flight at once; None = as many as arrive
    ignore_eos: bool = False
    slos: SLOSet = None
    timeout_s: float | None = 3600.0  # per request, connection to last byte
    disable_tqdm: bool = False

    def __post_init__(self) -> None:
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {ENDPOINTS}, got {self.endpoint!r}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {self.max_concurrency}")
        if self.timeout_s is not None and not self.timeout_s > 0:  # inf is as good as None
            raise ValueError(f"timeout_s must be positive (or None for no limit), got {self.timeout_s}")

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + self.endpoint
