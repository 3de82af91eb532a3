"""`coserve profile`: time the real engine's lane jobs over a mix of batch shapes, fit a cost model.

Every job a lane runs is timed from the end of the lane's previous job to its own sampled tokens:
profiles run back to back, so that span is the job plus the host work around it (applying the
last tokens, scheduling, preparing the batch), which is what a simulated lane must reproduce.
The mix covers prompt-heavy and decode-heavy batches at several batch sizes; the fit is least
squares over BatchShape's features with coefficients kept non-negative (a negative cost per
token would predict faster steps for bigger batches), one fit per batch-size regime where the
engine changes kernels (float32 on CPU: our GEMV up to cpu_kernels.SMALL_BATCH rows, BLAS above).

A lane that leaves cores free is profiled a second time beside a busy neighbour: a second lane of
the same device, on those cores, generating with another model (by default the same one) through
the same host process; and where two lanes of its size fit, with its batches split over both. Per
kernel regime, total measured over total predicted-alone span is the lane's slowdown beside a busy
lane, and split, which the simulator applies while another lane of the device runs.
"""

from __future__ import annotations

import time

import numpy as np

from coserve.engine.config import EngineConfig
from coserve.engine.device_engine import DeviceEngine, available_cores
from coserve.engine.llm_engine import LLMEngine
from coserve.errors import ConfigError
from coserve.execution.cpu_kernels import SMALL_BATCH
from coserve.execution.process_lanes import ProcessLanes
from coserve.sampling_params import SamplingParams
from coserve.simulator.cost import BatchShape, CostRegime, FittedModel, batch_shape


class TimedLanes:
    """Real lanes run back to back; each job's shape and span (previous end to its end) recorded."""

    def __init__(self, inner: ProcessLanes, timed_lane: int | None = None):
        self.inner = inner
        self.timed_lane = timed_lane  # None: every lane
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
            if self.timed_lane in (None, lane):
                self.samples.append((shape, now - started))
            self._last_end[lane] = now
        return results

    def close(self):
        self.inner.close()


class TimedSplitBatches:
    """Real lanes running one model's batches split over several lanes, one batch at a time: each
    split batch recorded as (its largest part's shape, previous batch end to its last part's end),
    so the ratio to the part's alone cost holds the lanes' interference and the wait for the
    slower part. Batches that ran on one lane are not recorded."""

    def __init__(self, inner: ProcessLanes):
        self.inner = inner
        self.num_lanes = inner.num_lanes
        self.samples: list[tuple[BatchShape, float]] = []
        self._parts: list[BatchShape] = []
        self._in_flight: set[int] = set()
        self._batch_start = self._last_end = None

    def submit(self, lane, model, engine, part):
        if not self._in_flight:
            self._parts = []
            self._batch_start = self._last_end or time.perf_counter()
        self._parts.append(batch_shape(part))
        self._in_flight.add(lane)
        self.inner.submit(lane, model, engine, part)

    def wait(self):
        results = self.inner.wait()
        self._in_flight -= {lane for lane, _ in results}
        if not self._in_flight:
            self._last_end = time.perf_counter()
            if len(self._parts) > 1:
                largest = max(self._parts, key=lambda shape: (shape.tokens, shape.kv_read))
                self.samples.append((largest, self._last_end - self._batch_start))
        return results

    def close(self):
        self.inner.close()


PROFILE_BATCHES = (1, 4, 8, 16, 32)
PROBE_BATCHES = (8, 16)  # a speed probe reruns these: one on each side of cpu_kernels.SMALL_BATCH


PROMPTS_ALONE = 24  # prefill-only jobs, one prompt each, lengths spread evenly in log scale


def shape_mix(seed: int = 0, max_prompt: int = 512) -> list[tuple[int, list[tuple[int, int]]]]:
    """(max_num_seqs, [(prompt_len, output_len)]) runs: long prompts alone, short prompts batched,
    long decodes at batch sizes 1 to 32, so every feature varies on its own, and single prompts
    of 16 tokens up to `max_prompt`. Without those the batched runs leave few prefill jobs between
    32 and 256 tokens, where served prompts fall (ShareGPT's): the fits of the small models then
    priced them 7-11% long, and their TTFT in the simulator ran 16% long."""
    rng = np.random.default_rng(seed)
    runs = []
    for batch in PROFILE_BATCHES:
        lengths = [(int(rng.integers(8, max_prompt)), int(rng.integers(8, 48))) for _ in range(batch * 2)]
        runs.append((batch, lengths))
    runs.append((8, [(max_prompt, 1) for _ in range(4)]))
    prompts = np.geomspace(16, max_prompt, PROMPTS_ALONE).round().astype(int)
    runs.append((1, [(int(n), 1) for n in rng.permutation(prompts)]))
    return runs


NEIGHBOUR = "neighbour"
NEIGHBOUR_REQUESTS = 4  # what the neighbour lane keeps in flight: prefill chunks beside decode rows


def _add_request(engine: LLMEngine, rng: np.random.Generator, prompt_len: int, output_len: int) -> None:
    prompt = rng.integers(100, min(engine.spec.vocab_size, 30000), size=prompt_len).tolist()
    engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True))


def _keep_busy(engine: LLMEngine | None, rng: np.random.Generator) -> None:
    """Top the neighbour up to NEIGHBOUR_REQUESTS requests of 96 prompt and 32 output tokens."""
    while engine is not None and len(engine.states) < NEIGHBOUR_REQUESTS:
        _add_request(engine, rng, 96, 32)


def _run_mix(config: EngineConfig, seed: int, make_device,
             only_batches: tuple[int, ...] | None = None) -> list[tuple[BatchShape, float]]:
    """The shape mix (or its decode runs of `only_batches` requests at once) through fresh devices
    from `make_device(engine) -> (device, timer, neighbour)`."""
    samples: list[tuple[BatchShape, float]] = []
    runs = shape_mix(seed, min(512, (config.max_model_len or 2048) // 2))
    if only_batches is not None:
        runs = [runs[PROFILE_BATCHES.index(batch)] for batch in only_batches]
    for max_num_seqs, lengths in runs:
        engine = LLMEngine(EngineConfig(**{**config.__dict__, "max_num_seqs": max_num_seqs}))
        device, timer, neighbour = make_device(engine)
        try:
            rng = np.random.default_rng(seed)
            for prompt_len, output_len in lengths:
                _add_request(engine, rng, prompt_len, output_len)
            while engine.has_unfinished_requests():
                _keep_busy(neighbour, rng)
                device.step()
        finally:
            device.close()
        samples += timer.samples[1:]  # the first job of a fresh lane pays for warming its caches
    return samples


def profile(config: EngineConfig, cores: list[int], seed: int = 0, neighbour: EngineConfig | None = None,
            neighbour_cores: list[int] | None = None,
            only_batches: tuple[int, ...] | None = None) -> list[tuple[BatchShape, float]]:
    """Timed jobs of `config` on a lane of `cores` (the whole mix, or its runs of `only_batches`).
    With a `neighbour`, the same device runs that model on a second lane (`neighbour_cores`) all
    the while, through the same host process: the neighbour's memory traffic and its share of the
    host work both slow the timed lane, as they do when the device's policy runs two models at once."""

    def make_device(engine):
        engines = {engine.config.name: engine}
        lane_cores = [cores]
        if neighbour is not None:
            engines[NEIGHBOUR] = LLMEngine(EngineConfig(**{**neighbour.__dict__, "name": NEIGHBOUR}))
            lane_cores.append(neighbour_cores)
        timer = TimedLanes(ProcessLanes(engines, lane_cores), timed_lane=0)
        policy = "spatial" if neighbour else "temporal"
        return DeviceEngine(engines, policy, executor=timer, spread_batches=False), timer, engines.get(NEIGHBOUR)

    return _run_mix(config, seed, make_device, only_batches)


def speed_probe(config: EngineConfig, cores: list[int], reference: list[tuple[BatchShape, float]],
                seed: int = 0) -> float:
    """How much slower (>1) or faster the machine runs `config`'s lane jobs on `cores` now than when
    `reference` (the cost file's samples "alone" for that lane size) was profiled: the profile's
    runs of PROBE_BATCHES again (about 130 jobs, seconds to a minute), compared job for job with the
    same batch shapes then. Against the fit instead, a probe would also measure the fit's bias on
    this part of the mix (it read 1.095 on a machine that served the workload at the fitted speed).
    A shared VM's speed drifts: the same requests measured TPOT p50 74 to 88 ms an hour apart."""
    return speed_factor(profile(config, cores, seed, only_batches=PROBE_BATCHES), reference)


def speed_factor(samples: list[tuple[BatchShape, float]], reference: list[tuple[BatchShape, float]]) -> float:
    """Total time of `samples` over total time of the same shapes in `reference` (each reference job
    used once; shapes it lacks are left out): a total, so long jobs weigh as much as they take."""
    then: dict[BatchShape, list[float]] = {}
    for shape, seconds in reference:
        then.setdefault(shape, []).append(seconds)
    pairs = [(seconds, then[shape].pop()) for shape, seconds in samples if then.get(shape)]
    if len(pairs) < len(samples) / 2:
        raise ValueError(f"only {len(pairs)} of {len(samples)} probe jobs match the reference's batch shapes")
    return sum(now for now, _ in pairs) / sum(before for _, before in pairs)


def profile_split(config: EngineConfig, lane_cores: list[list[int]], seed: int = 0) -> list[tuple[BatchShape, float]]:
    """Batches of `config` split over lanes of `lane_cores` (as a device spreads a batch no other
    model waits for), timed per batch by TimedSplitBatches."""

    def make_device(engine):
        engines = {engine.config.name: engine}
        timer = TimedSplitBatches(ProcessLanes(engines, lane_cores))
        return DeviceEngine(engines, "mux", executor=timer, spread_batches=True), timer, None

    return _run_mix(config, seed, make_device)


MIN_SAMPLES_PER_REGIME = 20  # four per coefficient


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


def fit_regimes(samples: list[tuple[BatchShape, float]], bounds: tuple[int, ...] = ()) -> list[CostRegime]:
    """One fit per regime of new tokens per job, split at `bounds`; a regime with too few samples
    to fit is left to the next one up."""
    regimes, low = [], 0
    for bound in (*sorted(bounds), None):
        chosen = [(shape, t) for shape, t in samples if shape.tokens > low and (bound is None or shape.tokens <= bound)]
        if len(chosen) >= MIN_SAMPLES_PER_REGIME or (bound is None and chosen):
            regimes.append(CostRegime(bound, fit(chosen)))
        low = bound
    return regimes


def regime_bounds(config: EngineConfig) -> tuple[int, ...]:
    """Where the engine changes kernels with the batch size, for the lanes `profile` times (CPU)."""
    return (SMALL_BATCH,) if config.dtype == "float32" else ()


def _ratios(model: FittedModel, size: str, samples: list[tuple[BatchShape, float]]) -> np.ndarray:
    """Measured over predicted span of each sample."""
    predicted = np.array([model.seconds(shape, size) for shape, _ in samples])
    return np.array([seconds for _, seconds in samples]) / predicted


def profile_lanes(config: EngineConfig, lane_sizes: list[int], contention: bool = True,
                  neighbour: EngineConfig | None = None) -> dict[str, dict]:
    """Timed jobs per lane size (cores): "alone"; where cores are left over (unless `contention` is
    off), "beside" a busy lane of `neighbour` (default: the same model) on them; where two lanes of
    the size fit, "split": batches spread over two such lanes."""
    cores = available_cores()
    bad = [size for size in lane_sizes if isinstance(size, bool) or not isinstance(size, int)
           or not 1 <= size <= len(cores)]
    if bad:
        raise ConfigError(f"lane sizes must be whole numbers of cores from 1 to the {len(cores)} this process "
                          f"may use, got {bad}")
    profiles = {}
    for size in lane_sizes:
        runs = {"alone": profile(config, cores[:size])}
        if contention and size < len(cores):
            runs["beside"] = profile(config, cores[:size], neighbour=neighbour or config, neighbour_cores=cores[size:])
        if contention and 2 * size <= len(cores):
            runs["split"] = profile_split(config, [cores[:size], cores[size:2 * size]])
        profiles[str(size)] = runs
    return profiles


def fit_profiles(name: str, device: str, profiles: dict[str, dict],
                 bounds: tuple[int, ...] = ()) -> tuple[FittedModel, dict]:
    """One fit per lane size and batch-size regime (split at `bounds`); per regime, the slowdowns
    beside a busy lane and split over lanes (see _slowdowns); and each fit's
    relative error on its own samples. The samples stay in the cost file, so a later fit needs no
    new profile."""
    coefficients, errors = {}, {}
    for key, runs in profiles.items():
        regimes = fit_regimes(runs["alone"], bounds)
        model = FittedModel(name, device, {key: regimes})
        errors[key] = {"samples": len(runs["alone"]),
                       "median_abs_rel_error": float(np.median(np.abs(_ratios(model, key, runs["alone"]) - 1)))}
        beside = _slowdowns(model, key, runs.get("beside", []))
        split = _slowdowns(model, key, runs.get("split", []))
        coefficients[key] = [CostRegime(r.max_tokens, r.values, beside.get(r.max_tokens, 1.0),
                                        split.get(r.max_tokens)) for r in regimes]
        errors[key]["slowdown_beside_busy_lane"] = beside
        errors[key]["slowdown_split_batch"] = split
    return FittedModel(name, device, coefficients, profiles), errors


def _slowdowns(model: FittedModel, key: str, samples: list[tuple[BatchShape, float]]) -> dict:
    """Regime (max_tokens) -> max(1, total measured over total predicted-alone span of its jobs),
    or of all jobs where the regime has too few; {} without samples. Totals, not a median: the
    slow tail (a job that waited for the host process behind the other lane) is time that requests
    wait too, and the fit itself is unbiased in total (least squares with a constant term)."""
    if not samples:
        return {}

    timed = [(model.regime(shape, key), t, model.seconds(shape, key)) for shape, t in samples]

    def ratio(chosen):
        return max(1.0, sum(t for _, t, _ in chosen) / sum(p for _, _, p in chosen))

    result = {}
    for regime in model.coefficients[key]:
        mine = [job for job in timed if job[0] is regime]
        result[regime.max_tokens] = ratio(mine) if len(mine) >= MIN_SAMPLES_PER_REGIME else ratio(timed)
    return result


def profile_and_fit(config: EngineConfig, lane_sizes: list[int], device: str, contention: bool = True,
                    neighbour: EngineConfig | None = None) -> tuple[FittedModel, dict]:
    profiles = profile_lanes(config, lane_sizes, contention, neighbour)
    return fit_profiles(config.name, device, profiles, regime_bounds(config))
