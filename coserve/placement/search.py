"""What every search strategy shares: a layout of models on meshes, and memoised unit estimates.

A model may sit on several meshes (replicas); its rate is split evenly between them, as a router
that balances requests would. A unit's estimate depends only on its mesh size and on which models
it holds with how many replicas each, so estimates are cached on that key across mesh groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from coserve.placement import memory
from coserve.placement.meshes import Mesh
from coserve.placement.problem import ModelDemand, Problem
from coserve.placement.unit import ModelOnMesh, UnitEstimate, estimate_unit

UnitKey = tuple[int, tuple[tuple[int, int], ...]]  # (mesh size, ((model index, replicas), ...))


class Evaluator:
    """Memoised unit estimates of one problem."""

    def __init__(self, problem: Problem):
        self.problem = problem
        self.objective = problem.settings.objective
        self._on_mesh: dict[tuple[int, int], ModelOnMesh] = {}
        self._units: dict[UnitKey, UnitEstimate | None] = {}

    def can_host(self, model: ModelDemand, size: int) -> bool:
        return size >= model.min_mesh and memory.valid_tensor_degree(model.spec, size)

    def on_mesh(self, index: int, size: int) -> ModelOnMesh:
        key = (index, size)
        if key not in self._on_mesh:
            p = self.problem
            self._on_mesh[key] = ModelOnMesh.build(p.models[index], size, p.cluster, p.settings)
        return self._on_mesh[key]

    def unit(self, key: UnitKey) -> UnitEstimate | None:
        """Estimate of a unit, None when its models do not fit its memory."""
        if key not in self._units:
            size, members = key
            models = self.problem.models
            pairs = [(self.on_mesh(i, size), models[i].rate / replicas) for i, replicas in members]
            self._units[key] = estimate_unit(pairs, self.problem.cluster, self.problem.settings) if pairs else None
        return self._units[key]

    def score(self, key: UnitKey) -> float | None:
        """The objective's value of a unit: 0 when empty, None when infeasible."""
        if not key[1]:
            return 0.0
        estimate = self.unit(key)
        return None if estimate is None else estimate.score(self.objective)

    def load(self, key: UnitKey) -> float:
        estimate = self.unit(key) if key[1] else None
        return estimate.load if estimate else 0.0


@dataclass
class Layout:
    """Which models (by index) each mesh of a group holds; a model on several meshes has replicas."""

    meshes: tuple[Mesh, ...]
    hosted: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.hosted:
            self.hosted = [[] for _ in self.meshes]

    def replicas(self, model: int) -> int:
        return sum(model in h for h in self.hosted)

    def key(self, mesh: int, extra: int | None = None, without: int | None = None,
            replicas: dict[int, int] | None = None) -> UnitKey:
        """The unit key of a mesh, optionally with a model added or removed, and replica counts overridden."""
        models = [m for m in self.hosted[mesh] if m != without] + ([extra] if extra is not None else [])
        replicas = replicas or {}
        counts = tuple(sorted((m, replicas.get(m) or self.replicas(m)) for m in models))
        return self.meshes[mesh].size, counts

    def copy(self) -> Layout:
        return Layout(self.meshes, [list(h) for h in self.hosted])

    def total(self, evaluator: Evaluator) -> float | None:
        scores = [evaluator.score(self.key(d)) for d in range(len(self.meshes))]
        return None if any(s is None for s in scores) else sum(scores)

    def placed(self) -> set[int]:
        return {m for h in self.hosted for m in h}
