"""`coserve profile`: time the real engine's lane jobs over a mix of batch shapes, fit a cost model.

Every job a lane runs is timed from the end of the lane's previous job to its own sampled tokens:
profiles run back to back, so that span is the job plus the host work around it (applying the
last tokens, scheduling, preparing the batch), which is what a simulated lane must reproduce.
The mix covers prompt-heavy and decode-heavy batches at several batch sizes; the fit is least
squares over BatchShape's features with coefficients kept non-negative (a negative cost per
token would predict faster steps for bigger batches).

A lane that leaves cores free is profiled a second time with the same model generating on those
cores (a busy neighbour lane): the median of measured over predicted-alone spans is its slowdown
beside busy lanes, which the simulator applies while another lane of the device runs.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from contextlib import contextmanager

import numpy as np

from coserve.engine.config import EngineConfig
from coserve.engine.device_engine import DeviceEngine, available_cores
from coserve.engine.llm_engine import LLMEngine
from coserve.execution.process_lanes import ProcessLanes
from coserve.sampling_params import SamplingParams
from coserve.simulator.cost import BatchShape, FittedModel, batch_shape


class TimedLanes:
    """Real lanes run back to back; each job's shape and span (previous end to its end) recorded."""

    def __init__(self, inner: ProcessLanes):
        self.inner = inner
        self.num_lanes = inner.num_lanes
        self.samples: list[tuple[BatchShape, float]] = []
        self._started: dict[int, tuple[BatchShape, float]] = {}
        self._last_end: dict[int, float] = {}

    def submit(self, lane, model, engine, part):
        started = self._last_end.get(lane, time.perf_counter())
        self._started[lane] = (batch_shape(part), started)
        self.inner.submit(lane, model, engine, part)

    def wait(self):
        results = self.inner.wait()
        now = time.perf_counter()
        for lane, _ in results:
            shape, started = self._started.pop(lane)
            self.samples.append((shape, now - started))
            self._last_end[lane] = now
        return results

    def close(self):
        self.inner.close()


def shape_mix(seed: int = 0, max_prompt: int = 512) -> list[tuple[int, list[tuple[int, int]]]]:
    """(max_num_seqs, [(prompt_len, output_len)]) runs: long prompts alone, short prompts batched,
    and long decodes at batch sizes 1 to 32, so every feature varies on its own."""
    rng = np.random.default_rng(seed)
    runs = []
    for batch in (1, 4, 16, 32):
        lengths = [(int(rng.integers(8, max_prompt)), int(rng.integers(8, 48))) for _ in range(batch * 2)]
        runs.append((batch, lengths))
    runs.append((8, [(max_prompt, 1) for _ in range(4)]))
    return runs


def _neighbour(config: EngineConfig, cores: list[int], ready, stop) -> None:
    """A busy lane next door: the model generating batches of 8 on `cores` until told to stop."""
    import torch

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))
    engine = LLMEngine(config)
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    ready.set()
    while not stop.is_set():
        for i in range(8):
            engine.add_request([100 + i] * 96, params)
        while engine.has_unfinished_requests() and not stop.is_set():
            engine.step()


@contextmanager
def busy_neighbour(config: EngineConfig, cores: list[int]):
    context = mp.get_context("spawn")
    ready, stop = context.Event(), context.Event()
    process = context.Process(target=_neighbour, args=(config, cores, ready, stop), daemon=True)
    process.start()
    try:
        if not ready.wait(300):
            raise RuntimeError("the busy neighbour lane did not start")
        yield
    finally:
        stop.set()
        process.join(30)
        if process.is_alive():
            process.kill()


def profile(config: EngineConfig, cores: list[int], seed: int = 0) -> list[tuple[BatchShape, float]]:
    samples: list[tuple[BatchShape, float]] = []
    for max_num_seqs, lengths in shape_mix(seed, min(512, (config.max_model_len or 2048) // 2)):
        run_config = EngineConfig(**{**config.__dict__, "max_num_seqs": max_num_seqs})
        engine = LLMEngine(run_config)
        lanes = TimedLanes(ProcessLanes({run_config.name: engine}, [cores]))
        device = DeviceEngine({run_config.name: engine}, "temporal", executor=lanes)
        try:
            rng = np.random.default_rng(seed)
            for prompt_len, output_len in lengths:
                prompt = rng.integers(100, min(engine.spec.vocab_size, 30000), size=prompt_len).tolist()
                engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True))
            while device.has_unfinished_requests():
                device.step()
        finally:
            device.close()
        samples += lanes.samples[1:]  # the first job of a fresh lane pays for warming its caches
    return samples


def fit(samples: list[tuple[BatchShape, float]]) -> list[float]:
    """Non-negative least squares by elimination: refit without any feature that came out negative.

    On absolute seconds, not relative error: a token's latency is the whole step it rides in, and
    the long mixed steps (prefill chunks beside decode rows) set both TTFT and TPOT, so those are
    the jobs the fit must get right (a relative-error fit, tried, halved the simulated TPOT).
    """
    x = np.array([shape.features() for shape, _ in samples])
    y = np.array([seconds for _, seconds in samples])
    active = list(range(x.shape[1]))
    while True:
        coefficients, *_ = np.linalg.lstsq(x[:, active], y, rcond=None)
        if (coefficients >= 0).all():
            break
        active.pop(int(np.argmin(coefficients)))
    full = [0.0] * x.shape[1]
    for index, value in zip(active, coefficients):
        full[index] = float(value)
    return full


def _ratios(model: FittedModel, size: str, samples: list[tuple[BatchShape, float]]) -> np.ndarray:
    """Measured over predicted span of each sample."""
    predicted = np.array([model.seconds(shape, size) for shape, _ in samples])
    return np.array([seconds for _, seconds in samples]) / predicted


def profile_lanes(config: EngineConfig, lane_sizes: list[int], contention: bool = True) -> dict[str, dict]:
    """Timed jobs per lane size (cores): "alone", and "beside" a busy lane on the cores left over
    (where cores are left, unless `contention` is off)."""
    cores = available_cores()
    profiles = {}
    for size in lane_sizes:
        runs = {"alone": profile(config, cores[:size])}
        if contention and size < len(cores):
            with busy_neighbour(config, cores[size:]):
                runs["beside"] = profile(config, cores[:size])
        profiles[str(size)] = runs
    return profiles


def fit_profiles(name: str, device: str, profiles: dict[str, dict]) -> tuple[FittedModel, dict]:
    """One fit per lane size, its slowdown beside a busy lane (median measured over predicted-alone
    span), and each fit's relative error on its own samples; the samples stay in the cost file, so
    a later fit needs no new profile."""
    coefficients, slowdown, errors = {}, {}, {}
    for key, runs in profiles.items():
        coefficients[key] = fit(runs["alone"])
        model = FittedModel(name, device, {key: coefficients[key]})
        errors[key] = {"samples": len(runs["alone"]),
                       "median_abs_rel_error": float(np.median(np.abs(_ratios(model, key, runs["alone"]) - 1)))}
        if runs.get("beside"):
            slowdown[key] = max(1.0, float(np.median(_ratios(model, key, runs["beside"]))))
            errors[key]["slowdown_beside_busy_lane"] = slowdown[key]
    return FittedModel(name, device, coefficients, slowdown, profiles), errors


def profile_and_fit(config: EngineConfig, lane_sizes: list[int], device: str,
                    contention: bool = True) -> tuple[FittedModel, dict]:
    return fit_profiles(config.name, device, profile_lanes(config, lane_sizes, contention))
