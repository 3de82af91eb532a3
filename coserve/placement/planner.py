"""`plan`: a validated problem and a strategy -> a placement with its estimates."""

from __future__ import annotations

import time
from collections.abc import Callable

from coserve.placement.baselines import plan_memory_greedy, plan_spatial
from coserve.placement.exhaustive import plan_exhaustive
from coserve.placement.greedy import plan_greedy
from coserve.placement.placement_file import PlacementFile
from coserve.placement.problem import Problem
from coserve.placement.search import Evaluator, Layout
from coserve.placement.summary import build_placement

STRATEGIES: dict[str, Callable[[Problem, Evaluator], Layout]] = {
    "greedy": plan_greedy,
    "spatial": plan_spatial,
    "memory-greedy": plan_memory_greedy,
    "exhaustive": plan_exhaustive,  # small instances only: the optimum the greedy is measured against
}


def plan(problem: Problem, strategy: str | None = None) -> PlacementFile:
    strategy = strategy or problem.settings.strategy
    started = time.perf_counter()
    evaluator = Evaluator(problem)
    layout = STRATEGIES[strategy](problem, evaluator)
    return build_placement(problem, layout, evaluator, strategy, time.perf_counter() - started)
