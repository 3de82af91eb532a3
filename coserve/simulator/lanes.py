"""Simulated lanes: a job's duration comes from a cost model; its end is an event on the clock.

Lanes of one device share more than their compute partition (memory bus, caches, the host that
feeds them), so a job may run slower while another lane is busy. A cost model that knows how much
(`slowdown(model, lane)`, measured by `coserve profile`) gets it applied as a rate: each job runs
at 1 / slowdown of its alone speed while any other lane of the device runs, and its end moves
whenever that changes.
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


@dataclass
class _Job:
    sampled: dict[str, int]
    alone_seconds: float
    slowdown: float  # duration multiplier while another lane runs
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
    def __init__(self, num_lanes: int, clock: VirtualClock, cost: JobCost):
        self.num_lanes = num_lanes
        self.clock = clock
        self.cost = cost
        self._slowdown = getattr(cost, "slowdown", None)  # optional: (model, lane) -> multiplier
        self._jobs: dict[int, _Job] = {}

    def submit(self, lane: int, model: str, engine: EngineCore, part: list[ScheduledRequest]) -> None:
        seconds = self.cost(model, part, lane)
        if seconds < 0:
            raise ValueError(f"the cost model gave a negative duration ({seconds}) for {model}")
        slowdown = self._slowdown(model, lane) if self._slowdown is not None else 1.0
        now = self.clock.now
        self._jobs[lane] = _Job(simulated_tokens(part), seconds, slowdown, now, now + seconds)
        self._rerate()

    def _rerate(self) -> None:
        contended = len(self._jobs) > 1
        for job in self._jobs.values():
            job.rerate(self.clock.now, job.slowdown if contended else 1.0)

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
