"""Several models on one device: a shared KV page pool, compute lanes, and a multiplexing policy.

Each model keeps its own engine (requests, scheduler, sampler); the device decides which model's
next batch runs on which idle lane, ships the batch to that lane's process, and applies the
sampled tokens when the lane answers. Batches of different models run at the same time on
different lanes; one model never has two batches in flight, so its requests advance in order.
"""

from __future__ import annotations

import logging
import os
from multiprocessing.connection import wait

from coserve.engine.llm_engine import LLMEngine
from coserve.engine.multiplexer import ModelLoad, Multiplexer
from coserve.engine.outputs import RequestOutput
from coserve.engine.scheduler import SchedulerOutput
from coserve.execution.lane import Job, Lane, LaneError
from coserve.execution.model_runner import StepInputs

logger = logging.getLogger(__name__)


def split_cores(num_lanes: int) -> list[list[int]]:
    """Cores per lane; with more lanes than cores, lanes share cores round-robin (oversubscribed)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count()))
    if num_lanes > len(cores):
        logger.warning("%d lanes on %d cores: lanes will share cores", num_lanes, len(cores))
        return [[cores[i % len(cores)]] for i in range(num_lanes)]
    share = len(cores) // num_lanes
    return [cores[i * share:(i + 1) * share] for i in range(num_lanes)]


class DeviceEngine:
    def __init__(self, engines: dict[str, LLMEngine], policy: str = "mux", num_lanes: int = 2):
        self.engines = engines
        self.multiplexer = Multiplexer(policy, list(engines), num_lanes)
        for engine in engines.values():  # lanes read the same weights and pages, not copies
            engine.model.share_memory()
            engine.kv_cache.buffer.share_memory_()
        self._models = {name: (e.model, e.kv_cache) for name, e in engines.items()}
        self.lanes = [Lane(i, cores, self._models)
                      for i, cores in enumerate(split_cores(self.multiplexer.num_lanes))]
        self.in_flight: dict[int, tuple[str, SchedulerOutput, StepInputs]] = {}

    def has_unfinished_requests(self) -> bool:
        return bool(self.in_flight) or any(e.has_unfinished_requests() for e in self.engines.values())

    def close(self) -> None:
        for lane in self.lanes:
            lane.close()

    # -- one round: fill idle lanes, then apply whatever finished -----------------------------

    def step(self) -> list[RequestOutput]:
        outputs = self._dispatch()
        if self.in_flight:
            outputs += self._collect()
        return outputs

    def _dispatch(self) -> list[RequestOutput]:
        outputs: list[RequestOutput] = []
        for lane in self.lanes:
            while lane.index not in self.in_flight:
                name = self.multiplexer.pick(lane.index, self._loads())
                if name is None:
                    break
                engine = self.engines[name]
                out = engine.begin_step()
                if out is None:
                    break
                if not out.scheduled:  # only requests the scheduler ended itself
                    outputs += engine.finish_step(out, {})
                    continue
                inputs = engine.runner.prepare(out, engine.kv.block_tables)
                lane.submit(Job.from_inputs(name, inputs))
                self.in_flight[lane.index] = (name, out, inputs)
        return outputs

    def _loads(self) -> list[ModelLoad]:
        busy = {name for name, _, _ in self.in_flight.values()}
        loads = []
        for name, engine in self.engines.items():
            if name in busy:
                continue
            scheduler = engine.scheduler
            prefill = bool(scheduler.waiting) or any(r.num_computed_tokens < r.num_prompt_tokens
                                                     for r in scheduler.running)
            oldest = min((s.metrics.arrival_time for s in engine.states.values()), default=float("inf"))
            loads.append(ModelLoad(name, prefill, scheduler.has_unfinished_requests(), oldest))
        return loads

    def _collect(self) -> list[RequestOutput]:
        by_connection = {self.lanes[i].connection: self.lanes[i] for i in self.in_flight}
        outputs: list[RequestOutput] = []
        for connection in wait(list(by_connection)):
            lane = by_connection[connection]
            name, out, inputs = self.in_flight.pop(lane.index)
            engine = self.engines[name]
            try:
                logits = lane.result()
            except LaneError as exc:
                outputs += engine.fail_step(out, exc)
                if not lane.alive:
                    self._restart(lane)
                continue
            outputs += engine.finish_step(out, engine.runner.sample(inputs, logits))
        return outputs

    def _restart(self, lane: Lane) -> None:
        logger.error("lane %d died; starting a new one on cores %s", lane.index, lane.cores)
        self.lanes[lane.index] = Lane(lane.index, lane.cores, self._models)
