"""A replica with no weights: the real request lifecycle and budget arithmetic, layers as a set.

`ElasticCluster` drives it exactly as it drives a real `Replica`: dropping a layer frees its bytes in
the budget, the page pool's limit moves, KV exchange and swap return the bytes they would move, and a
stage's duration comes from the backend's cost model instead of a lane process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from coserve.elastic.layer_kv import HeldLayers, layer_page_bytes
from coserve.elastic.replica import ReplicaMemory, id_space_pages
from coserve.engine.block_pool import BlockPool
from coserve.engine.config import EngineConfig
from coserve.engine.engine_core import EngineCore
from coserve.engine.kv_cache_manager import KVCacheManager
from coserve.engine.scheduler import SchedulerOutput
from coserve.execution.models.spec import DTYPE_BYTES, ModelSpec, parse_dtype
from coserve.simulator.cost import BatchShape, batch_shape
from coserve.simulator.lanes import simulated_tokens


@dataclass(frozen=True)
class HostKV:
    """A request's KV swapped to the host: only its size matters to the simulation."""

    nbytes: int


class SimLayerKV(HeldLayers):
    """Which layers' KV a replica holds; reads and copies return the bytes they would move."""

    def __init__(self, spec: ModelSpec, block_size: int, dtype):
        super().__init__(spec.num_layers)
        self.page_bytes = layer_page_bytes(spec, block_size, dtype)

    def read(self, layers: list[int], pages: list[int]) -> HostKV:
        return HostKV(len(layers) * len(pages) * self.page_bytes)

    def write(self, layers: list[int], pages: list[int], data: HostKV) -> None:
        """Nothing to store: the pages' contents are never read in a simulation."""

    def discard(self, data: HostKV) -> None:
        """Nothing is stored."""

    def copy_to(self, other: SimLayerKV, layers: list[int], pages: list[int]) -> int:
        return len(layers) * len(pages) * self.page_bytes


@dataclass(frozen=True)
class SimBatch:
    shape: BatchShape
    sampled: dict[str, int]  # what the last stage returns: a token for every row that completes


class SimReplica(ReplicaMemory, EngineCore):
    """`backend` (a SimBackend) times its stages; see coserve.elastic.replica for the interface."""

    def __init__(self, config: EngineConfig, spec: ModelSpec, index: int, memory_budget_bytes: int,
                 max_group_size: int, pool_for: Callable[[int], BlockPool], clock, backend):
        self.index = index
        self.budget = memory_budget_bytes
        self.backend = backend
        self.dtype = parse_dtype(config.dtype)
        pool = pool_for(id_space_pages(spec, config.block_size, self.dtype, self.budget, max_group_size))
        super().__init__(config, spec, KVCacheManager(pool, config.block_size, owner=config.name), clock)
        self.stream_outputs = False
        self.kv_cache = SimLayerKV(spec, config.block_size, self.dtype)
        self.layer_bytes = spec.layer_params() * DTYPE_BYTES[self.dtype]
        self.page_bytes_per_layer = self.kv_cache.page_bytes
        self.weight_bytes = spec.param_bytes(self.dtype)
        self.part_bytes = {part: spec.part_params(part) * DTYPE_BYTES[self.dtype]
                           for part in spec.end_parts(0, spec.num_layers)}
        self._parts = set(self.part_bytes)
        self._init_memory(self.weight_bytes)

    # -- memory and layers -----------------------------------------------------------------------

    def held_layers(self) -> list[int]:
        return self.kv_cache.held_layers()

    def drop_layer(self, index: int) -> None:
        self.kv_cache.drop_layer(index)

    def restore_layer(self, index: int, source: int) -> int:
        self.kv_cache.add_layer(index)
        return self.layer_bytes

    def layer(self, index: int) -> int:
        return index

    def held_parts(self) -> set[str]:
        return set(self._parts)

    def drop_part(self, name: str) -> None:
        self._parts.discard(name)

    def restore_part(self, name: str, source: str) -> int:
        self._parts.add(name)
        return self.part_bytes[name]

    def part(self, name: str) -> str:
        return name

    # -- execution -------------------------------------------------------------------------------

    def prepare(self, out: SchedulerOutput) -> SimBatch:
        return SimBatch(batch_shape(out.scheduled), simulated_tokens(out.scheduled))

    def run_stage(self, batch: SimBatch, start: int, end: int, hidden) -> None:
        seconds = self.backend.stage_seconds(batch.shape, start, end, received_hidden=hidden is not None)
        self.backend.start(self.index, seconds + self.stall_s, batch.sampled if end == self.spec.num_layers else 0)
        self.stall_s = 0.0

    def stage_result(self):
        return self.backend.result(self.index)

    def sample(self, batch: SimBatch, result: dict[str, int]) -> dict[str, int]:
        return result

    def hand_over(self, request_id: str, other: SimReplica) -> None:
        """Simulated requests are greedy: no sampler state follows them."""

    def recover(self, exc) -> None:
        """Simulated lanes do not fail."""

    def restart_lane(self) -> None:
        """Nothing to restart."""

    def close(self) -> None:
        """Nothing to release."""
