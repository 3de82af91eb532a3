"""How fast a real run's lane jobs ran against what a fitted cost model predicts for them.

A shared VM's speed drifts, within minutes, by tens of percent. A speed probe before a run
(`profile.speed_probe`) reads the speed then; the meter reads it over the run itself, from the
run's own jobs. Simulating the run at that speed separates two errors: what the simulator gets
wrong about scheduling and queueing given the right step costs, and how far the machine drifted
from its profile.

Each job is timed as the profile times it, host work included: from the last time a lane reported
back (or, when the device had run out of requests since, from the start of the step that launched
the job: the loop may have slept until an arrival) to the moment a wait reported it done. Its
prediction follows the simulator's rule (simulator/lanes.py): the fitted alone duration, stretched
by the measured slowdown over the part of its span during which another lane ran (by the split
slowdown while that lane ran the same model's batch).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from coserve.simulator.lanes import slowdown_beside


@dataclass
class MeteredJob:
    lane: int
    model: str
    alone_seconds: float  # the cost model's duration with no other lane running
    slowdown: float  # ... multiplier while another lane runs
    split_slowdown: float  # ... while another lane runs the same model's batch
    start: float
    end: float | None = None

    def alone_equivalent(self, others: list[MeteredJob]) -> float:
        """The seconds this job would have taken with no other lane running, at the speed it ran:
        each stretch of its span divided by the slowdown that held then."""
        cuts = sorted({self.start, self.end, *(t for o in others for t in (o.start, o.end)
                                                if self.start < t < self.end)})
        total = 0.0
        for begin, finish in zip(cuts, cuts[1:]):
            running = [o.model for o in others if o.start < finish and o.end > begin]
            total += (finish - begin) / slowdown_beside(self.model, running, self.slowdown, self.split_slowdown)
        return total


class JobMeter:
    """Installed on a `DeviceEngine` (it becomes the device's executor, wrapping the one it had);
    `speeds()` is, per lane size, the total of the run's job spans (each undone of the slowdown
    beside other lanes) over the total the cost model predicted alone: above 1 when the machine
    ran slower than when profiled. `cost` is a `simulator.cost.FittedCost` of the unscaled profiles."""

    def __init__(self, device, cost):
        self.inner = device.executor
        self.num_lanes = self.inner.num_lanes
        self.wide_lane = getattr(self.inner, "wide_lane", None)
        self.cost = cost
        self.clock = device.clock
        self.jobs: list[MeteredJob] = []
        self._running: dict[int, MeteredJob] = {}
        self._host_since: float | None = None  # the last report, unless the device ran dry since
        self._step_started = 0.0
        device.executor = self
        device_step = device.step

        def step():
            self._step_started = self.clock()
            outputs = device_step()
            if not device.has_unfinished_requests():
                self._host_since = None
            return outputs

        device.step = step

    def submit(self, lane, model, engine, part):
        slowdown, split = self.cost.interference(model, part, lane)
        start = self._step_started if self._host_since is None else self._host_since
        self._running[lane] = MeteredJob(lane, model, self.cost(model, part, lane), slowdown, split, start)
        self.inner.submit(lane, model, engine, part)

    def wait(self):
        results = self.inner.wait()
        self._host_since = now = self.clock()
        for lane, _ in results:
            job = self._running.pop(lane)
            job.end = now
            self.jobs.append(job)
        return results

    def close(self):
        self.inner.close()

    def speeds(self) -> dict[str, float]:
        """Lane size (as the cost model names it) -> measured over predicted, for sizes that ran jobs."""
        by_lane: dict[int, list[MeteredJob]] = {}
        for job in sorted(self.jobs, key=lambda j: j.start):
            by_lane.setdefault(job.lane, []).append(job)
        spent: dict[str, float] = {}
        predicted: dict[str, float] = {}
        for job in self.jobs:
            others = [o for lane, jobs in by_lane.items() if lane != job.lane for o in _during(job, jobs)]
            size = self.cost.lane_sizes[job.lane]
            spent[size] = spent.get(size, 0.0) + job.alone_equivalent(others)
            predicted[size] = predicted.get(size, 0.0) + job.alone_seconds
        return {size: spent[size] / predicted[size] for size in spent if predicted[size] > 0}


def _during(job: MeteredJob, lane_jobs: list[MeteredJob]) -> list[MeteredJob]:
    """The jobs of one lane (in order, one after another) that ran during `job`."""
    k = bisect.bisect_right(lane_jobs, job.start, key=lambda o: o.end)
    found = []
    while k < len(lane_jobs) and lane_jobs[k].start < job.end:
        found.append(lane_jobs[k])
        k += 1
    return found
