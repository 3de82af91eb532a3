"""Where a cluster's replicas live and how the controller waits for their lanes.

`ProcessBackend` is the default: every replica in this process, its lane a worker process pinned to
its cores. The simulator's `SimBackend` answers the same two questions on a virtual clock; a backend
that places replicas on other hosts answers them too.
"""

from __future__ import annotations

from collections.abc import Callable
from multiprocessing.connection import wait
from typing import TYPE_CHECKING

from coserve.elastic.replica import Replica
from coserve.engine.block_pool import BlockPool
from coserve.engine.config import EngineConfig
from coserve.engine.device_engine import split_cores
from coserve.errors import ConfigError

if TYPE_CHECKING:
    from coserve.elastic.cluster import ElasticConfig


def decode_rows(rows: int, context: int) -> float:
    """A CPU lane's decode micro-batch costs about its row count: a row's matmuls outweigh its
    attention (a SmolLM2 row adds ~5 ms of GEMV to a step, benchmarks/cpu_gemv.py; reading 300
    cached tokens of all 30 layers' KV, 14 MB, takes ~0.5 ms at this VM's ~30 GB/s)."""
    return float(rows)


class ProcessBackend:
    def __init__(self, lane_cores: list[list[int]] | None = None):
        self.lane_cores = lane_cores

    decode_cost = staticmethod(decode_rows)  # what pipeline.balance_decodes evens out

    def make_replica(self, engine_config: EngineConfig, index: int, config: ElasticConfig,
                     pool_for: Callable[[int], BlockPool], clock) -> Replica:
        cores = self.lane_cores or split_cores(config.num_replicas)
        if len(cores) != config.num_replicas:
            raise ConfigError(f"{len(cores)} core sets for {config.num_replicas} replicas")
        return Replica(engine_config, index, config.memory_budget_bytes, config.max_group_size, pool_for,
                       cores[index], clock)

    def wait(self, replicas: list[Replica]) -> list[Replica]:
        """Block until at least one of these replicas' lanes has finished its job; those that have."""
        by_connection = {r.lane.connection: r for r in replicas}
        return [by_connection[c] for c in wait(list(by_connection))]
