"""Devices on one virtual clock: build them from specs, replay a workload, return request records.

Each device is a real `DeviceEngine` (multiplexer, quota adapter, schedulers, page pool) over
`SimEngine`s and `SimulatedLanes`; the loop below only moves the clock to the next arrival or job
end and lets every device react, so no scheduling decision is made here.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from coserve.engine.block_pool import BlockPool
from coserve.engine.config import EngineConfig
from coserve.engine.device_config import ColocatedModel, DeviceConfig, DevicePlan, plan_device
from coserve.engine.device_engine import DeviceEngine, uses_wide_lane
from coserve.errors import CoserveError
from coserve.execution.models.spec import ModelSpec
from coserve.metrics import SLO, RequestRecord
from coserve.placement.shapes import model_spec
from coserve.sampling_params import SamplingParams
from coserve.simulator.clock import VirtualClock
from coserve.simulator.lanes import JobCost, SimulatedLanes
from coserve.simulator.records import complete, new_record
from coserve.simulator.sim_engine import SimEngine
from coserve.workload import WorkloadRequest


@dataclass(frozen=True)
class SimModel:
    name: str
    model: str  # a preset name, config.json, model folder or GGUF: only its shape is read
    dtype: str = "float16"
    rate: float = 1.0
    slo: SLO | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None


@dataclass(frozen=True)
class SimDeviceSpec:
    name: str
    models: list[SimModel]
    memory_budget_bytes: int
    policy: str = "mux"
    lane_shares: list[float] = field(default_factory=lambda: [1.0])  # fraction of the device per lane
    spread_batches: bool = True
    device: str = "cuda"
    wide_lane: bool = False  # a lane over the whole device for a batch spread over every lane (CPU)


CostFactory = Callable[[SimDeviceSpec, dict[str, ModelSpec]], JobCost]


def device_plan(spec: SimDeviceSpec) -> tuple[dict[str, ModelSpec], list[ColocatedModel], DevicePlan]:
    """The models' shapes and the device's memory plan, as the real device would make them: raises
    ConfigError for an unknown model, a duplicate name or weights that do not fit. Cheap, so a CLI
    calls it for every device before simulating any."""
    specs = {m.name: model_spec(m.model, m.name) for m in spec.models}
    colocated = [ColocatedModel(EngineConfig(model=m.model, name=m.name, dtype=m.dtype, device=spec.device,
                                             max_num_seqs=m.max_num_seqs,
                                             max_num_batched_tokens=m.max_num_batched_tokens,
                                             max_model_len=m.max_model_len), m.rate, m.slo)
                 for m in spec.models]
    device = DeviceConfig(policy=spec.policy, num_lanes=len(spec.lane_shares),
                          memory_budget_bytes=spec.memory_budget_bytes, device=spec.device,
                          spread_batches=spec.spread_batches)
    return specs, colocated, plan_device(colocated, device, specs)


class SimCluster:
    def __init__(self, devices: list[SimDeviceSpec], cost_for: CostFactory):
        self.clock = VirtualClock()
        self.devices: dict[str, DeviceEngine] = {}
        self.executors: dict[str, SimulatedLanes] = {}
        self._hosts: dict[str, list[str]] = {}  # model -> devices holding a replica
        for spec in devices:
            self._build(spec, cost_for)

    def _build(self, spec: SimDeviceSpec, cost_for: CostFactory) -> None:
        specs, colocated, plan = device_plan(spec)
        pool = BlockPool(plan.layout.num_pages)
        pool.set_quotas(plan.page_caps, fixed=True)
        engines = {c.config.name: SimEngine(c.config, specs[c.config.name], pool,
                                            plan.tokens_per_page(specs[c.config.name], c.config.dtype), self.clock)
                   for c in colocated}
        executor = SimulatedLanes(len(spec.lane_shares), self.clock, cost_for(spec, specs),
                                  uses_wide_lane(spec.policy, spec.spread_batches, spec.wide_lane))
        self.executors[spec.name] = executor
        self.devices[spec.name] = DeviceEngine(engines, spec.policy, slos=plan.slos, demand=plan.demand,
                                               clock=self.clock, executor=executor,
                                               spread_batches=spec.spread_batches)
        for name in engines:
            self._hosts.setdefault(name, []).append(spec.name)

    def run(self, requests: list[WorkloadRequest]) -> list[RequestRecord]:
        """Replay `requests` with each device acting as its real loop would: a request reaches the
        engine between steps (it waits in the device's inbox while a job runs), and a device
        dispatches when it is idle and something arrives, or right after applying ended jobs."""
        unknown = sorted({r.model for r in requests} - set(self._hosts))
        if unknown:
            raise CoserveError(f"the workload asks for models no device holds: {unknown}")
        pending = deque(sorted(requests, key=lambda r: r.arrival_time))
        inbox: dict[str, list[WorkloadRequest]] = {name: [] for name in self.devices}
        records: dict[str, RequestRecord] = {}
        ends: list[tuple[float, str]] = []  # (next job end, device); stale entries are skipped
        while True:
            woken = self._due_devices(ends)
            for name in woken:
                self._record(self.devices[name].collect(), records)
            while pending and pending[0].arrival_time <= self.clock.now:
                request = pending.popleft()
                records[str(request.request_id)] = new_record(request, request.arrival_time)
                device = self._route(request, inbox)
                inbox[device].append(request)
                if not self.devices[device].in_flight:
                    woken.add(device)
            for name in sorted(woken):
                for request in inbox[name]:
                    self._admit(self.devices[name], request, records)
                inbox[name].clear()
                self._record(self.devices[name].dispatch(), records)
                end = self.executors[name].next_event_time()
                if end is not None:
                    heapq.heappush(ends, (end, name))
            upcoming = [ends[0][0]] if ends else []
            if pending:
                upcoming.append(pending[0].arrival_time)
            if not upcoming:
                break
            self.clock.advance_to(min(upcoming))
        stuck = [n for n, d in self.devices.items() if d.has_unfinished_requests()]
        if stuck:
            raise RuntimeError(f"devices {stuck} hold requests that can never be scheduled")
        return list(records.values())

    def _due_devices(self, ends: list[tuple[float, str]]) -> set[str]:
        """Devices with a job ending by now, and `ends` cleared of entries that no longer hold (a
        job's end moves when lanes start or stop beside it; every change pushes a new entry)."""
        due = set()
        while ends and (ends[0][0] <= self.clock.now
                        or self.executors[ends[0][1]].next_event_time() != ends[0][0]):
            _, name = heapq.heappop(ends)
            if self.executors[name].has_due_events():
                due.add(name)
        return due

    def _route(self, request: WorkloadRequest, inbox: dict[str, list[WorkloadRequest]]) -> str:
        """The replica of the request's model with the fewest requests, queued or admitted."""
        def load(device: str) -> int:
            queued = sum(r.model == request.model for r in inbox[device])
            return queued + len(self.devices[device].engines[request.model].states)
        return min(self._hosts[request.model], key=load)

    def _admit(self, device: DeviceEngine, request: WorkloadRequest, records: dict[str, RequestRecord]) -> None:
        params = SamplingParams(temperature=0, max_tokens=request.output_len, ignore_eos=True)
        try:
            device.engines[request.model].add_request([0] * request.input_len, params, str(request.request_id))
        except CoserveError as exc:  # e.g. longer than the model's context: failed, as a server would
            records[str(request.request_id)].error = str(exc)

    @staticmethod
    def _record(outputs: dict, records: dict[str, RequestRecord]) -> None:
        for model_outputs in outputs.values():
            for output in model_outputs:
                if output.finished:
                    complete(records[output.request_id], output)
