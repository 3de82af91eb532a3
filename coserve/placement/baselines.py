"""The baselines `coserve plan` compares against, scored with the same unit estimate.

- spatial: every model on GPUs of its own. Each starts on its smallest mesh; spare GPUs then go,
  one decision at a time, to the model whose served rate rises most per GPU, by doubling one of its
  meshes or adding a replica. Stronger than the paper's fixed sizes (7B/13B on 1, 30B on 4, 65B on 8).
- memory-greedy (MuxServe's ablation baseline): models by (smallest mesh, computation) descending,
  each onto the mesh with the most free memory per GPU, where a fresh mesh is carved from idle GPUs
  at the smallest size that serves the model's rate alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from coserve.errors import ConfigError
from coserve.placement.greedy import RELATIVE_TOLERANCE, total_rate
from coserve.placement.meshes import Mesh
from coserve.placement.problem import ModelDemand, Problem
from coserve.placement.search import Evaluator, Layout


@dataclass
class Carving:
    """Meshes cut from nodes one at a time: (node, first local GPU, size) each, plus idle GPUs per node."""

    gpus_per_node: int
    free: list[int]
    pieces: list[tuple[int, int, int]]

    @classmethod
    def empty(cls, problem: Problem) -> Carving:
        c = problem.cluster
        return cls(c.gpus_per_node, [c.gpus_per_node] * c.nodes, [])

    def fits(self, sizes: list[int]) -> bool:
        """Whether meshes of `sizes` could all be cut from the idle GPUs (largest first, first fit)."""
        free = list(self.free)
        for size in sorted(sizes, reverse=True):
            node = next((n for n, f in enumerate(free) if f >= size), None)
            if node is None:
                return False
            free[node] -= size
        return True

    def cut(self, size: int) -> int:
        """Carve a mesh from the fullest node that has room; returns its position in `pieces`."""
        candidates = [n for n, f in enumerate(self.free) if f >= size]
        node = min(candidates, key=lambda n: (self.free[n], n))
        self.pieces.append((node, self.gpus_per_node - self.free[node], size))
        self.free[node] -= size
        return len(self.pieces) - 1

    def meshes(self) -> tuple[Mesh, ...]:
        return tuple(Mesh(i, node, tuple(range(node * self.gpus_per_node + first,
                                               node * self.gpus_per_node + first + size)))
                     for i, (node, first, size) in enumerate(self.pieces))


def plan_spatial(problem: Problem, evaluator: Evaluator | None = None) -> Layout:
    evaluator = evaluator or Evaluator(problem)
    models = problem.models
    sizes = {m.index: [m.min_mesh] for m in models}  # mesh sizes of each model's replicas
    need = sum(m.min_mesh for m in models)
    if not Carving.empty(problem).fits([s for v in sizes.values() for s in v]):
        raise ConfigError(f"spatial partitioning needs {need} GPUs (one smallest mesh per model) but the cluster "
                          f"has {problem.cluster.num_gpus} in nodes of {problem.cluster.gpus_per_node}")
    tolerance = RELATIVE_TOLERANCE * total_rate(evaluator)
    while True:
        best = None
        for m in models:
            for option, extra in _spatial_options(sizes[m.index], m, problem, evaluator):
                trial = {**sizes, m.index: option}
                if not Carving.empty(problem).fits([s for v in trial.values() for s in v]):
                    continue
                gain = (_alone_score(m.index, option, evaluator) - _alone_score(m.index, sizes[m.index], evaluator))
                if gain > tolerance and (best is None or gain / extra > best[0]):
                    best = (gain / extra, m.index, option)
        if best is None:
            break
        sizes[best[1]] = best[2]
    return _spatial_layout(problem, sizes)


def _spatial_options(current: list[int], model: ModelDemand, problem: Problem,
                     evaluator: Evaluator) -> list[tuple[list[int], int]]:
    """(new replica sizes, extra GPUs): double the smallest mesh where the model can be split that
    way (its heads divide by the tensor degree), or add a smallest-size replica."""
    out = [(current + [model.min_mesh], model.min_mesh)]
    smallest = min(current)
    if smallest * 2 <= problem.cluster.gpus_per_node and evaluator.can_host(model, smallest * 2):
        grown = sorted(current)
        grown[0] = smallest * 2
        out.append((grown, smallest))
    return out


def _alone_score(model: int, sizes: list[int], evaluator: Evaluator) -> float:
    replicas = len(sizes)
    scores = [evaluator.score((size, ((model, replicas),))) for size in sizes]
    return sum(s for s in scores if s is not None)


def _spatial_layout(problem: Problem, sizes: dict[int, list[int]]) -> Layout:
    carving = Carving.empty(problem)
    owners = []
    for model, size in sorted(((m, s) for m, v in sizes.items() for s in v), key=lambda p: -p[1]):
        carving.cut(size)
        owners.append(model)
    layout = Layout(carving.meshes())
    for mesh, model in enumerate(owners):
        layout.add(mesh, model)
    return layout


def plan_memory_greedy(problem: Problem, evaluator: Evaluator | None = None) -> Layout:
    evaluator = evaluator or Evaluator(problem)
    models = problem.models
    order = sorted(range(len(models)), key=lambda i: (models[i].min_mesh, models[i].computation), reverse=True)
    carving = Carving.empty(problem)
    hosted: list[list[int]] = []
    for model in order:
        options = [(_free_per_gpu(hosted[d] + [model], piece[2], evaluator), d)
                   for d, piece in enumerate(carving.pieces)
                   if evaluator.can_host(models[model], piece[2])
                   and evaluator.score((piece[2], tuple((m, 1) for m in sorted(hosted[d] + [model])))) is not None]
        size = _carve_size(model, carving, evaluator)
        if size is not None:
            options.append((_free_per_gpu([model], size, evaluator), -1))
        if not options:
            raise ConfigError(f"memory-greedy placement could not place model {models[model].name!r}: no mesh "
                              "has room for its weights, reserves and one request's KV")
        _, d = max(options)
        if d == -1:
            carving.cut(size)
            hosted.append([model])
        else:
            hosted[d].append(model)
    return Layout(carving.meshes(), hosted)


def _carve_size(model: int, carving: Carving, evaluator: Evaluator) -> int | None:
    """Smallest mesh size that can be cut now and serves the model's whole rate alone (else the largest)."""
    spec = evaluator.problem.models[model]
    sizes = [s for s in evaluator.problem.cluster.mesh_sizes() if evaluator.can_host(spec, s) and carving.fits([s])]
    for size in sizes:
        estimate = evaluator.unit((size, ((model, 1),)))
        if estimate is not None and estimate.throughput >= spec.rate * (1 - RELATIVE_TOLERANCE):
            return size
    return sizes[-1] if sizes else None


def _free_per_gpu(models: list[int], size: int, evaluator: Evaluator) -> float:
    usable = evaluator.problem.cluster.usable_bytes_per_gpu
    return usable - sum(evaluator.on_mesh(m, size).weight_bytes + evaluator.on_mesh(m, size).reserve_bytes
                        for m in models)
