"""The simulation's clock: engines read it like time.monotonic; only the event loop moves it."""

from __future__ import annotations


class VirtualClock:
    def __init__(self, start: float = 0.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance_to(self, when: float) -> None:
        if when < self.now:
            raise ValueError(f"the clock cannot go back from {self.now} to {when}")
        self.now = when
