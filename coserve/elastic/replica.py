"""One replica of a model: its own weights and memory budget, KV layers over the cluster's page ids,
and one lane (a worker process pinned to its cores) that runs its jobs.

A replica can give up layers (drop) and take them back (restore). Its budget always covers the
weights it holds plus, for every page it stores, one page per KV layer it holds; so dropping layers
raises how many pages fit, and the pool limit that enforces it moves at once.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable

import torch

from coserve.elastic.layer_kv import LayerKV, layer_page_bytes
from coserve.engine.block_pool import BlockPool
from coserve.engine.config import EngineConfig
from coserve.engine.kv_cache_manager import KVCacheManager
from coserve.engine.llm_engine import LLMEngine
from coserve.errors import ConfigError
from coserve.execution.lane import Lane, SetLayer
from coserve.execution.models.llama import LlamaLayer


def _param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


class Replica(LLMEngine):
    """`pool_for(num_pages)`: the cluster's page pool, created by the first replica that asks with
    the id space every replica's arrays span."""

    def __init__(self, config: EngineConfig, index: int, memory_budget_bytes: int, max_group_size: int,
                 pool_for: Callable[[int], BlockPool], cores: list[int], clock=time.monotonic):
        self.index = index
        self.budget = memory_budget_bytes
        self._max_group_size = max_group_size
        self._pool_for = pool_for
        super().__init__(config, clock)
        self.layer_bytes = _param_bytes(self.model.layers[0])
        self.page_bytes_per_layer = layer_page_bytes(self.spec, self.kv.block_size, self.dtype)
        self.independent_pages = self.pages_for(self.spec.num_layers, self.weight_bytes)
        if self.independent_pages < 1:
            raise ConfigError(f"replica {config.name!r}: its weights ({self.weight_bytes / 1e6:.0f} MB) leave no "
                              f"room for KV in a budget of {self.budget / 1e6:.0f} MB")
        self.kv.pool.set_limit(config.name, self.independent_pages)
        self.model.share_memory()  # the lane reads these weights; it does not copy them
        self.lane = self._start_lane(cores)
        self.stall_s = 0.0  # modelled transfer time the next job must absorb

    def _start_lane(self, cores: list[int]) -> Lane:
        return Lane(self.index, cores, {self.name: (self.model, self.kv_cache)}, self.config.attention_backend)

    def restart_lane(self) -> None:
        """A fresh lane on the same cores: weights and KV are shared memory and outlive the old one."""
        self.lane.close()
        self.lane = self._start_lane(self.lane.cores)

    def _make_kv_cache(self, pool) -> tuple[LayerKV, KVCacheManager]:
        spec, config = self.spec, self.config
        fewest_layers = max(1, spec.num_layers // self._max_group_size)
        most_pages = self.budget // (fewest_layers * layer_page_bytes(spec, config.block_size, self.dtype))
        blocks = self._pool_for(max(1, int(most_pages)))
        kv_cache = LayerKV(spec, blocks.num_blocks, config.block_size, self.dtype)
        return kv_cache, KVCacheManager(blocks, config.block_size, owner=config.name)

    @property
    def name(self) -> str:
        return self.config.name

    # -- memory --------------------------------------------------------------------------------

    def weight_bytes_held(self) -> int:
        return _param_bytes(self.model)

    def pages_for(self, num_layers: int, weight_bytes: int) -> int:
        """Pages that fit beside `weight_bytes` of weights when each page spans `num_layers` layers."""
        return max(0, (self.budget - weight_bytes) // (num_layers * self.page_bytes_per_layer))

    def held_layers(self) -> list[int]:
        return self.model.held_layers()

    # -- drop and restore ----------------------------------------------------------------------

    def drop_layer(self, index: int) -> None:
        """Free a layer's weights and KV here and on the lane (the lane must be idle)."""
        self.lane.set_layer(SetLayer(self.name, index, None, None))
        self.model.set_layer(index, None)
        self.kv_cache.drop_layer(index)

    def restore_layer(self, index: int, source: LlamaLayer) -> int:
        """Take layer `index` back from a copy of `source` (a peer's layer); returns bytes pulled."""
        layer = copy.deepcopy(source)
        layer.share_memory()
        self.kv_cache.add_layer(index)
        self.model.set_layer(index, layer)
        self.lane.set_layer(SetLayer(self.name, index, layer, self.kv_cache.layers[index]))
        return _param_bytes(layer)

    def layer(self, index: int) -> LlamaLayer:
        return self.model.layers[index - self.model.start]

    def weights_checksum(self) -> str:
        """A digest of every weight byte held (tests: a drop and restore must give back the same bytes)."""
        digest = hashlib.sha256()
        for name, param in sorted(self.model.named_parameters()):
            digest.update(name.encode())
            digest.update(param.detach().contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def close(self) -> None:
        self.lane.close()
