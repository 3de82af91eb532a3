"""A device as configuration: its memory budget, its lanes and its policy, and building it.

The budget pays for every colocated model's weights, the activations of its largest step, and
one shared KV page pool that gets whatever is left. `build_device` checks the sum before loading
anything, so a config that cannot fit fails at start-up with the bill, not later with an OOM.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from coserve.engine.config import EngineConfig
from coserve.engine.device_engine import DeviceEngine
from coserve.engine.device_pool import DeviceKVPool, PageLayout, initial_quotas
from coserve.engine.llm_engine import LLMEngine, usable_device
from coserve.engine.multiplexer import POLICIES
from coserve.errors import ConfigError
from coserve.execution.models.spec import DTYPE_BYTES, ModelSpec, parse_dtype
from coserve.execution.weights import load_model
from coserve.metrics import SLO
from coserve.validation import is_finite_number

MiB = 1 << 20


@dataclass
class DeviceConfig:
    """`memory_budget_bytes`: weights + activations + KV pool (on CUDA, default: the GPU's free
    memory). `kv_quotas`: fraction of the pages each model may ever hold; under `spatial` the
    default is a fixed slice by expected demand, under `mux` and `temporal` no cap. `lane_cores`:
    the CPU cores of each lane (overrides num_lanes; default: the cores split evenly).
    `spread_batches`: let one model's batch use several idle lanes nobody else is waiting for.
    `wide_lane`: under `mux` on CPU, a batch that would take every lane runs whole on one more worker
    over all their cores instead of split (see DeviceEngine)."""

    policy: str = "mux"
    num_lanes: int = 2
    memory_budget_bytes: int | None = None
    device: str = "cpu"
    kv_quotas: dict[str, float] = field(default_factory=dict)
    lane_cores: list[list[int]] | None = None
    spread_batches: bool = True
    wide_lane: bool = True

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"policy must be one of {list(POLICIES)}, got {self.policy!r}")
        if isinstance(self.num_lanes, bool) or not isinstance(self.num_lanes, int) or self.num_lanes < 1:
            raise ConfigError(f"num_lanes must be a positive integer, got {self.num_lanes!r}")
        if self.lane_cores is not None and (not self.lane_cores or not all(self.lane_cores)):
            raise ConfigError(f"lane_cores needs at least one lane, each with at least one core; got {self.lane_cores}")
        if self.policy == "temporal" and self.lane_cores is not None and len(self.lane_cores) > 1:
            # the policy serves every model in turn on one lane: further lanes would hold cores idle
            merged = sorted({core for lane in self.lane_cores for core in lane})
            raise ConfigError(f"lane_cores: the temporal policy runs one lane; give it one list of cores "
                              f"(e.g. [{merged}]), got {self.lane_cores}")
        budget = self.memory_budget_bytes
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0):
            raise ConfigError(f"memory_budget_bytes must be a positive integer, got {budget!r}")
        bad = {m: q for m, q in self.kv_quotas.items() if not is_finite_number(q) or not 0 < q <= 1}
        if bad:
            raise ConfigError(f"kv_quotas are fractions of the pool in (0, 1]; got {bad}")
        if sum(self.kv_quotas.values()) > 1 + 1e-9:
            raise ConfigError(f"kv_quotas sum to {sum(self.kv_quotas.values()):.0%} of the pool, over 100%")


@dataclass(frozen=True)
class ColocatedModel:
    config: EngineConfig
    rate: float = 1.0  # expected requests per second: sizes its share of pages
    slo: SLO | None = None


@dataclass(frozen=True)
class MemoryBill:
    weights: dict[str, int]
    activations: dict[str, int]
    budget: int

    @property
    def kv_bytes(self) -> int:
        return self.budget - sum(self.weights.values()) - sum(self.activations.values())

    def describe(self) -> str:
        items = [f"{name} weights {b / MiB:.1f} MiB" for name, b in self.weights.items()]
        items += [f"{name} activations {b / MiB:.1f} MiB" for name, b in self.activations.items()]
        return ", ".join(items)


def activation_bytes(spec: ModelSpec, config: EngineConfig) -> int:
    """The largest step's transient tensors: one layer's widest intermediates for every batched
    token (the hidden stream, q/k/v, the gate/up pair) plus float32 logits for every sequence."""
    width = spec.hidden_size * 2 + spec.q_size + 2 * spec.kv_size + 2 * spec.intermediate_size
    dtype_bytes = DTYPE_BYTES[parse_dtype(config.dtype)]
    return config.max_num_batched_tokens * width * dtype_bytes + config.max_num_seqs * spec.vocab_size * 4


def memory_bill(models: list[ColocatedModel], specs: dict[str, ModelSpec], budget: int) -> MemoryBill:
    weights = {m.config.name: specs[m.config.name].param_bytes(parse_dtype(m.config.dtype)) for m in models}
    activations = {m.config.name: activation_bytes(specs[m.config.name], m.config) for m in models}
    return MemoryBill(weights, activations, budget)


@dataclass(frozen=True)
class DevicePlan:
    """What a device's configuration decides before any engine exists (the simulator reuses it)."""

    layout: PageLayout
    page_caps: dict[str, int]  # fixed per-model page limits (empty: none)
    demand: dict[str, float]  # rate x KV bytes per token
    slos: dict[str, SLO]

    def tokens_per_page(self, spec: ModelSpec, dtype: str) -> int:
        return self.layout.page_bytes // spec.kv_bytes_per_token(parse_dtype(dtype))


def plan_device(models: list[ColocatedModel], device: DeviceConfig, specs: dict[str, ModelSpec]) -> DevicePlan:
    """Check the models against the device and size its pool; ConfigError names what does not fit."""
    _check_models(models, device)
    bill = memory_bill(models, specs, _budget(device))
    layout = _layout([(specs[m.config.name], parse_dtype(m.config.dtype)) for m in models], bill, len(models))
    demand = {m.config.name: m.rate * specs[m.config.name].kv_bytes_per_token(parse_dtype(m.config.dtype))
              for m in models}
    slos = {m.config.name: m.slo for m in models if m.slo is not None}
    return DevicePlan(layout, _page_caps(device, demand, layout.num_pages), demand, slos)


def build_device(models: list[ColocatedModel], device: DeviceConfig) -> DeviceEngine:
    usable_device(device.device)
    specs = {m.config.name: load_model(m.config.model, tokenizer=False, layer_range=(0, 1)).spec for m in models}
    plan = plan_device(models, device, specs)
    pool = DeviceKVPool(plan.layout, device.device)
    if plan.page_caps:
        pool.set_quotas(plan.page_caps, fixed=True)
    engines = {m.config.name: LLMEngine(m.config, pool=pool) for m in models}
    return DeviceEngine(engines, device.policy, device.num_lanes, slos=plan.slos, demand=plan.demand,
                        lane_cores=device.lane_cores, spread_batches=device.spread_batches,
                        wide_lane=device.wide_lane)


def _check_models(models: list[ColocatedModel], device: DeviceConfig) -> None:
    if not models:
        raise ConfigError("a device needs at least one model")
    names = [m.config.name for m in models]
    if len(set(names)) != len(names):
        raise ConfigError(f"model names on a device must be unique, got {names}")
    unknown = sorted(set(device.kv_quotas) - set(names))
    if unknown:
        raise ConfigError(f"kv_quotas name models not on this device: {unknown}")
    for m in models:
        if m.config.device != device.device:
            raise ConfigError(f"model {m.config.name!r} is configured for {m.config.device!r} but the device "
                              f"is {device.device!r}")
        if not is_finite_number(m.rate) or m.rate <= 0:
            raise ConfigError(f"model {m.config.name!r}: rate must be a positive finite number, got {m.rate!r}")



def _budget(device: DeviceConfig) -> int:
    if device.memory_budget_bytes is not None:
        return device.memory_budget_bytes
    if device.device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device.device))
        return free
    raise ConfigError("a CPU device needs memory_budget_bytes (how much of the host's memory it may use)")


def _layout(dtypes: list[tuple[ModelSpec, torch.dtype]], bill: MemoryBill, num_models: int) -> PageLayout:
    page_bytes = PageLayout.page_bytes_for(dtypes)
    if bill.kv_bytes < page_bytes * num_models:
        raise ConfigError(
            f"the models do not fit the device's memory budget of {bill.budget / MiB:.1f} MiB: "
            f"{bill.describe()} leave {bill.kv_bytes / MiB:.1f} MiB for KV pages, but one page for each of "
            f"{num_models} models needs {page_bytes * num_models / MiB:.1f} MiB")
    return PageLayout.for_models(dtypes, bill.kv_bytes)


def _page_caps(device: DeviceConfig, demand: dict[str, float], num_pages: int) -> dict[str, int]:
    """Fixed per-model page caps: the configured fractions; under `spatial`, the models without one
    also get a fixed slice, of the pages the fractions leave, by demand (spatial shares nothing)."""
    caps = {m: int(q * num_pages) for m, q in device.kv_quotas.items()}
    empty = sorted(m for m, pages in caps.items() if pages < 1)
    if empty:
        raise ConfigError(f"kv_quotas of {empty} round to zero of the pool's {num_pages} pages")
    unnamed = {m: d for m, d in demand.items() if m not in caps}
    if device.policy != "spatial" or not unnamed:
        return caps
    left = num_pages - sum(caps.values())
    if left < len(unnamed):  # with no fractions given, _layout checked there is a page per model
        raise ConfigError(f"kv_quotas leave {left} of {num_pages} pages for the {len(unnamed)} models without a "
                          f"quota ({sorted(unnamed)}); spatial gives each a fixed slice of at least one page")
    return {**caps, **initial_quotas(unnamed, left)}
