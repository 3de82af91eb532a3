"""The lanes of a real device: worker processes over shared weights and pages (see lane.py).

The device engine hands this executor a model's share of a batch for a lane and asks which lanes
have finished; the simulator's executor answers the same two questions from a cost model.
"""

from __future__ import annotations

import logging
from multiprocessing.connection import wait

from coserve.engine.engine_core import EngineCore
from coserve.engine.scheduler import ScheduledRequest, SchedulerOutput
from coserve.execution.lane import Job, Lane, LaneError

logger = logging.getLogger(__name__)

LaneResult = dict[str, int] | LaneError  # sampled token per request id, or why the job failed


class ProcessLanes:
    """One worker per lane of `lane_cores`; with `wide_lane` (and more than one lane) one more,
    index `num_lanes`, over all their cores, for a batch the device runs on every lane at once (see
    DeviceEngine._launch). It runs only while the others idle, so no core is ever asked twice."""

    def __init__(self, engines: dict, lane_cores: list[list[int]], wide_lane: bool = False):
        for engine in engines.values():  # lanes read the same weights and pages, not copies
            engine.model.share_memory()
            engine.kv_cache.buffer.share_memory_()
        self._models = {name: (e.model, e.kv_cache) for name, e in engines.items()}
        self.num_lanes = len(lane_cores)
        self.wide_lane = self.num_lanes if wide_lane and self.num_lanes > 1 else None
        every = list(lane_cores)
        if self.wide_lane is not None:
            every.append(sorted({core for cores in lane_cores for core in cores}))
        self.lanes: list[Lane] = []
        try:
            for index, cores in enumerate(every):
                self.lanes.append(Lane(index, cores, self._models, ready=False))
            for lane in self.lanes:
                lane.wait_ready()
        except BaseException:
            self.close()
            raise
        self._engines: dict[int, EngineCore] = {}  # lane -> the engine whose job it runs

    def submit(self, lane: int, model: str, engine, part: list[ScheduledRequest]) -> None:
        inputs = engine.runner.prepare(SchedulerOutput(scheduled=part), engine.kv.block_tables)
        job = Job.from_inputs(model, inputs)
        self._engines[lane] = engine
        try:
            self.lanes[lane].submit(job, inputs)
        except OSError:  # the lane died while idle: a fresh one takes the job
            self._restart(self.lanes[lane])
            self.lanes[lane].submit(job, inputs)

    def wait(self) -> list[tuple[int, LaneResult]]:
        """Block until some lane is done; its sampled tokens (or error), in lane order."""
        busy = {self.lanes[i].connection: self.lanes[i] for i in self._engines}
        done = sorted((busy[c] for c in wait(list(busy))), key=lambda lane: lane.index)
        return [(lane.index, self._result(lane)) for lane in done]

    def collect(self, lanes: list[int]) -> list[tuple[int, LaneResult]]:
        """Block until each of these lanes is done (tests script the order in which lanes end)."""
        return [(index, self._result(self.lanes[index])) for index in sorted(lanes)]

    def _result(self, lane: Lane) -> LaneResult:
        engine = self._engines.pop(lane.index)
        inputs = lane.inputs
        try:
            logits = lane.result()
        except LaneError as exc:
            if exc.dead or not lane.alive:
                self._restart(lane)
            return exc
        return engine.runner.sample(inputs, logits)

    def _restart(self, lane: Lane) -> None:
        logger.error("lane %d died; starting a new one on cores %s", lane.index, lane.cores)
        lane.close()
        self.lanes[lane.index] = Lane(lane.index, lane.cores, self._models)

    def close(self) -> None:
        for lane in self.lanes:
            lane.close()
