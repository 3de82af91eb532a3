"""Arrival processes: when requests reach the server, as seconds from the start of a run."""

from __future__ import annotations

import math

import numpy as np


def gamma_arrivals(num: int, rate: float, burstiness: float, rng: np.random.Generator) -> np.ndarray:
    """`num` arrival times of a renewal process with gamma gaps.

    Gaps have mean 1/rate and squared coefficient of variation 1/burstiness: burstiness 1 is a
    Poisson process, below 1 is burstier, above 1 more regular. An infinite rate sends all at t=0.
    """
    if burstiness <= 0:
        raise ValueError(f"burstiness must be positive, got {burstiness}")
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    if math.isinf(rate):
        return np.zeros(num)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=num)
    return np.cumsum(gaps)


def gamma_arrivals_within(horizon: float, rate: float, burstiness: float, rng: np.random.Generator) -> np.ndarray:
    """The arrivals of the same process before `horizon` seconds: the count is random, as in a
    window of real traffic, so a rare model may get none and never one far past the window."""
    if not 0 < horizon < math.inf:
        raise ValueError(f"horizon must be positive and finite, got {horizon}")
    if math.isinf(rate):
        raise ValueError("an infinite rate sends everything at t=0: give a count, not a horizon")
    times = np.empty(0)
    while times.size == 0 or times[-1] < horizon:
        start = times[-1] if times.size else 0.0
        expected = rate * (horizon - start)
        batch = int(expected + 4 * math.sqrt(expected) + 16)  # one draw almost always covers the window
        times = np.concatenate([times, start + gamma_arrivals(batch, rate, burstiness, rng)])
    return times[times < horizon]


def poisson_arrivals(num: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    return gamma_arrivals(num, rate, 1.0, rng)


def replay_arrivals(timestamps: np.ndarray, time_scale: float = 1.0) -> np.ndarray:
    """Trace timestamps (seconds) as offsets from the first one, `time_scale` times faster."""
    if time_scale <= 0:
        raise ValueError(f"time_scale must be positive, got {time_scale}")
    timestamps = np.asarray(timestamps, dtype=float)
    if timestamps.size == 0:
        return timestamps
    return (timestamps - timestamps[0]) / time_scale
