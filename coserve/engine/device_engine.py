"""Several models on one device: a shared KV page pool, compute lanes, and a multiplexing policy.

Each model keeps its own engine (requests, scheduler, sampler); the device decides which model's
next batch runs on which idle lane, ships the batch to that lane's process, and applies the
sampled tokens when the lane answers. Batches of different models run at the same time on
different lanes; one model never has two batches in flight, so its requests advance in order.

A batch no other model is waiting for may be spread over several idle lanes (its requests split
into balanced parts, each part on its own lane, tokens applied when every part is back): lanes
then never idle while one popular model has work, which a fixed per-model split cannot do.
Where the executor has a wide lane (one worker over every lane's cores) a batch that would take
every lane runs there whole instead, the way MuxServe gives a job alone all of a GPU's SMs: on a
CPU, split parts each read all of the model's weights for a few rows, while one batch over all
the cores reads them once (SmolLM2's 16-row decode step: 0.19 s split over two one-core lanes,
0.12 s whole on two cores, by the shipped cost files).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from coserve.engine.engine_core import EngineCore
from coserve.engine.model_load import ModelLoad, observe
from coserve.engine.multiplexer import Multiplexer
from coserve.engine.outputs import RequestOutput
from coserve.engine.quota_adapter import adapt_quotas
from coserve.engine.scheduler import ScheduledRequest, SchedulerOutput
from coserve.execution.lane import available_cores
from coserve.metrics import SLO

logger = logging.getLogger(__name__)


def split_cores(num_lanes: int) -> list[list[int]]:
    """Cores per lane; with more lanes than cores, lanes share cores round-robin (oversubscribed)."""
    cores = available_cores()
    if num_lanes > len(cores):
        logger.warning("%d lanes on %d cores: lanes will share cores", num_lanes, len(cores))
        return [[cores[i % len(cores)]] for i in range(num_lanes)]
    share = len(cores) // num_lanes
    return [cores[i * share:(i + 1) * share] for i in range(num_lanes)]


def uses_wide_lane(policy: str, spread_batches: bool, wide_lane: bool) -> bool:
    """Whether a device's executor should have a wide lane: only `mux` spreads a batch over every lane."""
    return wide_lane and spread_batches and policy == "mux"


def split_batch(scheduled: list[ScheduledRequest], parts: int) -> list[list[ScheduledRequest]]:
    """Requests into `parts` groups of near-equal token counts (largest first, to the lightest)."""
    if parts == 1:
        return [scheduled]
    groups: list[list[ScheduledRequest]] = [[] for _ in range(parts)]
    loads = [0] * parts
    for item in sorted(scheduled, key=lambda item: item.num_new_tokens, reverse=True):
        lightest = loads.index(min(loads))
        groups[lightest].append(item)
        loads[lightest] += item.num_new_tokens
    return [group for group in groups if group]


class LaneExecutor(Protocol):
    """Runs jobs on lanes: worker processes (execution/process_lanes.py) or a cost model on a
    virtual clock (simulator/lanes.py). The device's decisions are the same over either. An
    executor may also name a `wide_lane` (the index of a lane over all the others' cores, or None)."""

    num_lanes: int

    def submit(self, lane: int, model: str, engine: EngineCore, part: list[ScheduledRequest]) -> None: ...

    def wait(self) -> list[tuple[int, dict[str, int] | Exception]]: ...

    def close(self) -> None: ...


@dataclass
class Flight:
    """One model's batch on one or more lanes."""

    model: str
    out: SchedulerOutput
    lanes: set[int]  # lanes still running a part
    holds: set[int] = field(default_factory=set)  # lanes it keeps from others until it is back
    sampled: dict[str, int] = field(default_factory=dict)
    error: Exception | None = None


class DeviceEngine:
    """`slos`: per-model latency targets the `mux` policy favours when missed; `demand`: expected
    KV demand per model (request rate x KV bytes per token), the split of pages nobody needs now.
    Under `mux` the page quotas adapt every round (see quota_adapter); other policies keep the
    quotas they were given. `lane_cores`: the cores of each lane (default: an even split).
    `executor`: the lanes (default: worker processes on those cores). `on_launch(model, lanes,
    out)` sees every batch as it is launched (tests compare real and simulated decisions).
    `wide_lane`: the default executor gets a wide lane (see above) under `mux` with spreading."""

    def __init__(self, engines: dict[str, EngineCore], policy: str = "mux", num_lanes: int = 2,
                 slos: dict[str, SLO] | None = None, demand: dict[str, float] | None = None,
                 clock=time.monotonic, lane_cores: list[list[int]] | None = None, spread_batches: bool = True,
                 executor: LaneExecutor | None = None, on_launch: Callable | None = None, wide_lane: bool = True):
        self.engines = engines
        if executor is not None:
            num_lanes = executor.num_lanes
        elif lane_cores:
            num_lanes = len(lane_cores)
        self.multiplexer = Multiplexer(policy, list(engines), num_lanes)
        self.slos = slos or {}
        self.demand = demand or {}
        self.clock = clock
        self.spread_batches = spread_batches
        self.on_launch = on_launch
        pools = {id(e.kv.pool) for e in engines.values()}
        self.pool = next(iter(engines.values())).kv.pool if len(pools) == 1 else None
        self.adapts_quotas = policy == "mux" and self.pool is not None
        if executor is None:
            from coserve.execution.process_lanes import ProcessLanes  # the simulator never loads it

            executor = ProcessLanes(engines, lane_cores or split_cores(self.multiplexer.num_lanes),
                                    uses_wide_lane(policy, spread_batches, wide_lane))
        self.executor = executor
        self.in_flight: dict[int, Flight] = {}  # lane -> the flight it works on
        self._deferred_aborts: dict[str, list[str]] = {}

    def has_unfinished_requests(self) -> bool:
        return bool(self.in_flight) or any(e.has_unfinished_requests() for e in self.engines.values())

    def abort_request(self, model: str, request_id: str) -> None:
        """Abort now, or once the model's batch in flight is back: a lane may still be writing
        that request's KV, and freed pages must not reach another model before it stops."""
        if model in self._busy_models():
            self._deferred_aborts.setdefault(model, []).append(request_id)
        else:
            self.engines[model].abort_request(request_id)

    def close(self) -> None:
        self.executor.close()

    def step(self) -> list[RequestOutput]:
        return [output for outputs in self.step_by_model().values() for output in outputs]

    def step_by_model(self) -> dict[str, list[RequestOutput]]:
        """One round: fill idle lanes, then wait for and apply whatever finishes; by model."""
        outputs = self.dispatch()
        if self.in_flight:
            for name, more in self.collect().items():
                outputs[name] += more
        return outputs

    # -- dispatch -------------------------------------------------------------------------------

    def dispatch(self) -> dict[str, list[RequestOutput]]:
        """Fill idle lanes (outputs: requests the schedulers ended without running them)."""
        outputs: dict[str, list[RequestOutput]] = {name: [] for name in self.engines}
        blocked: set[str] = set()  # models with work but nothing schedulable (no pages yet)
        for lane in range(self.executor.num_lanes):
            while lane not in self.in_flight:
                loads = [load for load in self._idle_loads() if load.name not in blocked]
                name = self.multiplexer.pick(lane, loads)
                if name is None:
                    break
                engine = self.engines[name]
                out = engine.begin_step()
                if out is None:
                    blocked.add(name)
                    continue
                if not out.scheduled:  # only requests the scheduler ended itself
                    outputs[name] += engine.finish_step(out, {})
                    continue
                others_waiting = any(load.has_work and load.name != name for load in loads)
                self._launch(name, out, self._lanes_for(name, lane, len(out.scheduled), others_waiting))
        return outputs

    def _lanes_for(self, model: str, first: int, batch_size: int, others_waiting: bool) -> list[int]:
        if not self.spread_batches or others_waiting or batch_size < 2:
            return [first]
        idle = [i for i in self.multiplexer.lanes_of(model) if i not in self.in_flight and i != first]
        return [first] + idle[:batch_size - 1]

    def _launch(self, model: str, out: SchedulerOutput, lanes: list[int]) -> None:
        engine = self.engines[model]
        wide = getattr(self.executor, "wide_lane", None)
        if wide is not None and len(lanes) == self.executor.num_lanes > 1:
            flight = Flight(model, out, {wide}, holds=set(lanes))
            runs = [(wide, out.scheduled)]
        else:
            parts = split_batch(out.scheduled, len(lanes))
            lanes = lanes[:len(parts)]
            flight = Flight(model, out, set(lanes))
            runs = list(zip(lanes, parts))
        if self.on_launch is not None:
            self.on_launch(model, [lane for lane, _ in runs], out)
        for lane, part in runs:
            self.executor.submit(lane, model, engine, part)
            self.in_flight[lane] = flight
        for lane in flight.holds:
            self.in_flight[lane] = flight

    def loads(self) -> list[ModelLoad]:
        now = self.clock()
        return [observe(name, engine, self.slos.get(name), now) for name, engine in self.engines.items()]

    def _idle_loads(self) -> list[ModelLoad]:
        """Loads of the models without a batch in flight, after quotas follow the new state."""
        loads = self.loads()
        if self.adapts_quotas:
            self.pool.quotas = adapt_quotas(loads, self.pool.num_blocks, self.demand, self.pool.limits)
        busy = self._busy_models()
        return [load for load in loads if load.name not in busy]

    def _busy_models(self) -> set[str]:
        return {flight.model for flight in self.in_flight.values()}

    # -- collect --------------------------------------------------------------------------------

    def collect(self) -> dict[str, list[RequestOutput]]:
        """Apply the jobs the executor reports finished (a real executor blocks for one)."""
        outputs: dict[str, list[RequestOutput]] = {name: [] for name in self.engines}
        for lane, result in self.executor.wait():
            flight = self.in_flight.pop(lane)
            if isinstance(result, Exception):
                flight.error = flight.error or result
            else:
                flight.sampled.update(result)
            flight.lanes.discard(lane)
            if not flight.lanes:  # every part is back: the batch's pages are quiet again
                for held in flight.holds:
                    del self.in_flight[held]
                engine = self.engines[flight.model]
                if flight.error is not None:
                    outputs[flight.model] += engine.fail_step(flight.out, flight.error)
                else:
                    outputs[flight.model] += engine.finish_step(flight.out, flight.sampled)
        for name in [n for n in self._deferred_aborts if n not in self._busy_models()]:
            for request_id in self._deferred_aborts.pop(name):
                self.engines[name].abort_request(request_id)
        return outputs
