"""How a total request rate is shared among models: power-law popularity or explicit rates."""

from __future__ import annotations

import numpy as np

from coserve.validation import is_finite_number


def power_law_weights(num_models: int, alpha: float) -> np.ndarray:
    """Model i's share is proportional to (i+1)^-alpha (alpha 0 = uniform); shares sum to 1."""
    if num_models <= 0:
        raise ValueError(f"num_models must be positive, got {num_models}")
    if not is_finite_number(alpha):
        raise ValueError(f"alpha must be a finite number, got {alpha!r}")
    with np.errstate(over="ignore"):
            raw = np.arange(1, num_models + 1, dtype=float) ** -alpha
    if not np.isfinite(raw).all():  # a large negative alpha: the last model's weight overflows
        raise ValueError(f"alpha {alpha} is too far below 0 for {num_models} models")
    return raw / raw.sum()


def power_law_rates(num_models: int, alpha: float, total_rate: float) -> np.ndarray:
    return power_law_weights(num_models, alpha) * total_rate


def split_count(total: int, weights: np.ndarray) -> np.ndarray:
    """Integer counts proportional to `weights` that sum exactly to `total` (largest remainder)."""
    weights = np.asarray(weights, dtype=float)
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(int)
    leftover = total - counts.sum()
    # Ties go to the more popular (earlier) model: argsort is stable on the negated remainders.
    counts[np.argsort(-(exact - counts), kind="stable")[:leftover]] += 1
    return counts


def model_weights(num_models: int, rates: list[float] | None = None,
                  alpha: float | None = None) -> np.ndarray:
    """Each model's share of the traffic, from explicit rates, a power-law exponent, or uniform."""
    if rates is not None and alpha is not None:
        raise ValueError("give per-model rates or a popularity exponent, not both")
    if rates is not None:
        if len(rates) != num_models:
            raise ValueError(f"{len(rates)} model rates for {num_models} models")
        if not all(is_finite_number(rate) and rate > 0 for rate in rates):
            raise ValueError(f"model rates must be positive finite numbers, got {rates}")
        return np.asarray(rates, dtype=float) / sum(rates)
    return power_law_weights(num_models, alpha or 0.0)
