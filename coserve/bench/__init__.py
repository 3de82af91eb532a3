"""`coserve bench`: an open-loop load generator for OpenAI-compatible servers."""

from coserve.bench.config import BenchmarkConfig
from coserve.bench.result import BenchmarkResult
from coserve.bench.runner import benchmark, run_benchmark

__all__ = ["BenchmarkConfig", "BenchmarkResult", "benchmark", "run_benchmark"]
