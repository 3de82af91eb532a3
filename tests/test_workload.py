"""Workload generation: arrival processes, popularity, length datasets and trace replay."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coserve.workload import (
    TRACES,
    LengthSpec,
    WorkloadSpec,
    gamma_arrivals,
    gamma_arrivals_within,
    generate_workload,
    load_trace,
    model_weights,
    poisson_arrivals,
    power_law_rates,
    replay_arrivals,
    sample_lengths,
    split_count,
)
from coserve.workload.traces import parse_timestamp

# -- arrivals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("burstiness", [0.25, 0.5, 1.0, 2.0, 8.0])
@pytest.mark.parametrize("rate", [0.5, 4.0, 100.0])
def test_gamma_gaps_have_mean_one_over_rate_and_cv2_one_over_burstiness(rate, burstiness):
    times = gamma_arrivals(200_000, rate, burstiness, np.random.default_rng(1))
    gaps = np.diff(times, prepend=0.0)
    assert np.all(gaps >= 0) and np.all(np.diff(times) >= 0)
    # Standard errors at n=200k: mean ~0.2-0.5%, CV^2 ~1-2% for the burstiest case; tolerances ~5 sigma.
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.02)
    cv2 = gaps.var() / gaps.mean() ** 2
    assert cv2 == pytest.approx(1 / burstiness, rel=0.06)


def test_poisson_counts_per_window_are_poisson():
    rate, horizon = 3.0, 20_000
    times = poisson_arrivals(int(rate * horizon * 1.2), rate, np.random.default_rng(7))
    counts = np.bincount(times[times < horizon].astype(int), minlength=horizon)
    assert counts.mean() == pytest.approx(rate, rel=0.03)
    assert counts.var() / counts.mean() == pytest.approx(1.0, abs=0.05)  # index of dispersion
    for k in range(6):
        expected = math.exp(-rate) * rate**k / math.factorial(k)
        assert np.mean(counts == k) == pytest.approx(expected, abs=0.012)


def test_arrivals_within_a_horizon_are_a_poisson_count():
    # Counts in a window of a Poisson process are Poisson(rate x horizon): mean = variance.
    rate, horizon, runs = 0.7, 10.0, 4_000
    rng = np.random.default_rng(11)
    draws = [gamma_arrivals_within(horizon, rate, 1.0, rng) for _ in range(runs)]
    counts = np.array([len(t) for t in draws])
    assert all(np.all(t < horizon) and np.all(np.diff(t) > 0) for t in draws)
    assert counts.mean() == pytest.approx(rate * horizon, rel=0.03)
    assert counts.var() / counts.mean() == pytest.approx(1.0, abs=0.08)
    assert np.mean(counts == 0) == pytest.approx(math.exp(-rate * horizon), abs=0.005)


def test_infinite_rate_sends_everything_at_zero():
    assert np.array_equal(gamma_arrivals(5, math.inf, 0.5, np.random.default_rng(0)), np.zeros(5))


@pytest.mark.parametrize("bad", [dict(rate=0.0, burstiness=1.0), dict(rate=1.0, burstiness=0.0)])
def test_gamma_rejects_nonpositive_parameters(bad):
    with pytest.raises(ValueError):
        gamma_arrivals(3, rng=np.random.default_rng(0), **bad)


def test_replay_shifts_to_zero_and_compresses_gaps():
    stamps = np.array([100.0, 101.0, 103.5, 110.0])
    assert np.allclose(replay_arrivals(stamps, 10.0), [0.0, 0.1, 0.35, 1.0])
    assert np.allclose(replay_arrivals(stamps), [0.0, 1.0, 3.5, 10.0])


# -- popularity ----------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 2.1])
def test_power_law_rates_sum_to_total_and_follow_the_exponent(alpha):
    rates = power_law_rates(7, alpha, total_rate=12.5)
    assert rates.sum() == pytest.approx(12.5, rel=1e-12)
    expected = np.array([(i + 1) ** -alpha for i in range(7)])
    assert np.allclose(rates / rates[0], expected, rtol=1e-12, atol=0)


@given(st.integers(0, 10_000), st.lists(st.floats(0.01, 100), min_size=1, max_size=20))
def test_split_count_sums_exactly_and_stays_within_one_of_proportional(total, weights):
    counts = split_count(total, np.array(weights))
    exact = total * np.array(weights) / sum(weights)
    assert counts.sum() == total
    assert np.all(np.abs(counts - exact) < 1)


def test_model_weights_from_rates_alpha_or_uniform():
    assert np.allclose(model_weights(3, rates=[1.0, 2.0, 1.0]), [0.25, 0.5, 0.25])
    assert np.allclose(model_weights(4), [0.25] * 4)
    with pytest.raises(ValueError):
        model_weights(2, rates=[1.0, 2.0], alpha=1.0)
    with pytest.raises(ValueError):
        model_weights(3, rates=[1.0, 2.0])


# -- datasets ------------------------------------------------------------------------------------

ROWS = {"azure-code": 8_819, "azure-conv": 19_366, "sharegpt-lengths": 30_731, "arxiv-lengths": 28_257}


@pytest.mark.parametrize("name", sorted(TRACES))
def test_vendored_traces_load_with_positive_lengths(name):
    trace = load_trace(name)
    assert len(trace) == ROWS[name]
    assert trace.input_lens.min() >= 1 and trace.output_lens.min() >= 1
    if TRACES[name].time_column:
        assert trace.timestamps[0] == 0.0 and np.all(np.diff(trace.timestamps) >= 0)
        assert 3_000 < trace.timestamps[-1] < 3_700  # both logs span about an hour


@pytest.mark.parametrize("name", sorted(TRACES))
def test_sampled_lengths_are_capped(name):
    spec = LengthSpec(name, max_input_len=512, max_output_len=64)
    lengths = sample_lengths(spec, 2_000, np.random.default_rng(0))
    assert len(lengths) == 2_000
    assert lengths.input_lens.min() >= 1 and lengths.input_lens.max() <= 512
    assert lengths.output_lens.min() >= 1 and lengths.output_lens.max() <= 64
    assert lengths.input_lens.max() == 512  # every trace has prompts longer than the cap


def test_random_lengths_stay_in_the_ratio_range():
    spec = LengthSpec("random", input_len=100, output_len=20, range_ratio=0.5)
    lengths = sample_lengths(spec, 5_000, np.random.default_rng(0))
    assert lengths.input_lens.min() == 50 and lengths.input_lens.max() == 150
    assert lengths.output_lens.min() == 10 and lengths.output_lens.max() == 30
    fixed = sample_lengths(LengthSpec(input_len=7, output_len=3), 10, np.random.default_rng(0))
    assert set(fixed.input_lens) == {7} and set(fixed.output_lens) == {3}


def test_azure_timestamps_parse_to_seconds():
    assert parse_timestamp("2023-11-16 18:17:04.0319600") - parse_timestamp("2023-11-16 18:17:03.9799600") \
        == pytest.approx(0.052, abs=1e-6)
    assert parse_timestamp("2023-11-16 18:18:00") - parse_timestamp("2023-11-16 18:17:00") == 60.0


@pytest.mark.parametrize("name", ["azure-code", "azure-conv"])
def test_azure_replay_keeps_order_and_scaled_gaps(name):
    trace = load_trace(name)
    spec = WorkloadSpec(models=("a", "b"), num_prompts=500, time_scale=10.0, lengths=LengthSpec(name))
    requests = generate_workload(spec)
    assert [r.input_len for r in requests] == list(trace.input_lens[:500])
    assert [r.output_len for r in requests] == list(trace.output_lens[:500])
    times = np.array([r.arrival_time for r in requests])
    assert np.allclose(np.diff(times), np.diff(trace.timestamps[:500]) / 10.0, atol=1e-9)
    assert {r.model for r in requests} == {"a", "b"}


def test_replay_refuses_more_requests_than_the_trace_holds():
    with pytest.raises(ValueError, match="holds"):
        generate_workload(WorkloadSpec(models=("a",), num_prompts=9_000, lengths=LengthSpec("azure-code")))


# -- whole workloads ------------------------------------------------------------------------------


def test_workload_splits_requests_by_popularity_and_keeps_the_total_rate():
    spec = WorkloadSpec(models=("m0", "m1", "m2"), num_prompts=6_000, request_rate=50.0, alpha=1.0, seed=3)
    requests = generate_workload(spec)
    times = np.array([r.arrival_time for r in requests])
    assert np.all(np.diff(times) >= 0) and [r.request_id for r in requests] == list(range(6_000))
    counts = [sum(r.model == m for r in requests) for m in spec.models]
    assert counts == list(split_count(6_000, spec.weights()))
    # Each model is its own stream at its own rate; together they last about N / total rate.
    assert times[-1] == pytest.approx(6_000 / 50.0, rel=0.05)
    for model, rate in zip(spec.models, power_law_rates(3, 1.0, 50.0)):
        own = times[[r.model == model for r in requests]]
        assert np.diff(own).mean() == pytest.approx(1 / rate, rel=0.08)


def test_explicit_model_rates_override_the_total():
    spec = WorkloadSpec(models=("a", "b"), num_prompts=4_000, request_rate=1.0, model_rates=(30.0, 10.0))
    assert spec.total_rate == 40.0
    requests = generate_workload(spec)
    assert sum(r.model == "a" for r in requests) == 3_000
    assert requests[-1].arrival_time == pytest.approx(100.0, rel=0.05)


def test_a_duration_bounds_every_models_arrivals():
    # A count-based workload gives a model of 0.05 req/s its one request about 20 s in, far past a
    # 2 s window; a duration gives it none in most windows and never one after the window.
    spec = WorkloadSpec(models=("busy", "rare"), model_rates=(200.0, 0.05), duration=2.0, seed=5,
                        lengths=LengthSpec("sharegpt-lengths"))
    requests = generate_workload(spec)
    assert requests[-1].arrival_time < 2.0
    assert sum(r.model == "busy" for r in requests) == pytest.approx(400, abs=5 * math.sqrt(400))
    rare_counts = [sum(r.model == "rare" for r in generate_workload(replace(spec, seed=s))) for s in range(200)]
    assert np.mean(rare_counts) == pytest.approx(0.1, abs=0.07)
    with pytest.raises(ValueError):
        WorkloadSpec(models=("a",), duration=1.0)  # no finite rate
    with pytest.raises(ValueError):
        WorkloadSpec(models=("a",), request_rate=1.0, duration=-1.0)


def test_workloads_are_reproducible_from_the_seed():
    spec = lambda seed: WorkloadSpec(models=("a", "b"), num_prompts=50, request_rate=5.0, seed=seed,
                                     lengths=LengthSpec("sharegpt-lengths"))
    assert generate_workload(spec(1)) == generate_workload(spec(1))
    assert generate_workload(spec(1)) != generate_workload(spec(2))


def test_all_at_once_interleaves_models():
    requests = generate_workload(WorkloadSpec(models=("a", "b"), num_prompts=100))
    assert all(r.arrival_time == 0.0 for r in requests)
    first_half = [r.model for r in requests[:50]]
    assert 10 < first_half.count("a") < 40  # shuffled, not all of model a first


def test_spec_validation():
    with pytest.raises(ValueError):
        WorkloadSpec(models=())
    with pytest.raises(ValueError):
        WorkloadSpec(models=("a",), num_prompts=0)
    for bad in (dict(request_rate=0.0), dict(burstiness=-1.0), dict(time_scale=0.0)):
        with pytest.raises(ValueError):
            WorkloadSpec(models=("a",), **bad)
    with pytest.raises(ValueError):
        LengthSpec("nope")
    with pytest.raises(ValueError):
        LengthSpec(range_ratio=1.0)
