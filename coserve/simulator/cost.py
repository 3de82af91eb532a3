"""How long a lane takes for a batch part: the shape of the part, then a cost model of that shape.

`RooflineCost` derives durations from the model spec and a hardware spec (coserve.costmodel);
`FittedCost` from coefficients fitted to profiles of the real engine (`coserve profile`). Both
answer `cost(model, part, lane) -> seconds`, the question `SimulatedLanes` asks.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from coserve.costmodel.hardware import HardwareSpec
from coserve.costmodel.roofline import pipeline_seconds, stage_costs
from coserve.engine.scheduler import ScheduledRequest
from coserve.errors import ConfigError
from coserve.execution.models.spec import ModelSpec
from coserve.validation import is_finite_number


@dataclass(frozen=True)
class BatchShape:
    tokens: int  # new tokens computed (prefill chunks and decode tokens together)
    sampled: int  # rows that reach the LM head
    attention_pairs: float  # (query token, key token) pairs attended, summed over the batch
    kv_read: int  # cached tokens read back from pages

    def features(self) -> list[float]:
        """The fitted model's regressors, in COEFFICIENT_NAMES order."""
        return [1.0, float(self.tokens), float(self.sampled), self.attention_pairs, float(self.kv_read)]


COEFFICIENT_NAMES = ("seconds", "per_token", "per_sampled", "per_attention_pair", "per_kv_read")


def batch_shape(part: list[ScheduledRequest]) -> BatchShape:
    tokens = sampled = kv_read = 0
    pairs = 0.0
    for item in part:
        done, new = item.request.num_computed_tokens, item.num_new_tokens
        tokens += new
        sampled += item.completes_known_tokens
        kv_read += done
        pairs += new * done + new * (new + 1) / 2  # token i of the chunk sees done + i + 1 keys
    return BatchShape(tokens, sampled, pairs, kv_read)


@dataclass(frozen=True)
class MeshModel:
    """A model as a mesh runs it: `tp` devices per stage, `pp` stages."""

    spec: ModelSpec
    dtype: str
    tp: int = 1
    pp: int = 1


class RooflineCost:
    """max(FLOPs / peak, bytes / bandwidth) of the whole batch on the lane's share of the device.

    Each of a model's pipeline stages runs in turn on the lane's share of its devices, with a send
    of the hidden states between stages; a lane share above 1 counts as the whole device.
    """

    def __init__(self, models: dict[str, MeshModel], hw: HardwareSpec, lane_shares: list[float]):
        self.models = models
        self.hw = hw
        self.lane_shares = lane_shares

    def __call__(self, model: str, part: list[ScheduledRequest], lane: int) -> float:
        return self.timed(model, part, lane)[0]

    def timed(self, model: str, part: list[ScheduledRequest], lane: int) -> tuple[float, tuple[float, float]]:
        """(seconds alone, (compute, bandwidth)): the fractions of each device's peak FLOP/s and memory
        bandwidth the job uses meanwhile."""
        return self.seconds_and_demands(model, batch_shape(part), self.lane_shares[lane])

    def seconds(self, model: str, shape: BatchShape, share: float, layers: tuple[int, int] | None = None) -> float:
        """The batch through `layers` (all of them by default) on `share` of the device."""
        return self.seconds_and_demands(model, shape, share, layers)[0]

    def seconds_and_demands(self, model: str, shape: BatchShape, share: float,
                            layers: tuple[int, int] | None = None) -> tuple[float, tuple[float, float]]:
        m = self.models[model]
        context = shape.attention_pairs / shape.tokens
        costs = stage_costs(m.spec, m.dtype, self.hw, shape.tokens, context, shape.kv_read, m.tp, m.pp, layers)
        seconds = pipeline_seconds(costs, m.spec, m.dtype, self.hw, shape.tokens, min(1.0, share))
        if seconds <= 0:
            return seconds, (0.0, 0.0)
        # Stages run on their own devices one after another: a device's mean use over the job.
        device_seconds = len(costs) * seconds
        compute = sum(c.flops for c in costs) / (self.hw.flops(m.dtype) * device_seconds)
        bandwidth = sum(c.bytes for c in costs) / (self.hw.memory_bandwidth * device_seconds)
        return seconds, (min(1.0, compute), min(1.0, bandwidth))


@dataclass(frozen=True)
class CostRegime:
    """Coefficients (COEFFICIENT_NAMES order) for jobs of at most `max_tokens` new tokens (None: any
    number), and how much longer such a job takes while another lane of the device runs (`beside`)
    or while another lane runs a part of the same batch (`split`; None: as beside).

    The engine changes kernels with the batch size (on CPU, our GEMV up to cpu_kernels.SMALL_BATCH
    rows, BLAS above), and one line through both regimes fits neither: it overpredicted one-row
    decode steps about 2x. Interference differs by regime too: SmolLM2's memory-bound GEMV parts
    slowed 1.18x split in lockstep over two one-core lanes, its BLAS parts 1.03x."""

    max_tokens: int | None
    values: list[float]
    beside: float = 1.0
    split: float | None = None

    def __post_init__(self) -> None:
        if len(self.values) != len(COEFFICIENT_NAMES) or not all(is_finite_number(v) for v in self.values):
            raise ConfigError(f"a cost regime needs {len(COEFFICIENT_NAMES)} finite coefficients "
                              f"({', '.join(COEFFICIENT_NAMES)}), got {self.values}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError(f"a cost regime's max_tokens must be >= 1 or null, got {self.max_tokens}")
        for name, slowdown in (("slowdown_beside_busy_lane", self.beside), ("slowdown_split_batch", self.split)):
            if slowdown is not None and not (is_finite_number(slowdown) and slowdown > 0):
                raise ConfigError(f"{name} must be a positive finite number, got {slowdown}")

    def covers(self, tokens: int) -> bool:
        return self.max_tokens is None or tokens <= self.max_tokens

    def to_json(self) -> dict:
        return {"max_tokens": self.max_tokens, "values": self.values, "slowdown_beside_busy_lane": self.beside,
                "slowdown_split_batch": self.split}

    @classmethod
    def from_json(cls, body: dict | list, beside: float = 1.0) -> CostRegime:
        """Cost files from before regimes hold one list of numbers (and one slowdown) per lane size."""
        if isinstance(body, list):
            return cls(None, [float(v) for v in body], beside)
        split = body.get("slowdown_split_batch")
        return cls(None if body["max_tokens"] is None else int(body["max_tokens"]), [float(v) for v in body["values"]],
                   float(body.get("slowdown_beside_busy_lane", beside)), None if split is None else float(split))


@dataclass(frozen=True)
class FittedModel:
    """Per lane size (cores on CPU, share of SMs on GPU) and batch-size regime: seconds =
    coefficients . features, and the slowdowns beside busy lanes (1.0 when unmeasured)."""

    model: str
    device: str
    coefficients: dict[str, list[CostRegime]]  # lane size (as a string key) -> regimes, smallest first
    # lane size -> {"alone" | "beside" | "split": [(shape, seconds), ...]}: the timed jobs the fit came from
    samples: dict[str, dict[str, list[tuple[BatchShape, float]]]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        empty = sorted(size for size, regimes in self.coefficients.items() if not regimes)
        if not self.coefficients or empty:
            raise ConfigError(f"the cost file of {self.model} has no coefficients for lanes of {empty or 'any size'}")

    def regime(self, shape: BatchShape, lane_size: str) -> CostRegime:
        if lane_size not in self.coefficients:
            raise ConfigError(f"the cost file of {self.model} on {self.device} has no profile for lanes of "
                              f"{lane_size}; profiled: {sorted(self.coefficients)}")
        regimes = self.coefficients[lane_size]
        return next((r for r in regimes if r.covers(shape.tokens)), regimes[-1])

    def seconds(self, shape: BatchShape, lane_size: str) -> float:
        regime = self.regime(shape, lane_size)
        return max(0.0, sum(c * x for c, x in zip(regime.values, shape.features())))

    def scaled(self, factors: dict[str, float]) -> FittedModel:
        """The same model on a machine whose lanes of each size run `factors[size]` times slower
        (profile.speed_probe measures it; sizes not named stay). Interference slowdowns are ratios
        and stay too."""
        coefficients = {size: [dataclasses.replace(r, values=[v * factors.get(size, 1.0) for v in r.values])
                               for r in regimes] for size, regimes in self.coefficients.items()}
        return dataclasses.replace(self, coefficients=coefficients)

    def coefficients_json(self) -> dict[str, list[dict]]:
        return {size: [r.to_json() for r in regimes] for size, regimes in self.coefficients.items()}

    def save(self, path: str | Path) -> None:
        samples = {size: {run: [[*dataclasses.astuple(shape), seconds] for shape, seconds in jobs]
                          for run, jobs in runs.items()} for size, runs in self.samples.items()}
        body = {"model": self.model, "device": self.device, "features": COEFFICIENT_NAMES,
                "coefficients": self.coefficients_json(), "samples": samples}
        Path(path).write_text(json.dumps(body, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> FittedModel:
        try:
            body = json.loads(Path(path).read_text())
            samples = {size: {run: [(BatchShape(int(t), int(n), float(p), int(k)), float(sec))
                                    for t, n, p, k, sec in jobs] for run, jobs in runs.items()}
                       for size, runs in body.get("samples", {}).items()}
            old_slowdown = body.get("slowdown_beside_busy_lanes", {})
            coefficients = {}
            for size, regimes in body["coefficients"].items():
                beside = float(old_slowdown.get(size, 1.0))
                if regimes and all(isinstance(v, (int, float)) for v in regimes):
                    regimes = [regimes]
                coefficients[size] = [CostRegime.from_json(r, beside) for r in regimes]
            return cls(body["model"], body["device"], coefficients, samples)
        except (OSError, AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path} is not a coserve cost file: {exc}") from exc


class FittedCost:
    """Durations from fitted profiles; `lane_sizes[lane]` picks the profile of that lane's size."""

    def __init__(self, fitted: dict[str, FittedModel], lane_sizes: list[str]):
        for name, model in fitted.items():
            if model.model != name:
                raise ConfigError(f"the cost file given for model {name!r} was profiled for {model.model!r}")
        self.fitted = fitted
        self.lane_sizes = lane_sizes

    def _model(self, model: str) -> FittedModel:
        if model not in self.fitted:
            raise ConfigError(f"no cost file for model {model!r}; have {sorted(self.fitted)}")
        return self.fitted[model]

    def __call__(self, model: str, part: list[ScheduledRequest], lane: int) -> float:
        return self._model(model).seconds(batch_shape(part), self.lane_sizes[lane])

    def interference(self, model: str, part: list[ScheduledRequest], lane: int) -> tuple[float, float]:
        """(beside, split): the job's duration multipliers while another lane runs, and while another
        lane runs a part of the same batch."""
        regime = self._model(model).regime(batch_shape(part), self.lane_sizes[lane])
        return regime.beside, regime.beside if regime.split is None else regime.split

