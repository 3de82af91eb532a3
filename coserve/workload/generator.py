"""A workload: which model each request goes to, when it arrives, and how long it is."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from coserve.validation import is_finite_number
from coserve.workload.arrivals import gamma_arrivals, gamma_arrivals_within, replay_arrivals
from coserve.workload.datasets import LengthSpec, sample_lengths
from coserve.workload.popularity import model_weights, split_count
from coserve.workload.traces import load_trace


@dataclass(frozen=True)
class WorkloadSpec:
    models: tuple[str, ...]
    num_prompts: int = 1000
    request_rate: float = math.inf  # total over all models; inf sends everything at t=0
    model_rates: tuple[float, ...] | None = None  # explicit per-model rates; overrides request_rate
    alpha: float | None = None  # power-law popularity: rate_i proportional to (i+1)^-alpha
    burstiness: float = 1.0  # gamma shape of the inter-arrival gaps; 1 = Poisson
    time_scale: float = 1.0  # replay traces this many times faster than recorded
    seed: int = 0
    lengths: LengthSpec = field(default_factory=LengthSpec)
    # Arrivals within this many seconds instead of `num_prompts` of them: each model's process
    # runs for the whole window, so the count per model is random and none arrives after it.
    duration: float | None = None

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("a workload needs at least one model")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"each model is named once, got {list(self.models)}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.num_prompts < 1:
            raise ValueError(f"num_prompts must be at least 1, got {self.num_prompts}")
        if not self.request_rate > 0:  # inf is allowed: everything at t=0
            raise ValueError(f"request_rate must be positive, got {self.request_rate}")
        for name in ("burstiness", "time_scale"):
            if not (is_finite_number(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a positive finite number, got {getattr(self, name)}")
        model_weights(len(self.models), self.rates_list(), self.alpha)  # validates rates/alpha
        if self.duration is not None:
            if not 0 < self.duration < math.inf:
                raise ValueError(f"duration must be positive and finite, got {self.duration}")
            if math.isinf(self.total_rate) or self.lengths.is_replay:
                raise ValueError("a duration needs finite request rates and no replayed timestamps")
        if self.lengths.is_replay and self.num_prompts > len(load_trace(self.lengths.dataset)):
            raise ValueError(f"{self.lengths.dataset} holds {len(load_trace(self.lengths.dataset))} "
                             f"requests; asked for {self.num_prompts}")

    def rates_list(self) -> list[float] | None:
        return list(self.model_rates) if self.model_rates is not None else None

    @property
    def total_rate(self) -> float:
        return sum(self.model_rates) if self.model_rates is not None else self.request_rate

    def weights(self) -> np.ndarray:
        return model_weights(len(self.models), self.rates_list(), self.alpha)


@dataclass(frozen=True)
class WorkloadRequest:
    request_id: int
    model: str
    arrival_time: float  # seconds from the start of the run
    input_len: int
    output_len: int


def generate_workload(spec: WorkloadSpec) -> list[WorkloadRequest]:
    """The requests of `spec`, sorted by arrival time; the same seed always gives the same list."""
    arrival_rng, length_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(spec.seed).spawn(2))
    if spec.duration is not None:
        times, owners = _per_model_arrivals_within(spec, arrival_rng)
        if not len(times):
            raise ValueError(f"no request arrives within {spec.duration} s at {spec.total_rate} req/s")
        lengths = sample_lengths(spec.lengths, len(times), length_rng)
    else:
        lengths = sample_lengths(spec.lengths, spec.num_prompts, length_rng)
        if lengths.timestamps is not None:
            times = replay_arrivals(lengths.timestamps, spec.time_scale)
            # A trace has no model column: each request picks a model by popularity.
            owners = arrival_rng.choice(len(spec.models), size=spec.num_prompts, p=spec.weights())
        else:
            times, owners = _per_model_arrivals(spec, arrival_rng)
    return [WorkloadRequest(i, spec.models[owner], float(t), int(n_in), int(n_out))
            for i, (owner, t, n_in, n_out) in enumerate(
                zip(owners, times, lengths.input_lens, lengths.output_lens))]


def _per_model_arrivals(spec: WorkloadSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One independent gamma process per model at its own rate, merged into a single timeline."""
    weights = spec.weights()
    counts = split_count(spec.num_prompts, weights)
    times = np.concatenate([gamma_arrivals(int(count), spec.total_rate * weight, spec.burstiness, rng)
                            for count, weight in zip(counts, weights)])
    return _merge(times, np.repeat(np.arange(len(spec.models)), counts), rng)


def _per_model_arrivals_within(spec: WorkloadSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    per_model = [gamma_arrivals_within(spec.duration, spec.total_rate * weight, spec.burstiness, rng)
                 for weight in spec.weights()]
    owners = np.repeat(np.arange(len(spec.models)), [len(t) for t in per_model])
    return _merge(np.concatenate(per_model), owners, rng)


def _merge(times: np.ndarray, owners: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # Shuffle before the stable sort so simultaneous arrivals (rate inf) interleave the models.
    order = rng.permutation(len(times))
    order = order[np.argsort(times[order], kind="stable")]
    return times[order], owners[order]
