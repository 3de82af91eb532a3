"""Per-model request rates and mean lengths, from explicit values, popularity, or a length dataset."""

from __future__ import annotations

from functools import cache

import numpy as np

from coserve.errors import ConfigError
from coserve.placement.config import LengthConfig, ModelConfig, WorkloadConfig, expanded_names
from coserve.workload import load_trace, power_law_weights


def model_rates(models: list[ModelConfig], workload: WorkloadConfig) -> dict[str, float]:
    """Requests/s of every (expanded) model: its own `rate`, else its share of the popularity split.

    Models without a rate get power-law shares in listed order (rank 1 = first), scaled so they sum
    to `total_rate` or so the first gets `top_rate`.
    """
    explicit = {name: m.rate for m in models for name in expanded_names(m) if m.rate is not None}
    for name, rate in explicit.items():
        if rate <= 0:
            raise ConfigError(f"model {name!r}: rate must be positive, got {rate}")
    implicit = [name for m in models for name in expanded_names(m) if m.rate is None]
    if not implicit:
        return explicit
    weights = power_law_weights(len(implicit), _alpha(workload, implicit))
    shares = dict(zip(implicit, _scale(weights, workload).tolist()))
    starved = [name for name, rate in shares.items() if not rate > 0]
    if starved:  # a steep alpha underflows the tail's share to 0
        raise ConfigError(f"workload.alpha={workload.alpha} leaves {starved[0]!r} (and {len(starved) - 1} more) "
                          "no requests at all; lower alpha, or give those models a rate")
    return {**explicit, **shares}


def _alpha(workload: WorkloadConfig, implicit: list[str]) -> float:
    if workload.total_rate is None and workload.top_rate is None:
        raise ConfigError(f"model {implicit[0]!r} has no rate: give models[].rate, or workload.total_rate "
                          "(or top_rate) with workload.alpha")
    return workload.alpha if workload.alpha is not None else 0.0  # no exponent: uniform popularity


def _scale(weights: np.ndarray, workload: WorkloadConfig) -> np.ndarray:
    if workload.total_rate is not None:
        if workload.total_rate <= 0:
            raise ConfigError(f"workload.total_rate must be positive, got {workload.total_rate}")
        return weights * workload.total_rate
    if workload.top_rate <= 0:
        raise ConfigError(f"workload.top_rate must be positive, got {workload.top_rate}")
    return weights / weights[0] * workload.top_rate


def mean_lengths(name: str, model: LengthConfig, default: LengthConfig, context: int) -> tuple[float, float]:
    """(mean prompt, mean output) tokens of `name`: its own values, else the workload's, else a dataset's."""
    prompt = model.mean_prompt_len or default.mean_prompt_len
    output = model.mean_output_len or default.mean_output_len
    dataset = model.dataset or default.dataset
    if (prompt is None or output is None) and dataset is not None:
        data_prompt, data_output = dataset_means(dataset, context)
        prompt, output = prompt or data_prompt, output or data_output
    if prompt is None or output is None:
        raise ConfigError(f"model {name!r}: give mean_prompt_len and mean_output_len, or a length dataset")
    if prompt + output > context:
        raise ConfigError(f"model {name!r}: mean prompt {prompt:g} + output {output:g} tokens exceed its "
                          f"context of {context}")
    return float(prompt), float(output)


@cache
def dataset_means(dataset: str, context: int) -> tuple[float, float]:
    """Means of a length table after fitting each request in `context` (prompt cut first, then output)."""
    trace = load_trace(dataset)
    prompts = np.minimum(trace.input_lens, context - 1)
    outputs = np.clip(trace.output_lens, 1, context - prompts)
    return float(prompts.mean()), float(outputs.mean())
