"""Seeded, pure workload generation shared by the load generator and the simulator."""

from coserve.workload.arrivals import gamma_arrivals, gamma_arrivals_within, poisson_arrivals, replay_arrivals
from coserve.workload.datasets import DATASETS, LengthSpec, sample_lengths
from coserve.workload.generator import WorkloadRequest, WorkloadSpec, generate_workload
from coserve.workload.popularity import model_weights, power_law_rates, power_law_weights, split_count
from coserve.workload.traces import TRACES, Trace, load_trace

__all__ = [
    "DATASETS", "TRACES", "LengthSpec", "Trace", "WorkloadRequest", "WorkloadSpec", "gamma_arrivals",
    "gamma_arrivals_within",
    "generate_workload", "load_trace", "model_weights", "poisson_arrivals", "power_law_rates",
    "power_law_weights", "replay_arrivals", "sample_lengths", "split_count",
]
