"""A model deployment with no weights: the real request lifecycle over a page pool of counts."""

from __future__ import annotations

from coserve.engine.block_pool import BlockPool
from coserve.engine.config import EngineConfig
from coserve.engine.engine_core import EngineCore
from coserve.engine.kv_cache_manager import KVCacheManager
from coserve.execution.models.spec import ModelSpec


class SimEngine(EngineCore):
    """`tokens_per_page`: how many of this model's tokens one page of the shared pool holds."""

    def __init__(self, config: EngineConfig, spec: ModelSpec, pool: BlockPool, tokens_per_page: int, clock):
        super().__init__(config, spec, KVCacheManager(pool, tokens_per_page, owner=config.name), clock)
        self.stream_outputs = False  # the event loop records finished requests only
