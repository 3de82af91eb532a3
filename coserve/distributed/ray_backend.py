"""Replicas as Ray actors, possibly on other hosts: the backend `ElasticCluster` asks for with Ray.

Each replica's `ReplicaWorker` runs in an actor placed on a bundle of a placement group (one bundle
per GPU of its mesh, STRICT_PACK so a mesh stays within a node); the controller, router and server
stay in the driver. The cluster's workers form one torch.distributed group (gloo: CPU tensors) that
carries hidden states between pipeline members and KV and weights between replicas; Ray itself
carries only job arrays out and logits back.

Importing this module imports Ray: the server does so only when asked for `--backend ray`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from coserve.distributed.remote_replica import RemoteReplica
from coserve.distributed.worker import ReplicaWorker
from coserve.elastic.backend import decode_rows
from coserve.elastic.replica import id_space_pages
from coserve.engine.block_pool import BlockPool
from coserve.engine.config import EngineConfig
from coserve.errors import ConfigError
from coserve.execution.models.spec import parse_dtype
from coserve.execution.weights import LoadedModel, load_model

if TYPE_CHECKING:
    from coserve.elastic.cluster import ElasticConfig

logger = logging.getLogger(__name__)

class _RayWorker(ReplicaWorker):
    def node_address(self) -> str:
        return ray.util.get_node_ip_address()


# The "transfer" group lets `send_hidden` (it only posts a send) run beside a long job on the same
# worker instead of queueing behind it; every other method runs in order on the default group.
WorkerActor = ray.remote(concurrency_groups={"transfer": 1})(_RayWorker)


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the Ray cluster at `address` ("auto": the running one), or start a local one."""
    if ray.is_initialized():
        return
    if address is None:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)


def single_host() -> bool:
    """Every node of the Ray cluster is this host: the workers' traffic can stay on loopback."""
    return len([n for n in ray.nodes() if n.get("Alive")]) == 1


@dataclass
class Slot:
    """Where one replica's actor goes: a bundle of a placement group and what it takes from it."""

    group: PlacementGroup
    bundle: int = 0
    num_cpus: float = 1.0
    num_gpus: float = 0.0


def mesh_group(num_gpus: int, device: str, name: str = "") -> PlacementGroup:
    """A placement group for one mesh: a bundle per GPU (a CPU per 'GPU' on CPU), all on one node."""
    bundle = {"GPU": 1, "CPU": 1} if device.startswith("cuda") else {"CPU": 1}
    group = placement_group([dict(bundle) for _ in range(num_gpus)], strategy="STRICT_PACK", name=name)
    ready, _ = ray.wait([group.ready()], timeout=120)
    if not ready:
        remove_placement_group(group)
        raise ConfigError(f"the Ray cluster cannot place mesh {name or '?'} ({num_gpus} x {bundle} on one node)")
    return group


class RayBackend:
    """`slots[i]`: where replica i's actor goes; without them each replica gets a placement group of
    its own with one CPU bundle (or one GPU bundle when the engine config's device is CUDA)."""

    def __init__(self, slots: list[Slot] | None = None, address: str | None = None, num_cpus: int | None = None):
        connect(address, num_cpus)
        self.local = single_host()  # the workers' traffic can stay on loopback
        self._loaded: dict[tuple, LoadedModel] = {}  # layer 0 of each model: its spec and tokenizer
        self.slots = slots
        self._own_groups: list[PlacementGroup] = []
        self.replicas: list[RemoteReplica] = []

    # rows, as for CPU lanes: a CUDA worker's decode is memory-bound and would be priced by the context
    # it reads, which has not been measured on a GPU (README: CUDA workers are not done)
    decode_cost = staticmethod(decode_rows)

    def make_replica(self, engine_config: EngineConfig, index: int, config: ElasticConfig,
                     pool_for: Callable[[int], BlockPool], clock) -> RemoteReplica:
        slot = self._slot(index, engine_config)
        dtype = parse_dtype(engine_config.dtype)
        key = (engine_config.model, engine_config.dtype, engine_config.seed)
        if key not in self._loaded:
            self._loaded[key] = load_model(engine_config.model, dtype=dtype, seed=engine_config.seed,
                                           layer_range=(0, 1))
        loaded = self._loaded[key]
        num_pages = id_space_pages(loaded.spec, engine_config.block_size, dtype, config.memory_budget_bytes,
                                   config.max_group_size)
        env = {"env_vars": {"GLOO_SOCKET_IFNAME": "lo"}} if self.local else None
        handle = WorkerActor.options(
            num_cpus=slot.num_cpus, num_gpus=slot.num_gpus, runtime_env=env,
            scheduling_strategy=PlacementGroupSchedulingStrategy(slot.group, placement_group_bundle_index=slot.bundle),
        ).remote(engine_config, num_pages, max(1, int(slot.num_cpus)))
        try:
            describe = ray.get(handle.describe.remote())
        except ray.exceptions.RayError as exc:
            ray.kill(handle)
            raise ConfigError(f"replica {engine_config.name!r} could not start on Ray: {exc}") from exc
        replica = RemoteReplica(engine_config, index, config.memory_budget_bytes, config.max_group_size, pool_for,
                                clock, handle, describe, loaded)
        self.replicas.append(replica)
        if len(self.replicas) == config.num_replicas:
            self._join_group()
        return replica

    def _slot(self, index: int, engine_config: EngineConfig) -> Slot:
        if self.slots is not None:
            if index >= len(self.slots):
                raise ConfigError(f"{len(self.slots)} Ray slots for replica {index}")
            return self.slots[index]
        cuda = engine_config.device.startswith("cuda")
        group = mesh_group(1, engine_config.device, f"{engine_config.name}")
        self._own_groups.append(group)
        return Slot(group, 0, 1.0, 1.0 if cuda else 0.0)

    def _join_group(self) -> None:
        """One gloo group over this cluster's workers (rank = replica index), rendezvous at rank 0."""
        first = self.replicas[0].handle
        host = "127.0.0.1" if self.local else ray.get(first.node_address.remote())
        init_method = ray.get(first.rendezvous_address.remote(host))
        world = len(self.replicas)
        ray.get([r.handle.join_group.remote(init_method, r.rank, world) for r in self.replicas])
        logger.info("%d Ray workers joined a gloo group at %s", world, init_method)

    def wait(self, replicas: list[RemoteReplica]) -> list[RemoteReplica]:
        """Block until at least one replica's stage has finished; every replica whose stage has."""
        by_ref = {r.pending_ref: r for r in replicas}
        ray.wait(list(by_ref), num_returns=1)
        ready, _ = ray.wait(list(by_ref), num_returns=len(by_ref), timeout=0)
        return [by_ref[ref] for ref in ready]

    def close(self) -> None:
        for group in self._own_groups:
            remove_placement_group(group)
        self._own_groups.clear()
