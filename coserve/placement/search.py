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
        self._scores: dict[UnitKey, float | None] = {}

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
        if key not in self._scores:
            estimate = self.unit(key)
            self._scores[key] = None if estimate is None else estimate.score(self.objective)
        return self._scores[key]

    def load(self, key: UnitKey) -> float:
        estimate = self.unit(key) if key[1] else None
        return estimate.load if estimate else 0.0


@dataclass
class Layout:
    """Which models (by index) each mesh of a group holds; a model on several meshes has replicas."""

    meshes: tuple[Mesh, ...]
    hosted: list[list[int]] = field(default_factory=list)
    counts: dict[int, int] = field(default_factory=dict)  # replicas of each placed model

    def __post_init__(self) -> None:
        if not self.hosted:
            self.hosted = [[] for _ in self.meshes]
        self.counts = {}
        for models in self.hosted:
            for m in models:
                self.counts[m] = self.counts.get(m, 0) + 1

        self._keys: dict[int, UnitKey] = {}  # cached plain keys, dropped when a mesh or a replica count changes

    def add(self, mesh: int, model: int) -> None:
        self.hosted[mesh].append(model)
        self.counts[model] = self.counts.get(model, 0) + 1
        self._forget(model, mesh)

    def remove(self, mesh: int, model: int) -> None:
        self.hosted[mesh].remove(model)
        self.counts[model] -= 1
        if not self.counts[model]:
            del self.counts[model]
        self._forget(model, mesh)

    def _forget(self, model: int, mesh: int) -> None:
        self._keys.pop(mesh, None)
        for d, models in enumerate(self.hosted):
            if model in models:
                self._keys.pop(d, None)

    def replicas(self, model: int) -> int:
        return self.counts.get(model, 0)

    def key(self, mesh: int, extra: int | None = None, replicas: dict[int, int] | None = None) -> UnitKey:
        """The unit key of a mesh, optionally with a model added and replica counts overridden."""
        if extra is None and replicas is None:
            if mesh not in self._keys:
                self._keys[mesh] = self._key(mesh, None, None)
            return self._keys[mesh]
        return self._key(mesh, extra, replicas)

    def _key(self, mesh: int, extra: int | None, replicas: dict[int, int] | None) -> UnitKey:
        models = self.hosted[mesh] if extra is None else self.hosted[mesh] + [extra]
        counts = self.counts if replicas is None else {**self.counts, **replicas}
        return self.meshes[mesh].size, tuple(sorted((m, counts.get(m, 1)) for m in models))

    def copy(self) -> Layout:
        return Layout(self.meshes, [list(h) for h in self.hosted])

    def total(self, evaluator: Evaluator) -> float | None:
        scores = [evaluator.score(self.key(d)) for d in range(len(self.meshes))]
        return None if any(s is None for s in scores) else sum(scores)

    def placed(self) -> set[int]:
        return set(self.counts)
