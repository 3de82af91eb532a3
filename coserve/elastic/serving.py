"""A cluster of replicas as the server sees one model: the engine interface `AsyncEngine` steps.

The server validates, tokenises and checks lengths against one engine per model name; behind this
adapter those calls go to a live replica (they all hold the same model and tokenizer), requests go
to the cluster's router, and the gauges sum over the replicas.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Callable

from coserve.elastic.cluster import ElasticCluster
from coserve.elastic.replica import Replica
from coserve.engine.outputs import RequestOutput
from coserve.sampling_params import SamplingParams


class _SchedulerTotals:
    def __init__(self, cluster: ElasticCluster):
        self._cluster = cluster

    def _sum(self, field: str) -> int:
        return sum(getattr(r.scheduler, field) for r in self._cluster.replicas)

    @property
    def num_running(self) -> int:
        return self._sum("num_running")

    @property
    def num_waiting(self) -> int:
        return self._sum("num_waiting")

    @property
    def num_preemptions(self) -> int:
        return self._sum("num_preemptions")


class ServedCluster:
    """`on_close`: called after the cluster closes (placement groups shared with other models)."""

    def __init__(self, cluster: ElasticCluster, on_close: Callable[[], None] | None = None):
        self.cluster = cluster
        self._on_close = on_close
        self.scheduler = _SchedulerTotals(cluster)
        self.kv = cluster.replicas[0].kv  # every replica allocates from the cluster's one pool

    def _front(self) -> Replica:
        live = self.cluster.live_replicas()
        return max(live or self.cluster.replicas, key=lambda r: r.kv.pool.capacity(r.kv.owner))

    @property
    def clock(self):
        """The replicas' clock: a server stamps arrivals with it."""
        return self.cluster.clock

    @property
    def states(self) -> ChainMap:
        return ChainMap(*(r.states for r in self.cluster.replicas))

    @property
    def max_model_len(self) -> int:
        return self._front().max_model_len

    def tokenize(self, prompt: str, add_special_tokens: bool = True) -> list[int]:
        return self._front().tokenize(prompt, add_special_tokens)

    def apply_chat_template(self, messages: list[dict]) -> str:
        return self._front().apply_chat_template(messages)

    def prompt_token_ids_of(self, prompt: str | list[int]) -> list[int]:
        return self._front().prompt_token_ids_of(prompt)

    def check_length(self, prompt_len: int, params: SamplingParams) -> None:
        """Against the replica that could hold the most: the router sends a long prompt there."""
        self._front().check_length(prompt_len, params)

    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                    request_id: str | None = None, arrival_time: float | None = None) -> str:
        return self.cluster.add_request(prompt, params, request_id, arrival_time=arrival_time)

    def abort_request(self, request_id: str) -> None:
        self.cluster.abort_request(request_id)

    def step(self) -> list[RequestOutput]:
        return self.cluster.step()

    def has_unfinished_requests(self) -> bool:
        """Also while a group stands with no request left: the burst is over, so it must restore
        (the server steps only engines that say they have work). Stepping without a job to wait for
        does not block, so the engine thread spins while the weights cross (at the peer link's
        speed: milliseconds for a model of this size); a sleep here would hold up the other models
        the same thread steps."""
        return self.cluster.has_unfinished_requests() or self.cluster.has_standing_groups()

    def health(self) -> dict[str, str]:
        return self.cluster.health()

    def close(self) -> None:
        self.cluster.close()
        if self._on_close is not None:
            self._on_close()
            self._on_close = None
