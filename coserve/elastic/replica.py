"""One replica of a model: its own weights and memory budget, KV layers over the cluster's page ids,
and one lane (a worker process pinned to its cores) that runs its jobs.

A replica can give up layers (drop) and take them back (restore). Its budget always covers the
weights it holds plus, for every page it stores, one page per KV layer it holds; so dropping layers
raises how many pages fit, and the pool limit that enforces it moves at once.

`ElasticCluster` sees a replica through the methods of `ReplicaMemory` plus `prepare`, `run_stage`,
`stage_result`, `sample`, `hand_over`, `recover` and the layer and part methods below; the
simulator's `SimReplica` answers the same ones on a virtual clock, so every strategy runs unchanged
in both.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from coserve.elastic.layer_kv import LayerKV, layer_page_bytes
from coserve.engine.block_pool import BlockPool
from coserve.engine.config import EngineConfig
from coserve.engine.kv_cache_manager import KVCacheManager
from coserve.engine.llm_engine import LLMEngine
from coserve.engine.scheduler import SchedulerOutput
from coserve.errors import ConfigError
from coserve.execution.lane import Job, Lane, LaneError, SetLayer, SetPart
from coserve.execution.model_runner import StepInputs
from coserve.execution.models.llama import LlamaLayer
from coserve.execution.models.spec import ModelSpec


def param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def weights_checksum(model: torch.nn.Module) -> str:
    """A digest of every weight byte held (tests: a drop and restore must give back the same bytes)."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(param.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def id_space_pages(spec: ModelSpec, block_size: int, dtype: torch.dtype, budget: int, max_group_size: int) -> int:
    """Pages a replica could ever hold: its whole budget as KV over the fewest layers a group leaves it."""
    fewest_layers = max(1, spec.num_layers // max_group_size)
    return max(1, int(budget // (fewest_layers * layer_page_bytes(spec, block_size, dtype))))


class ReplicaMemory:
    """The budget arithmetic every replica shares, real or simulated. Needs `spec`, `kv` and `config`
    (an EngineConfig whose name is the replica's) from the engine it is mixed into."""

    index: int
    budget: int
    alive = True  # False once the replica is gone for good (a remote worker that died)
    weight_bytes: int  # the whole model's weights
    layer_bytes: int  # one decoder layer's weights
    part_bytes: dict[str, int]  # each end part's weights (see ModelSpec.end_parts)
    page_bytes_per_layer: int

    def _init_memory(self, weight_bytes: int) -> None:
        self.independent_pages = self.pages_for(self.spec.num_layers, weight_bytes)
        if self.independent_pages < 1:
            raise ConfigError(f"replica {self.name!r}: its weights ({weight_bytes / 1e6:.0f} MB) leave no "
                              f"room for KV in a budget of {self.budget / 1e6:.0f} MB")
        self.kv.pool.set_limit(self.name, self.independent_pages)
        self.stall_s = 0.0  # modelled transfer time the next job must absorb

    @property
    def name(self) -> str:
        return self.config.name

    def weight_bytes_held(self) -> int:
        """Its whole model's weights (`weight_bytes`) less the decoder layers and end parts it dropped."""
        dropped_layers = self.spec.num_layers - len(self.held_layers())
        held = self.held_parts()
        dropped_parts = sum(size for part, size in self.part_bytes.items() if part not in held)
        return self.weight_bytes - dropped_layers * self.layer_bytes - dropped_parts

    def is_whole(self) -> bool:
        """Whether it holds every layer and end part, as it did before any drop."""
        return len(self.held_layers()) == self.spec.num_layers and self.held_parts() == set(self.part_bytes)

    def responds(self) -> bool:
        """Whether the replica can still serve (a lane that died is replaced; a remote worker is not)."""
        return True

    def pages_for(self, num_layers: int, weight_bytes: int) -> int:
        """Pages that fit beside `weight_bytes` of weights when each page spans `num_layers` layers."""
        return max(0, (self.budget - weight_bytes) // (num_layers * self.page_bytes_per_layer))


@dataclass
class PreparedBatch:
    inputs: StepInputs  # kept here to sample from
    job: Job  # what each stage's lane receives


class Replica(ReplicaMemory, LLMEngine):
    """`pool_for(num_pages)`: the cluster's page pool, created by the first replica that asks with
    the id space every replica's arrays span."""

    def __init__(self, config: EngineConfig, index: int, memory_budget_bytes: int, max_group_size: int,
                 pool_for: Callable[[int], BlockPool], cores: list[int], clock=time.monotonic):
        self.index = index
        self.budget = memory_budget_bytes
        self._max_group_size = max_group_size
        self._pool_for = pool_for
        super().__init__(config, clock)
        self.layer_bytes = param_bytes(self.model.layers[0])
        self.part_bytes = {part: param_bytes(self.model.part(part)) for part in self.model.held_parts()}
        self.page_bytes_per_layer = layer_page_bytes(self.spec, self.kv.block_size, self.dtype)
        self._init_memory(self.weight_bytes)
        self.model.share_memory()  # the lane reads these weights; it does not copy them
        self.lane = self._start_lane(cores)

    def _start_lane(self, cores: list[int]) -> Lane:
        return Lane(self.index, cores, {self.name: (self.model, self.kv_cache)}, self.config.attention_backend)

    def restart_lane(self) -> None:
        """A fresh lane on the same cores: weights and KV are shared memory and outlive the old one."""
        self.lane.close()
        self.lane = self._start_lane(self.lane.cores)

    def _make_kv_cache(self, pool) -> tuple[LayerKV, KVCacheManager]:
        spec, config = self.spec, self.config
        blocks = self._pool_for(id_space_pages(spec, config.block_size, self.dtype, self.budget, self._max_group_size))
        kv_cache = LayerKV(spec, blocks.num_blocks, config.block_size, self.dtype)
        return kv_cache, KVCacheManager(blocks, config.block_size, owner=config.name)

    # -- execution -----------------------------------------------------------------------------

    def prepare(self, out: SchedulerOutput) -> PreparedBatch:
        inputs = self.runner.prepare(out, self.kv.block_tables)
        return PreparedBatch(inputs, Job.from_inputs(self.name, inputs))

    def run_stage(self, batch: PreparedBatch, start: int, end: int, hidden: torch.Tensor | None) -> None:
        """Start layers [start, end) of `batch` on this replica's lane (from `hidden` unless first)."""
        job = dataclasses.replace(batch.job, model=self.name, start=start, end=end,
                                  hidden=None if hidden is None else hidden.numpy(), stall_s=self.stall_s)
        self.stall_s = 0.0
        try:
            self.lane.submit(job)
        except OSError:  # the lane died while idle: a fresh one takes the job
            self.restart_lane()
            self.lane.submit(job)

    def stage_result(self) -> torch.Tensor:
        """The stage's output (hidden states, or logits after the last layer); LaneError if it failed."""
        return self.lane.result()

    def sample(self, batch: PreparedBatch, logits: torch.Tensor) -> dict[str, int]:
        return self.runner.sample(batch.inputs, logits)

    def hand_over(self, request_id: str, other: Replica) -> None:
        """Per-request state kept outside the core (the seeded generator) follows a moved request."""
        self.runner.sampler.hand_over(request_id, other.runner.sampler)

    def recover(self, exc: LaneError) -> None:
        """After a failed job: a dead lane is replaced (weights and KV are shared memory and survive it)."""
        if exc.dead or not self.lane.alive:
            self.restart_lane()

    def held_layers(self) -> list[int]:
        return self.model.held_layers()

    # -- drop and restore ----------------------------------------------------------------------

    def drop_layer(self, index: int) -> None:
        """Free a layer's weights and KV here and on the lane (the lane must be idle)."""
        self.model.set_layer(index, None)
        self.kv_cache.drop_layer(index)
        self._tell_lane(SetLayer(self.name, index, None, None))

    def restore_layer(self, index: int, source: LlamaLayer) -> int:
        """Take layer `index` back from a copy of `source` (a peer's layer); returns bytes pulled."""
        layer = copy.deepcopy(source)
        layer.share_memory()
        self.kv_cache.add_layer(index)
        self.model.set_layer(index, layer)
        self._tell_lane(SetLayer(self.name, index, layer, self.kv_cache.layers[index]))
        return param_bytes(layer)

    def _tell_lane(self, change: SetLayer | SetPart) -> None:
        """Mirror a change this side has made on the lane. A lane that died (or failed to apply it)
        is replaced: a fresh one starts from this side's weights and KV, the change included, so a
        drop or restore never stops half done for a lane's sake."""
        try:
            self.lane.set_layer(change)
        except (LaneError, OSError):
            self.restart_lane()

    def layer(self, index: int) -> LlamaLayer:
        return self.model.layers[index - self.model.start]

    def held_parts(self) -> set[str]:
        return self.model.held_parts()

    def drop_part(self, name: str) -> None:
        """Free an end part's weights here and on the lane (the lane must be idle)."""
        self.model.set_part(name, None)
        self._tell_lane(SetPart(self.name, name, None))

    def restore_part(self, name: str, source: torch.nn.Module) -> int:
        """Take an end part back from a copy of `source` (a peer's); returns bytes pulled."""
        module = copy.deepcopy(source)
        module.share_memory()
        self.model.set_part(name, module)
        self._tell_lane(SetPart(self.name, name, module))
        return param_bytes(module)

    def part(self, name: str) -> torch.nn.Module:
        return self.model.part(name)

    def weights_checksum(self) -> str:
        return weights_checksum(self.model)

    def close(self) -> None:
        self.lane.close()
