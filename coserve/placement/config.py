"""The YAML input of `coserve plan`: the cluster, the models, their workload and SLOs.

Validated with pydantic (`extra="forbid"`), so a misspelt or out-of-range field is named in the
error rather than guessed. Per-model fields override the `workload` and `slo` defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from coserve.workload import TRACES
from coserve.yaml_config import StrictConfig, read_yaml, validate

Dtype = Literal["float16", "bfloat16", "float32"]
Objective = Literal["throughput", "slo"]
LENGTH_DATASETS = tuple(TRACES)


class ClusterConfig(StrictConfig):
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(8, ge=1)
    gpu: str = "A100-80GB"
    interconnect: Literal["nvlink", "pcie"] = "nvlink"
    # Share of device memory the planner may fill with weights, reserves and KV (vLLM's default 0.9).
    memory_utilization: float = Field(0.9, gt=0, le=1)
    hardware: dict[str, float | dict[str, float]] = Field(
        default_factory=dict, description="overrides of the GPU spec's fields (how cpu-local gets real numbers)")


class LengthConfig(StrictConfig):
    """Mean prompt and output lengths in tokens, given directly or as a length dataset's means."""

    mean_prompt_len: float | None = Field(None, gt=0)
    mean_output_len: float | None = Field(None, gt=0)
    dataset: str | None = Field(None, description=f"one of {LENGTH_DATASETS}: its means, capped to the context")

    @model_validator(mode="after")
    def _known_dataset(self) -> LengthConfig:
        if self.dataset is not None and self.dataset not in LENGTH_DATASETS:
            raise ValueError(f"dataset must be one of {LENGTH_DATASETS}, got {self.dataset!r}")
        return self


class SLOConfig(StrictConfig):
    """Either absolute targets, or `scale` x the latency of a request served alone (MuxServe's)."""

    ttft_ms: float | None = Field(None, gt=0)
    tpot_ms: float | None = Field(None, gt=0)
    scale: float | None = Field(None, gt=0)


class WorkloadConfig(LengthConfig):
    """Defaults for every model; rates from `alpha` (popularity in listed order) and a total or top rate."""

    alpha: float | None = Field(None, ge=0)
    total_rate: float | None = Field(None, description="requests/s over all models")
    top_rate: float | None = Field(None, description="requests/s of the most popular model (MuxServe's max_rate)")

    @model_validator(mode="after")
    def _one_rate(self) -> WorkloadConfig:
        if self.total_rate is not None and self.top_rate is not None:
            raise ValueError("give total_rate or top_rate, not both")
        return self


class ModelConfig(LengthConfig):
    name: str
    model: str = Field(description="a preset name (llama-7b, ...), random:<preset>, a config.json or a model folder")
    dtype: Dtype = "float16"
    rate: float | None = Field(None, description="requests/s; overrides the popularity split")
    count: int = Field(1, ge=1, description="this many copies, named NAME-0 .. NAME-(count-1)")
    slo: SLOConfig | None = None


class PlannerConfig(StrictConfig):
    strategy: Literal["greedy", "spatial", "memory-greedy"] = "greedy"
    objective: Objective = "throughput"
    max_num_seqs: int = Field(256, ge=1, description="decode batch cap of one model (vLLM's default)")
    max_num_batched_tokens: int = Field(2048, ge=1, description="prefill token budget of one job (MuxServe's)")
    fairness_bound: float = Field(0.1, ge=0, le=1, description="max gap between served fractions of colocated models")
    replicas: bool = True
    local_search: bool = True


class PlanConfig(StrictConfig):
    cluster: ClusterConfig
    models: list[ModelConfig] = Field(min_length=1)
    workload: WorkloadConfig = Field(default_factory=WorkloadConfig)
    slo: SLOConfig = Field(default_factory=lambda: SLOConfig(scale=8.0))
    planner: PlannerConfig = Field(default_factory=PlannerConfig)

    @model_validator(mode="after")
    def _unique_names(self) -> PlanConfig:
        names = [name for m in self.models for name in expanded_names(m)]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"model names must be unique; repeated: {duplicates}")
        return self


def expanded_names(model: ModelConfig) -> list[str]:
    return [model.name] if model.count == 1 else [f"{model.name}-{i}" for i in range(model.count)]


def load_plan_config(path: str | Path) -> PlanConfig:
    return parse_plan_config(read_yaml(path), str(path))


def parse_plan_config(raw: dict, origin: str = "plan config") -> PlanConfig:
    return validate(PlanConfig, raw, origin)
