"""`coserve serve placement.yaml`: the models of a placement (`coserve plan -o`), one cluster each.

Every model's replicas (the meshes holding a copy) become one `ElasticCluster` behind the router,
under the chosen overload strategy. With `--backend process` (the default) every replica runs on this
machine, its lane a worker process; with `--backend ray` each mesh is a Ray placement group (a bundle
per GPU, STRICT_PACK) and each replica a Ray actor on its mesh, the models colocated on a mesh
sharing its first bundle. A replica's memory budget is its weights plus the mesh's KV quota for it.
"""

from __future__ import annotations

import logging

from coserve.elastic.cluster import ElasticCluster, ElasticConfig
from coserve.elastic.serving import ServedCluster
from coserve.engine.config import EngineConfig
from coserve.entrypoints.serve_config import ModelDeployment, ServerConfig
from coserve.errors import ConfigError
from coserve.execution.models.spec import parse_dtype
from coserve.placement.placement_file import PlacedMesh, PlacedModel, PlacementFile
from coserve.placement.shapes import model_spec

logger = logging.getLogger(__name__)

BACKENDS = ("process", "ray")


def is_placement(raw: dict) -> bool:
    return isinstance(raw, dict) and "meshes" in raw


def replicas_of(placement: PlacementFile) -> dict[str, list[tuple[PlacedMesh, PlacedModel]]]:
    """Each model's copies, in mesh order."""
    copies: dict[str, list[tuple[PlacedMesh, PlacedModel]]] = {}
    for mesh in placement.meshes:
        for placed in mesh.models:
            copies.setdefault(placed.name, []).append((mesh, placed))
    return copies


def _check_servable(name: str, copies: list[tuple[PlacedMesh, PlacedModel]]) -> None:
    for mesh, placed in copies:
        if placed.tensor_parallel > 1 or placed.pipeline_parallel > 1:
            raise ConfigError(f"model {name!r} on mesh {mesh.id} asks for tensor degree {placed.tensor_parallel} and "
                              f"pipeline degree {placed.pipeline_parallel}; the engine runs a replica on one device "
                              f"(plan with a GPU large enough for one copy, or simulate this placement instead)")
    if len({p.model for _, p in copies}) > 1 or len({p.dtype for _, p in copies}) > 1:
        raise ConfigError(f"the replicas of {name!r} name different weights or dtypes")


def engine_config_for(name: str, placed: PlacedModel, device: str) -> EngineConfig:
    return EngineConfig(model=placed.model, name=name, dtype=placed.dtype, device=device,
                        max_num_seqs=placed.max_num_seqs, max_num_batched_tokens=max(512, placed.max_num_seqs))


def _budget(placed_copies: list[PlacedModel], engine_config: EngineConfig) -> int:
    """Weights plus the smallest KV quota among the copies (the cluster gives every replica one budget)."""
    spec = model_spec(engine_config.model, engine_config.name)
    return spec.param_bytes(parse_dtype(engine_config.dtype)) + min(p.kv_quota_bytes for p in placed_copies)


def build_clusters(placement: PlacementFile, backend: str = "process", strategy: str = "drop",
                   address: str | None = None, device: str | None = None) -> dict[str, ServedCluster]:
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    device = device or "cpu"
    if device != "cpu":
        raise ConfigError(f"replicas of a placement run on CPU only so far (their KV layers are host shared "
                          f"memory), not on {device!r}; serve GPUs through a server config instead")
    copies = replicas_of(placement)
    for name, placed in copies.items():
        _check_servable(name, placed)
    groups = _mesh_groups(placement, device, address) if backend == "ray" else {}
    release = _Release(groups, len(copies))
    clusters: dict[str, ServedCluster] = {}
    try:
        for name, placed in copies.items():
            engine_config = engine_config_for(name, placed[0][1], device)
            config = ElasticConfig(strategy=strategy, num_replicas=len(placed),
                                   memory_budget_bytes=_budget([p for _, p in placed], engine_config))
            replica_backend = None
            if backend == "ray":
                replica_backend = _ray_backend(placed, groups)
            clusters[name] = ServedCluster(ElasticCluster(engine_config, config, backend=replica_backend),
                                           on_close=release)
            logger.info("%s: %d replicas (meshes %s), %s, %s backend", name, len(placed),
                        [m.id for m, _ in placed], strategy, backend)
    except BaseException:
        for cluster in clusters.values():
            cluster.close()
        release.now()
        raise
    return clusters


class _Release:
    """Removes the meshes' placement groups once every cluster placed on them has closed."""

    def __init__(self, groups: dict, users: int):
        self.groups = groups
        self.users = users

    def __call__(self) -> None:
        self.users -= 1
        if self.users <= 0:
            self.now()

    def now(self) -> None:
        if self.groups:
            from ray.util.placement_group import remove_placement_group

            for group in self.groups.values():
                remove_placement_group(group)
            self.groups = {}


def _mesh_groups(placement: PlacementFile, device: str, address: str | None) -> dict:
    from coserve.distributed.ray_backend import connect, mesh_group

    connect(address)
    return {mesh.id: mesh_group(len(mesh.gpus), device, f"mesh{mesh.id}") for mesh in placement.meshes if mesh.models}


def _ray_backend(copies: list[tuple[PlacedMesh, PlacedModel]], groups: dict):
    from coserve.distributed.ray_backend import RayBackend, Slot

    slots = []
    for mesh, _ in copies:
        share = 1.0 / len(mesh.models)  # colocated models split the mesh's first bundle
        slots.append(Slot(groups[mesh.id], 0, num_cpus=share))
    return RayBackend(slots)


def server_config_for(clusters: dict[str, ServedCluster], host: str, port: int) -> ServerConfig:
    models = [ModelDeployment(name=name, model=c.cluster.replicas[0].config.model) for name, c in clusters.items()]
    return ServerConfig(host=host, port=port, models=models)
