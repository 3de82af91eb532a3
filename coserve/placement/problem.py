"""A validated planning problem: the cluster, each model's shape, workload and SLO, the knobs.

`build_problem` turns a PlanConfig into it and rejects input that no placement can serve, with a
ConfigError that names the model or field.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from coserve.costmodel.hardware import HardwareSpec, get_hardware
from coserve.costmodel.roofline import decode_seconds, prefill_seconds
from coserve.errors import ConfigError
from coserve.execution.models.spec import ModelSpec
from coserve.placement import memory
from coserve.placement.config import PlanConfig, PlannerConfig, SLOConfig, expanded_names
from coserve.placement.shapes import model_spec
from coserve.placement.workload import mean_lengths, model_rates

GIB = 1 << 30


@dataclass(frozen=True)
class Cluster:
    nodes: int
    gpus_per_node: int
    hw: HardwareSpec
    memory_utilization: float

    @property
    def usable_bytes_per_gpu(self) -> float:
        return self.hw.memory_bytes * self.memory_utilization

    @property
    def num_gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    def mesh_sizes(self) -> list[int]:
        """Powers of two up to a node: meshes never span nodes (MuxServe's rule)."""
        return [1 << k for k in range(self.gpus_per_node.bit_length()) if 1 << k <= self.gpus_per_node]


@dataclass(frozen=True)
class ModelDemand:
    index: int  # position in the plan's (expanded) model list
    name: str
    reference: str  # what the plan called the model: a preset, config path, ...
    spec: ModelSpec
    dtype: str
    rate: float  # requests/s
    prompt_len: float  # mean tokens
    output_len: float
    ttft_slo: float | None = None  # seconds; None: no target
    tpot_slo: float | None = None
    min_mesh: int = 1  # the fewest GPUs that hold it with room for one request

    @property
    def weight_bytes(self) -> int:
        return self.spec.param_bytes(memory.parse_dtype(self.dtype))

    @property
    def computation(self) -> float:
        """MuxServe's computation requirement: popularity x size (bytes stand in for parameters)."""
        return self.rate * self.weight_bytes


@dataclass(frozen=True)
class Problem:
    cluster: Cluster
    models: tuple[ModelDemand, ...]
    settings: PlannerConfig

    def with_rates(self, rates: dict[str, float]) -> Problem:
        """The same problem under other rates (the benchmark sweeps popularity this way)."""
        return replace(self, models=tuple(replace(m, rate=rates[m.name]) for m in self.models))


def build_problem(config: PlanConfig) -> Problem:
    c = config.cluster
    hw = get_hardware(c.gpu, c.interconnect, c.hardware)
    cluster = Cluster(c.nodes, c.gpus_per_node, hw, c.memory_utilization)
    rates = model_rates(config.models, config.workload)
    models = []
    for entry in config.models:
        spec = model_spec(entry.model, entry.name)
        for name in expanded_names(entry):
            prompt, output = mean_lengths(name, entry, config.workload, spec.max_position_embeddings)
            model = ModelDemand(len(models), name, entry.model, spec, entry.dtype, rates[name], prompt, output)
            model = replace(model, min_mesh=min_mesh_size(model, cluster, config.planner))
            models.append(_with_slo(model, entry.slo or config.slo, config.slo, hw))
    problem = Problem(cluster, tuple(models), config.planner)
    check_capacity(problem)
    return problem


def min_mesh_size(model: ModelDemand, cluster: Cluster, settings: PlannerConfig) -> int:
    """Fewest GPUs (a mesh size) whose memory holds the model plus one whole request's KV."""
    for size in cluster.mesh_sizes():
        if memory.valid_tensor_degree(model.spec, size) and _footprint(model, cluster, settings, size) <= \
                cluster.usable_bytes_per_gpu:
            return size
    need = _footprint(model, cluster, settings, cluster.gpus_per_node) * cluster.gpus_per_node
    raise ConfigError(f"model {model.name!r} ({model.weight_bytes / GIB:.1f} GiB of weights) does not fit the "
                      f"largest mesh, one node of {cluster.gpus_per_node} x {cluster.hw.name} "
                      f"({cluster.usable_bytes_per_gpu * cluster.gpus_per_node / GIB:.1f} GiB usable; "
                      f"needs {need / GIB:.1f} GiB)")


def _footprint(model: ModelDemand, cluster: Cluster, settings: PlannerConfig, tp: int) -> float:
    spec, dtype = model.spec, model.dtype
    return (memory.weight_bytes(spec, dtype, tp)
            + memory.reserve_bytes(spec, dtype, tp, cluster.hw, settings.max_num_batched_tokens,
                                   settings.max_num_seqs)
            + (model.prompt_len + model.output_len) * memory.kv_bytes_per_token(spec, dtype, tp))


def check_capacity(problem: Problem) -> None:
    """Reject a plan whose models' weights and reserves alone exceed the whole cluster's memory."""
    cluster, settings = problem.cluster, problem.settings
    need = sum(_footprint(m, cluster, settings, m.min_mesh) * m.min_mesh for m in problem.models)
    have = cluster.usable_bytes_per_gpu * cluster.num_gpus
    if need > have:
        biggest = max(problem.models, key=lambda m: m.weight_bytes)
        raise ConfigError(f"models need {need / GIB:.1f} GiB (weights, reserves, one request each) but the cluster "
                          f"has {have / GIB:.1f} GiB usable ({cluster.num_gpus} x {cluster.hw.name}); the largest "
                          f"is {biggest.name!r} at {biggest.weight_bytes / GIB:.1f} GiB")


def _with_slo(model: ModelDemand, slo: SLOConfig, default: SLOConfig, hw: HardwareSpec) -> ModelDemand:
    """Absolute targets win; a scale multiplies the latency of one request alone on its smallest mesh."""
    scale = slo.scale if slo.scale is not None else default.scale
    ttft = slo.ttft_ms / 1e3 if slo.ttft_ms else None
    tpot = slo.tpot_ms / 1e3 if slo.tpot_ms else None
    if scale is not None:
        base_ttft, base_tpot = solo_latency(model, hw)
        ttft = ttft or scale * base_ttft
        tpot = tpot or scale * base_tpot
    return replace(model, ttft_slo=ttft, tpot_slo=tpot)


def solo_latency(model: ModelDemand, hw: HardwareSpec) -> tuple[float, float]:
    """(TTFT, TPOT) of one mean-length request alone on the model's smallest mesh, all of it."""
    spec, tp = model.spec, model.min_mesh
    ttft = prefill_seconds(spec, model.dtype, hw, round(model.prompt_len), (model.prompt_len - 1) / 2, tp=tp)
    tpot = decode_seconds(spec, model.dtype, hw, 1, model.prompt_len + model.output_len / 2, tp=tp)
    return ttft, tpot
