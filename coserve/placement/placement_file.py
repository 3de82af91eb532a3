"""The placement `coserve plan` writes and `coserve serve` / `coserve simulate` read (YAML).

Per mesh: its GPUs and the models on it with their parallelism, lane shares, initial KV quota and
estimates; per model: its replicas and totals. Estimates come from the analytic unit model
(coserve.placement.unit over the roofline cost model), not from a simulation.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import Field, model_validator

from coserve.errors import ConfigError
from coserve.yaml_config import StrictConfig, read_yaml, validate

ESTIMATE_SOURCE = "analytic: roofline cost model + fluid unit model (not the discrete-event simulator)"


class PlacedModel(StrictConfig):
    name: str
    model: str  # the reference from the plan input: preset, config path, ...
    dtype: str
    tensor_parallel: int = Field(ge=1)
    pipeline_parallel: int = Field(1, ge=1)
    rate: float = Field(ge=0, description="requests/s routed to this replica")
    prefill_share: float = Field(gt=0, le=1, description="fraction of each GPU's compute for the prefill lane")
    decode_share: float = Field(gt=0, le=1, description="fraction of each GPU's compute for this model's decode lane")
    kv_quota_bytes: int = Field(ge=0, description="initial KV pages' bytes on each GPU of the mesh")
    kv_quota_tokens: int = Field(ge=0)
    max_num_seqs: int = Field(ge=1)
    est_throughput: float = Field(ge=0, description="requests/s")
    est_ttft_ms: float = Field(ge=0, description="prefill alone on the prefill lane, queueing excluded")
    est_tpot_ms: float | None = Field(None, ge=0, description="null: the decode lane cannot keep up")
    est_slo_attainment: float = Field(ge=0, le=1)


class PlacedMesh(StrictConfig):
    id: int
    node: int
    gpus: list[int]
    est_throughput: float
    models: list[PlacedModel]


class ModelSummary(StrictConfig):
    name: str
    rate: float = Field(ge=0)
    replicas: list[int] = Field(description="ids of the meshes holding a copy")
    est_throughput: float
    est_slo_attainment: float
    ttft_slo_ms: float | None = None
    tpot_slo_ms: float | None = None
    min_mesh: int | None = Field(None, ge=1, description="fewest GPUs that hold the model: where its SLO's "
                                                          "latency alone is taken")


class Totals(StrictConfig):
    rate: float
    est_throughput: float
    est_goodput: float = Field(description="requests/s served within their SLO")
    est_slo_attainment: float
    gpus_used: int
    plan_seconds: float


class ClusterSummary(StrictConfig):
    nodes: int
    gpus_per_node: int
    gpu: str
    interconnect: str
    hardware: dict[str, float | dict[str, float]] = Field(
        default_factory=dict, description="the plan's overrides of the GPU spec (cluster.hardware)")


class PlacementFile(StrictConfig):
    strategy: str
    objective: str
    estimates: str = ESTIMATE_SOURCE
    cluster: ClusterSummary
    totals: Totals
    meshes: list[PlacedMesh]
    models: list[ModelSummary]
    idle_gpus: list[int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> PlacementFile:
        """A hand-edited file must still describe one cluster: each GPU in one mesh at most, each
        mesh id once, each placed model on exactly as many GPUs as its parallel degrees use."""
        _unique("mesh ids", [m.id for m in self.meshes])
        _unique("model names in models[]", [m.name for m in self.models])
        gpus = [g for mesh in self.meshes for g in mesh.gpus]
        _unique("GPU ids across meshes", gpus)
        total = self.cluster.nodes * self.cluster.gpus_per_node
        outside = sorted(g for g in gpus if not 0 <= g < total)
        if outside:
            raise ValueError(f"GPU ids {outside} are outside the cluster's {total} GPUs")
        for mesh in self.meshes:
            _unique(f"model names on mesh {mesh.id}", [m.name for m in mesh.models])
            for m in mesh.models:
                if m.tensor_parallel * m.pipeline_parallel != len(mesh.gpus):
                    raise ValueError(f"mesh {mesh.id}: {m.name} at tensor_parallel={m.tensor_parallel} x "
                                     f"pipeline_parallel={m.pipeline_parallel} does not use its {len(mesh.gpus)} GPUs")
        return self


def _unique(what: str, values: list) -> None:
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{what} must be unique; repeated: {repeated}")


def write_placement(placement: PlacementFile, path: str | Path) -> None:
    text = yaml.safe_dump(placement.model_dump(), sort_keys=False, default_flow_style=None, width=120)
    try:
        Path(path).write_text(text)
    except OSError as exc:
        raise ConfigError(f"cannot write placement to {path}: {exc.strerror}") from exc


def load_placement(path: str | Path) -> PlacementFile:
    return validate(PlacementFile, read_yaml(path), f"placement {path}")
