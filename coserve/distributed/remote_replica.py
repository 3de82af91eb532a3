"""A replica whose device half is a remote worker (a Ray actor): the controller's view of it.

`RemoteReplica` keeps what the controller owns, in the driver: the scheduler, the block tables into
the cluster's page pool, the sampler with its per-request generators, and the budget arithmetic.
Its weights and KV live in a `ReplicaWorker` behind `handle`, so `ElasticCluster` drives it through
the same interface as a local `Replica`, and every strategy (recompute, swap, migrate, drop) runs
unchanged. What differs is where bytes go: a stage's hidden states go straight from one worker to
the next (torch.distributed), as do KV pages and restored weights; only job arrays go out and the
last stage's logits come back through Ray.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import ray
import torch
from ray.exceptions import RayActorError, RayError, RayTaskError

from coserve.elastic.layer_kv import HeldLayers
from coserve.elastic.replica import PreparedBatch, ReplicaMemory, id_space_pages
from coserve.engine.block_pool import BlockPool
from coserve.engine.config import EngineConfig
from coserve.engine.engine_core import EngineCore
from coserve.engine.kv_cache_manager import KVCacheManager
from coserve.engine.scheduler import SchedulerOutput
from coserve.execution.lane import Job, LaneError
from coserve.execution.model_runner import ModelRunner
from coserve.execution.models.spec import parse_dtype
from coserve.execution.sampler import Sampler
from coserve.execution.weights import LoadedModel, load_model

logger = logging.getLogger(__name__)
_sequence = itertools.count()  # stage numbers, unique across every replica of this driver


@dataclass(frozen=True)
class PeerHidden:
    """A stage's output still on the worker that computed it (`seq` names it there)."""

    holder: RemoteReplica
    seq: int


@dataclass(frozen=True)
class LayerOnPeer:
    holder: RemoteReplica
    index: int


@dataclass(frozen=True)
class PartOnPeer:
    holder: RemoteReplica
    name: str


@dataclass(frozen=True)
class HostKVRef:
    """KV swapped out to the worker's host memory under `key`."""

    key: int
    nbytes: int


class RemoteLayerKV(HeldLayers):
    """The KV arrays of a remote worker as `pipeline` and `kv_moves` use them: which layers it holds
    (bookkeeping: the worker changes its arrays itself), and copies that run on the workers (peer to
    peer, or to the worker's host memory)."""

    def __init__(self, replica: RemoteReplica, num_layers: int, block_size: int):
        super().__init__(num_layers)
        self.replica = replica
        self.block_size = block_size
        self._keys = itertools.count()

    def read(self, layers: list[int], pages: list[int]) -> HostKVRef:
        key = next(self._keys)
        return HostKVRef(key, self.replica.call("swap_out", key, layers, pages))

    def write(self, layers: list[int], pages: list[int], data: HostKVRef) -> None:
        self.replica.call("swap_in", data.key, layers, pages)

    def discard(self, data: HostKVRef) -> None:
        """Free a host copy that will never be written back (its request was aborted)."""
        self.replica.handle.drop_host_copy.remote(data.key)

    def copy_to(self, other: RemoteLayerKV, layers: list[int], pages: list[int]) -> int:
        if not layers or not pages:
            return 0
        src, dst = self.replica, other.replica
        transfer(src, dst, [src.handle.send_kv.remote(layers, pages, dst.rank),
                            dst.handle.recv_kv.remote(layers, pages, src.rank)])
        return len(layers) * len(pages) * src.page_bytes_per_layer


class RemoteReplica(ReplicaMemory, EngineCore):
    """`handle`: the actor running this replica's `ReplicaWorker`; `rank`: its rank in the group of the
    cluster's workers. `describe` is what the worker reported of its weights; `loaded` gives the spec and
    tokenizer (a load of layer 0 only is enough)."""

    def __init__(self, config: EngineConfig, index: int, memory_budget_bytes: int, max_group_size: int,
                 pool_for: Callable[[int], BlockPool], clock, handle, describe: dict[str, int], loaded: LoadedModel):
        self.index = index
        self.budget = memory_budget_bytes
        self.handle = handle
        self.dtype = parse_dtype(config.dtype)
        tokenizer, template = loaded.tokenizer, loaded.chat_template
        if config.tokenizer:
            donor = load_model(config.tokenizer, layer_range=(0, 1))
            tokenizer, template = donor.tokenizer, donor.chat_template
        spec = loaded.spec
        pool = pool_for(id_space_pages(spec, config.block_size, self.dtype, self.budget, max_group_size))
        super().__init__(config, spec, KVCacheManager(pool, config.block_size, owner=config.name), clock,
                         tokenizer, template)
        self.kv_cache = RemoteLayerKV(self, spec.num_layers, config.block_size)
        self.runner = ModelRunner(None, self.kv_cache, None, Sampler(config.seed), "cpu")  # prepare, sample
        self.weight_bytes = describe["weight_bytes"]
        self.layer_bytes = describe["layer_bytes"]
        self.page_bytes_per_layer = describe["page_bytes_per_layer"]
        self.part_bytes = dict(describe["part_bytes"])
        self._parts = set(self.part_bytes)
        self.alive = True
        self._pending = None  # the running stage: (object ref, ends the model, seq)
        self._init_memory(self.weight_bytes)

    @property
    def rank(self) -> int:
        """Its rank in the cluster's torch.distributed group: the replica index."""
        return self.index

    def _forget(self, request_id: str) -> None:
        self.runner.sampler.forget(request_id)

    def call(self, method: str, *args):
        """Run a worker method and wait for it (set-up, layer and KV changes: never on the step path)."""
        return self.wait_for([getattr(self.handle, method).remote(*args)])[0]

    def wait_for(self, refs: list):
        """Results of these worker calls; LaneError (dead, short message) if the worker is gone."""
        try:
            return ray.get(refs)
        except RayActorError as exc:  # `recover` takes the replica out of service
            logger.error("%s: Ray worker died: %s", self.name, exc)
            raise LaneError(f"replica {self.name} is down (its Ray worker died)", dead=True) from exc
        except RayTaskError as exc:
            raise LaneError(f"replica {self.name}: {exc.cause!r}") from exc
        except RayError as exc:  # a lost object or owner: the job is gone, the worker may not be
            raise LaneError(f"replica {self.name}: {type(exc).__name__}") from exc

    # -- execution -------------------------------------------------------------------------------

    def prepare(self, out: SchedulerOutput) -> PreparedBatch:
        inputs = self.runner.prepare(out, self.kv.block_tables)
        return PreparedBatch(inputs, Job.from_inputs(self.name, inputs))

    def run_stage(self, batch: PreparedBatch, start: int, end: int, hidden: PeerHidden | None) -> None:
        seq = next(_sequence)
        job = dataclasses.replace(batch.job, model=self.name, start=start, end=end, stall_s=self.stall_s)
        self.stall_s = 0.0
        source = None
        if hidden is not None:
            hidden.holder.handle.send_hidden.options(concurrency_group="transfer").remote(hidden.seq, self.rank)
            source = (hidden.holder.rank, hidden.seq)
        self._pending = (self.handle.run.remote(job, seq, source), end == self.spec.num_layers, seq)

    @property
    def pending_ref(self):
        return self._pending[0]

    def stage_result(self) -> torch.Tensor | PeerHidden | None:
        """The last stage's logits, or where this stage's hidden states wait; LaneError if it failed."""
        ref, ends_model, seq = self._pending
        self._pending = None
        out = self.wait_for([ref])[0]
        if not ends_model:
            return PeerHidden(self, seq)
        return None if out is None else torch.from_numpy(out.copy())  # Ray's arrays are read-only

    def sample(self, batch: PreparedBatch, logits: torch.Tensor | None) -> dict[str, int]:
        return self.runner.sample(batch.inputs, logits)

    def hand_over(self, request_id: str, other: RemoteReplica) -> None:
        self.runner.sampler.hand_over(request_id, other.runner.sampler)

    def recover(self, exc: LaneError) -> None:
        """A failed job leaves the worker serving; a dead worker took its weights and KV with it, so
        the replica stays out of service (the cluster stops routing to it)."""
        if exc.dead:
            self.alive = False

    def restart_lane(self) -> None:
        """A worker holds the only copy of its weights: it cannot be restarted from here."""

    # -- layers ------------------------------------------------------------------------------------

    def held_layers(self) -> list[int]:
        return self.kv_cache.held_layers()

    def drop_layer(self, index: int) -> None:
        self.call("drop_layer", index)
        self.kv_cache.drop_layer(index)

    def layer(self, index: int) -> LayerOnPeer:
        return LayerOnPeer(self, index)

    def restore_layer(self, index: int, source: LayerOnPeer) -> int:
        src = source.holder
        moved = transfer(src, self, [src.handle.send_layer.remote(index, self.rank),
                                     self.handle.recv_layer.remote(index, src.rank)])[1]
        self.kv_cache.add_layer(index)
        return moved

    def held_parts(self) -> set[str]:
        return set(self._parts)

    def drop_part(self, name: str) -> None:
        self.call("drop_part", name)
        self._parts.discard(name)

    def part(self, name: str) -> PartOnPeer:
        return PartOnPeer(self, name)

    def restore_part(self, name: str, source: PartOnPeer) -> int:
        src = source.holder
        moved = transfer(src, self, [src.handle.send_part.remote(name, self.rank),
                                     self.handle.recv_part.remote(name, src.rank)])[1]
        self._parts.add(name)
        return moved

    def responds(self) -> bool:
        try:
            self.call("held_layers")
        except LaneError as exc:
            return not exc.dead
        return True

    def reload_layers(self) -> None:
        """Take back every dropped layer from the checkpoint (the peer that held it is gone). The
        worker's answer, not this record, says what it holds: a copy can land after its sender died."""
        for index in self.call("reload_layers"):
            self.kv_cache.add_layer(index)
        self._parts = set(self.call("held_parts"))

    def weights_checksum(self) -> str:
        return self.call("weights_checksum")

    def close(self) -> None:
        ray.kill(self.handle, no_restart=True)


def transfer(src: RemoteReplica, dst: RemoteReplica, refs: list):
    """Wait for both halves of a worker-to-worker copy. If either worker died, the error says so
    without guessing which (the cluster asks each replica whether it still responds)."""
    try:
        return ray.get(refs)
    except RayActorError as exc:
        logger.error("a copy from %s to %s failed: %s", src.name, dst.name, exc)
        raise LaneError(f"a copy from {src.name} to {dst.name} failed: a worker died", dead=True) from exc
    except RayError as exc:
        raise LaneError(f"a copy from {src.name} to {dst.name} failed: {type(exc).__name__}") from exc
