"""Exhaustive search over every placement of a small instance: the optimum the greedy is measured by.

Every mesh group, and every assignment of each model to one mesh of it (one copy per model; the
greedy's replicas are a superset of this space), scored with the same unit estimate. The count is
sum over groups of meshes^models, so keep instances small (4 GPUs and 6 models: under 5,000).
"""

from __future__ import annotations

from itertools import product

from coserve.errors import ConfigError
from coserve.placement.meshes import mesh_groups
from coserve.placement.problem import Problem
from coserve.placement.search import Evaluator, Layout

MAX_ASSIGNMENTS = 2_000_000  # beyond this the search takes minutes; it is a test oracle, not a planner


def plan_exhaustive(problem: Problem, evaluator: Evaluator | None = None) -> Layout:
    evaluator = evaluator or Evaluator(problem)
    groups = list(mesh_groups(problem.cluster))
    count = sum(len(g) ** len(problem.models) for g in groups)
    if count > MAX_ASSIGNMENTS:
        raise ConfigError(f"exhaustive search over {count} placements is too large (limit {MAX_ASSIGNMENTS})")
    best_score, best = None, None
    for meshes in groups:
        hosts = [[d for d, mesh in enumerate(meshes) if evaluator.can_host(m, mesh.size)] for m in problem.models]
        for assignment in product(*hosts):
            layout = Layout(meshes)
            for model, mesh in enumerate(assignment):
                layout.add(mesh, model)
            score = layout.total(evaluator)
            if score is not None and (best_score is None or score > best_score):
                best_score, best = score, layout
    if best is None:
        raise ConfigError("no placement holds every model")
    return best
