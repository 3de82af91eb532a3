"""Elastic replicas on the virtual clock: the same `ElasticCluster`, its stages timed by a roofline.

`SimBackend` makes `SimReplica`s and stands in for the lane processes: a stage ends at now plus its
predicted duration (the layers it runs, on the replica's device, plus the hidden states received from
the previous stage over the peer link, plus any modelled transfer the replica must absorb).
`replay_elastic` moves the clock from event to event as the real loop moves through time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from coserve.costmodel.hardware import HardwareSpec
from coserve.elastic.cluster import ElasticCluster, ElasticConfig
from coserve.engine.config import EngineConfig
from coserve.errors import CoserveError
from coserve.execution.models.spec import DTYPE_BYTES, ModelSpec, parse_dtype
from coserve.metrics import RequestRecord
from coserve.sampling_params import SamplingParams
from coserve.simulator.clock import VirtualClock
from coserve.simulator.cost import BatchShape, MeshModel, RooflineCost
from coserve.simulator.records import complete, new_record
from coserve.simulator.sim_replica import SimReplica
from coserve.workload import WorkloadRequest

MODEL_KEY = "replica"  # every replica runs the same model: one entry in the roofline's table


class SimBackend:
    """Replicas of `spec`, each on one device of type `hw` (or a `tp`-way tensor-parallel mesh)."""

    def __init__(self, spec: ModelSpec, hw: HardwareSpec, clock: VirtualClock | None = None, tp: int = 1):
        self.spec = spec
        self.hw = hw
        self.tp = tp
        self.clock = clock or VirtualClock()
        self.peer_bytes_per_s = hw.link_bandwidth
        self.dtype = "float16"
        self._roofline: RooflineCost | None = None
        self._ends: dict[int, float] = {}  # replica index -> when its running stage ends
        self._results: dict[int, object] = {}
        self.busy_s: dict[int, float] = {}  # replica index -> seconds its device ran stages (utilisation)

    def make_replica(self, engine_config: EngineConfig, index: int, config: ElasticConfig, pool_for,
                     clock) -> SimReplica:
        self.peer_bytes_per_s = config.peer_bytes_per_s
        self.dtype = engine_config.dtype
        self._roofline = RooflineCost({MODEL_KEY: MeshModel(self.spec, self.dtype, self.tp)}, self.hw, [1.0])
        return SimReplica(engine_config, self.spec, index, config.memory_budget_bytes, config.max_group_size,
                          pool_for, clock, self)

    def stage_seconds(self, shape: BatchShape, start: int, end: int, received_hidden: bool) -> float:
        seconds = self._roofline.seconds(MODEL_KEY, shape, 1.0, (start, end))
        if received_hidden:
            hidden_bytes = shape.tokens * self.spec.hidden_size * DTYPE_BYTES[parse_dtype(self.dtype)]
            seconds += self.hw.collective_latency_s + hidden_bytes / self.peer_bytes_per_s
        return seconds

    def decode_cost(self, rows: int, context: int) -> float:
        """A micro-batch of `rows` decodes reading `context` cached tokens, through every layer."""
        if rows <= 0:
            return 0.0
        shape = BatchShape(rows, rows, context + rows, context)
        return self._roofline.seconds(MODEL_KEY, shape, 1.0, (0, self.spec.num_layers))

    def start(self, index: int, seconds: float, result) -> None:
        if index in self._ends:
            raise RuntimeError(f"replica {index} already runs a stage")
        self._ends[index] = self.clock.now + seconds
        self._results[index] = result
        self.busy_s[index] = self.busy_s.get(index, 0.0) + seconds

    def result(self, index: int):
        del self._ends[index]
        return self._results.pop(index)

    def wait(self, replicas: list[SimReplica]) -> list[SimReplica]:
        """The replicas whose stage has ended by now (the clock is the replay loop's to move)."""
        return [r for r in replicas if self._ends.get(r.index, float("inf")) <= self.clock.now]

    def has_due_stages(self) -> bool:
        return any(end <= self.clock.now for end in self._ends.values())

    def next_event_time(self) -> float | None:
        return min(self._ends.values(), default=None)


def replay_elastic(cluster: ElasticCluster, backend: SimBackend, requests: list[WorkloadRequest],
                   on_step: Callable[[float], None] | None = None) -> list[RequestRecord]:
    """Replay `requests` (ignoring EOS, each to its output length); `on_step(now)` after every event."""
    clock = backend.clock
    pending = deque(sorted(requests, key=lambda r: r.arrival_time))
    records: dict[str, RequestRecord] = {}
    while True:
        outputs = cluster.collect() if backend.has_due_stages() else []
        while pending and pending[0].arrival_time <= clock.now:
            _admit(cluster, pending.popleft(), records)
        outputs += cluster.dispatch()
        for output in outputs:
            if output.finished:
                complete(records[output.request_id], output)
        if on_step is not None:
            on_step(clock.now)
        upcoming = [t for t in (backend.next_event_time(),) if t is not None]
        if pending:
            upcoming.append(pending[0].arrival_time)
        if cluster.migration is not None and cluster.migration.ready_at > clock.now:
            upcoming.append(cluster.migration.ready_at)
        if cluster.transition is not None and cluster.transition.ready_at > clock.now:
            upcoming.append(cluster.transition.ready_at)  # a restore's weights have crossed
        upcoming += [queue[0][0] for queue in cluster.exchanging.values() if queue and queue[0][0] > clock.now]
        if not upcoming:
            break
        clock.advance_to(min(upcoming))
    if cluster.has_unfinished_requests():
        raise RuntimeError("the elastic cluster holds requests that can never be scheduled")
    return list(records.values())


def _admit(cluster: ElasticCluster, request: WorkloadRequest, records: dict[str, RequestRecord]) -> None:
    request_id = str(request.request_id)
    records[request_id] = new_record(request, request.arrival_time)
    params = SamplingParams(temperature=0, max_tokens=request.output_len, ignore_eos=True)
    try:
        cluster.add_request([0] * request.input_len, params, request_id)
    except CoserveError as exc:  # e.g. longer than any replica's KV: failed, as a server would
        records[request_id].error = str(exc)
