"""Simulated lanes: a job's duration comes from a cost model; its end is an event on the clock."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

from coserve.engine.engine_core import EngineCore
from coserve.engine.scheduler import ScheduledRequest
from coserve.simulator.clock import VirtualClock

# Simulated requests ignore EOS and stop at max_tokens, so the sampled id never matters.
SIMULATED_TOKEN = 0

def simulated_tokens(part: list[ScheduledRequest]) -> dict[str, int]:
    """What a batch part returns: one token for every row that completes its known tokens."""
    return {item.request.request_id: SIMULATED_TOKEN for item in part if item.completes_known_tokens}


JobCost = Callable[[str, list[ScheduledRequest], int], float]  # (model, batch part, lane) -> seconds


class SimulatedLanes:
    def __init__(self, num_lanes: int, clock: VirtualClock, cost: JobCost):
        self.num_lanes = num_lanes
        self.clock = clock
        self.cost = cost
        self._events: list[tuple[float, int, int, dict[str, int]]] = []  # (end, lane, seq, sampled)
        self._seq = itertools.count()  # keeps the heap from comparing dicts on equal times

    def submit(self, lane: int, model: str, engine: EngineCore, part: list[ScheduledRequest]) -> None:
        seconds = self.cost(model, part, lane)
        if seconds < 0:
            raise ValueError(f"the cost model gave a negative duration ({seconds}) for {model}")
        sampled = simulated_tokens(part)
        heapq.heappush(self._events, (self.clock.now + seconds, lane, next(self._seq), sampled))

    def has_due_events(self) -> bool:
        return bool(self._events) and self._events[0][0] <= self.clock.now

    def next_event_time(self) -> float | None:
        return self._events[0][0] if self._events else None

    def wait(self) -> list[tuple[int, dict[str, int]]]:
        """The jobs that have ended by now, in lane order (the clock is the event loop's to move)."""
        done = []
        while self._events and self._events[0][0] <= self.clock.now:
            _, lane, _, sampled = heapq.heappop(self._events)
            done.append((lane, sampled))
        return sorted(done, key=lambda item: item[0])

    def close(self) -> None:
        self._events.clear()
