"""Simulated lanes: a job's duration comes from a cost model; its end is an event on the clock.

Lanes of one device share more than their compute partition, so a job may run slower while
another lane is busy. Two kinds of sharing are modelled, each applied as a rate that moves a job's
end whenever the set of running jobs changes:

- compute and memory bandwidth, for cost models that know how much of each a job uses
  (`timed(model, part, lane) -> (seconds, (compute, bandwidth))`, fractions of the device, the
  roofline): running jobs share each resource max-min fairly, so a job using less than its fair
  share keeps its speed, the others slow in proportion to what they get, and a job runs at its
  slower resource's speed. Without this, two decode jobs on two lanes would each read at the full
  bandwidth at once, and lanes whose shares add up past the device would compute past its peak;
- measured slowdowns (`interference(model, part, lane) -> (beside, split)`, from `coserve
  profile`): a job runs at 1 / beside of its alone speed while any other lane of the device runs,
  and at 1 / split while another lane runs a part of its own batch (the batch was split over
  lanes, whose parts contend in lockstep).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from coserve.engine.engine_core import EngineCore
from coserve.engine.scheduler import ScheduledRequest
from coserve.simulator.clock import VirtualClock

# Simulated requests ignore EOS and stop at max_tokens, so the sampled id never matters.
SIMULATED_TOKEN = 0


def simulated_tokens(part: list[ScheduledRequest]) -> dict[str, int]:
    """What a batch part returns: one token for every row that completes its known tokens."""
    return {item.request.request_id: SIMULATED_TOKEN for item in part if item.completes_known_tokens}


JobCost = Callable[[str, list[ScheduledRequest], int], float]  # (model, batch part, lane) -> seconds alone


def fair_speeds(demands: list[float]) -> list[float]:
    """Each job's speed (1 = as fast as alone) when jobs using `demands` (fractions of one resource
    of the device, alone) share it max-min fairly: the smallest demands are met in full, the rest
    split what is left evenly."""
    speeds = [1.0] * len(demands)
    left = 1.0
    order = sorted(range(len(demands)), key=demands.__getitem__)
    for k, i in enumerate(order):
        fair = left / (len(order) - k)
        if demands[i] > fair:
            speeds[i] = fair / demands[i]
            left -= fair
        else:
            left -= demands[i]
    return speeds


def slowdown_beside(model: str, others: list[str], slowdown: float, split_slowdown: float) -> float:
    """A job's duration multiplier while the lanes around it run jobs of `others` (models): the
    split slowdown if one of them is its own model (one model, one batch), else the slowdown
    beside a busy lane if any runs, else 1."""
    if not others:
        return 1.0
    return split_slowdown if model in others else slowdown


@dataclass
class _Job:
    model: str
    sampled: dict[str, int]
    alone_seconds: float
    slowdown: float  # duration multiplier while another lane runs
    split_slowdown: float  # ... while that lane runs another part of the same batch
    demands: tuple[float, ...]  # fractions of the device's compute and bandwidth it uses alone (() unmodelled)
    since: float  # when `left` was last brought up to date
    end: float
    left: float = 1.0  # fraction of the job still to run
    factor: float = 1.0  # the multiplier it runs at now

    def rerate(self, now: float, factor: float) -> None:
        if factor == self.factor or self.alone_seconds == 0:
            return
        self.left -= (now - self.since) / (self.alone_seconds * self.factor)
        self.since, self.factor = now, factor
        self.end = now + self.left * self.alone_seconds * factor


class SimulatedLanes:
    """`wide_lane`: one more lane, index `num_lanes`, over the whole device (as ProcessLanes has),
    priced by the cost model as that lane."""

    def __init__(self, num_lanes: int, clock: VirtualClock, cost: JobCost, wide_lane: bool = False):
        self.num_lanes = num_lanes
        self.wide_lane = num_lanes if wide_lane and num_lanes > 1 else None
        self.clock = clock
        self.cost = cost
        self._interference = getattr(cost, "interference", None)  # optional: (model, part, lane) -> multipliers
        self._timed = getattr(cost, "timed", None)  # optional: (model, part, lane) -> (seconds, demands)
        self._jobs: dict[int, _Job] = {}

    def submit(self, lane: int, model: str, engine: EngineCore, part: list[ScheduledRequest]) -> None:
        seconds, demands = self._timed(model, part, lane) if self._timed else (self.cost(model, part, lane), ())
        if seconds < 0:
            raise ValueError(f"the cost model gave a negative duration ({seconds}) for {model}")
        slowdown, split_slowdown = self._interference(model, part, lane) if self._interference else (1.0, 1.0)
        now = self.clock.now
        self._jobs[lane] = _Job(model, simulated_tokens(part), seconds, slowdown, split_slowdown, demands, now,
                                now + seconds)
        self._rerate()

    def _rerate(self) -> None:
        jobs = list(self._jobs.values())
        if not jobs:
            return
        if len(jobs) == 1:
            jobs[0].rerate(self.clock.now, 1.0)
            return
        speeds = [1.0] * len(jobs)
        for resource in range(max(len(job.demands) for job in jobs)):
            shared = fair_speeds([job.demands[resource] if job.demands else 0.0 for job in jobs])
            speeds = [min(a, b) for a, b in zip(speeds, shared)]
        for job, speed in zip(jobs, speeds):
            others = [other.model for other in jobs if other is not job]
            job.rerate(self.clock.now, slowdown_beside(job.model, others, job.slowdown, job.split_slowdown) / speed)

    def has_due_events(self) -> bool:
        now = self.clock.now
        return any(job.end <= now for job in self._jobs.values())

    def next_event_time(self) -> float | None:
        return min((job.end for job in self._jobs.values()), default=None)

    def wait(self) -> list[tuple[int, dict[str, int]]]:
        """The jobs that have ended by now, in lane order (the clock is the event loop's to move)."""
        now = self.clock.now
        done = sorted(lane for lane, job in self._jobs.items() if job.end <= now)
        results = [(lane, self._jobs.pop(lane).sampled) for lane in done]
        if done:
            self._rerate()
        return results

    def close(self) -> None:
        self._jobs.clear()
