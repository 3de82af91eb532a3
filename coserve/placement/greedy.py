"""MuxServe's placement (Alg. 1): enumerate mesh groups, place models greedily, keep the best group.

Models go in order of computation requirement (rate x weight bytes, from their configs), each onto
the mesh whose unit score rises the most when it joins (ties: the less loaded unit, then the smaller
mesh). Unit scores are kept per mesh position, never re-sorted. Beyond the paper:

- replicas: while a model is not fully served, a copy of it may go onto another mesh (its rate is
  split between copies) when that raises the total score; this also fills meshes left empty;
- local search: the best few groups are polished by moving single models and swapping pairs
  between meshes while the total score rises.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from coserve.errors import ConfigError
from coserve.placement.meshes import Mesh, mesh_groups
from coserve.placement.problem import Problem
from coserve.placement.search import Evaluator, Layout

# Only the best groups after the greedy pass get local search: it costs a few hundred unit estimates
# each, and groups far behind after greedy rarely overtake the leaders.
POLISHED_GROUPS = 4
# Gains smaller than this fraction of the offered rate are noise, not a reason to move a model.
RELATIVE_TOLERANCE = 1e-6
MAX_LOCAL_SEARCH_ROUNDS = 50


def plan_greedy(problem: Problem, evaluator: Evaluator | None = None,
                groups: Iterable[tuple[Mesh, ...]] | None = None) -> Layout:
    """The best layout over all mesh groups; ConfigError naming the models no group could place."""
    evaluator = evaluator or Evaluator(problem)
    order = placement_order(problem)
    finished: list[tuple[float, float, int, Layout]] = []
    failures: Counter[int] = Counter()
    for meshes in groups if groups is not None else mesh_groups(problem.cluster):
        if not worth_trying(meshes, problem):
            continue
        layout, failed = greedy_layout(meshes, order, evaluator)
        if layout is None:
            failures[failed] += 1
            continue
        if problem.settings.replicas:
            add_replicas(layout, evaluator)
        finished.append((layout.total(evaluator), -total_load(layout, evaluator), len(finished), layout))
    if not finished:
        raise ConfigError(unplaceable_message(problem, failures))
    finished.sort(key=lambda item: item[:3], reverse=True)
    best = finished[0][3]
    if problem.settings.local_search:
        polished = [improve(item[3], evaluator) for item in finished[:POLISHED_GROUPS]]
        best = max(polished, key=lambda layout: layout.total(evaluator))
    return best


def placement_order(problem: Problem) -> list[int]:
    """Model indices by computation requirement, then size, descending (stable on ties)."""
    models = problem.models
    return sorted(range(len(models)), key=lambda i: (models[i].computation, models[i].weight_bytes), reverse=True)


def worth_trying(meshes: tuple[Mesh, ...], problem: Problem) -> bool:
    """Some mesh must hold the largest model; without replicas, no mesh may stay empty."""
    largest = max(m.size for m in meshes)
    if largest < max(m.min_mesh for m in problem.models):
        return False
    return problem.settings.replicas or len(meshes) <= len(problem.models)


def greedy_layout(meshes: tuple[Mesh, ...], order: list[int], evaluator: Evaluator) -> tuple[Layout | None, int]:
    """Place each model where it adds the most; (None, model) when some model fits nowhere."""
    layout = Layout(meshes)
    scores = [0.0] * len(meshes)
    for model in order:
        choice = best_mesh(layout, model, scores, evaluator)
        if choice is None:
            return None, model
        mesh, score = choice
        layout.hosted[mesh].append(model)
        scores[mesh] = score
    return layout, -1


def best_mesh(layout: Layout, model: int, scores: list[float], evaluator: Evaluator) -> tuple[int, float] | None:
    tolerance = RELATIVE_TOLERANCE * total_rate(evaluator)
    best, best_rank = None, None
    seen = set()
    for d, mesh in enumerate(layout.meshes):
        if not evaluator.can_host(evaluator.problem.models[model], mesh.size):
            continue
        signature = layout.key(d)
        if signature in seen:  # an identical unit elsewhere gives the identical result
            continue
        seen.add(signature)
        key = layout.key(d, extra=model)
        score = evaluator.score(key)
        if score is None:
            continue
        rank = (round((score - scores[d]) / tolerance), -evaluator.load(key), -mesh.size)
        if best_rank is None or rank > best_rank:
            best, best_rank = (d, score), rank
    return best


def add_replicas(layout: Layout, evaluator: Evaluator) -> None:
    """Add the copy that raises the total score the most, while one does by more than the tolerance."""
    tolerance = RELATIVE_TOLERANCE * total_rate(evaluator)
    while True:
        best_gain, best_move = tolerance, None
        for model in underserved(layout, evaluator):
            for mesh in candidate_meshes(layout, model, evaluator):
                gain = replica_gain(layout, model, mesh, evaluator)
                if gain is not None and gain > best_gain:
                    best_gain, best_move = gain, (model, mesh)
        if best_move is None:
            return
        model, mesh = best_move
        layout.hosted[mesh].append(model)


def underserved(layout: Layout, evaluator: Evaluator) -> list[int]:
    """Models whose estimated score (served rate or goodput) falls short of their rate."""
    got = model_scores(layout, evaluator)
    models = evaluator.problem.models
    return [i for i in sorted(got) if got[i] < models[i].rate * (1 - RELATIVE_TOLERANCE)]


def model_scores(layout: Layout, evaluator: Evaluator) -> dict[int, float]:
    got: dict[int, float] = {}
    for d in range(len(layout.meshes)):
        key = layout.key(d)
        estimate = evaluator.unit(key) if key[1] else None
        for member in estimate.members if estimate else ():
            value = member.served if evaluator.objective == "throughput" else member.rate * member.slo_attainment
            got[member.model.index] = got.get(member.model.index, 0.0) + value
    return got


def candidate_meshes(layout: Layout, model: int, evaluator: Evaluator) -> list[int]:
    """Meshes that could take a copy of `model`, one per distinct unit."""
    seen, out = set(), []
    spec = evaluator.problem.models[model]
    for d, mesh in enumerate(layout.meshes):
        if model in layout.hosted[d] or not evaluator.can_host(spec, mesh.size):
            continue
        signature = layout.key(d)
        if signature not in seen:
            seen.add(signature)
            out.append(d)
    return out


def replica_gain(layout: Layout, model: int, mesh: int, evaluator: Evaluator) -> float | None:
    """Change of the total score when `model` gains a copy on `mesh` (its other copies get less rate)."""
    replicas = {model: layout.replicas(model) + 1}
    affected = [d for d, hosted in enumerate(layout.hosted) if model in hosted]
    before = sum(evaluator.score(layout.key(d)) for d in affected + [mesh])
    after = [evaluator.score(layout.key(d, replicas=replicas)) for d in affected]
    after.append(evaluator.score(layout.key(mesh, extra=model, replicas=replicas)))
    return None if any(s is None for s in after) else sum(after) - before


def improve(layout: Layout, evaluator: Evaluator) -> Layout:
    """Local search: apply the best improving move or swap until none improves the total."""
    layout = layout.copy()
    tolerance = RELATIVE_TOLERANCE * total_rate(evaluator)
    for _ in range(MAX_LOCAL_SEARCH_ROUNDS):
        gain, move = best_move(layout, evaluator)
        if move is None or gain <= tolerance:
            break
        for model, source, target in move:
            layout.hosted[source].remove(model)
        for model, source, target in move:
            layout.hosted[target].append(model)
    return layout


def best_move(layout: Layout, evaluator: Evaluator) -> tuple[float, list[tuple[int, int, int]] | None]:
    """The best single relocation or pairwise swap: (gain, [(model, from mesh, to mesh), ...])."""
    best_gain, best = 0.0, None
    pairs = [(m, d) for d, hosted in enumerate(layout.hosted) for m in hosted]
    for move in relocations(layout, pairs, evaluator) + swaps(pairs, layout, evaluator):
        gain = move_gain(layout, move, evaluator)
        if gain is not None and gain > best_gain:
            best_gain, best = gain, move
    return best_gain, best


def relocations(layout: Layout, pairs: list[tuple[int, int]], evaluator: Evaluator) -> list[list[tuple[int, int, int]]]:
    models = evaluator.problem.models
    return [[(m, d, e)] for m, d in pairs for e, mesh in enumerate(layout.meshes)
            if e != d and m not in layout.hosted[e] and evaluator.can_host(models[m], mesh.size)]


def swaps(pairs: list[tuple[int, int]], layout: Layout, evaluator: Evaluator) -> list[list[tuple[int, int, int]]]:
    models = evaluator.problem.models
    out = []
    for i, (m, d) in enumerate(pairs):
        for n, e in pairs[i + 1:]:
            if d == e or m in layout.hosted[e] or n in layout.hosted[d]:
                continue
            if evaluator.can_host(models[m], layout.meshes[e].size) and evaluator.can_host(models[n],
                                                                                            layout.meshes[d].size):
                out.append([(m, d, e), (n, e, d)])
    return out


def move_gain(layout: Layout, move: list[tuple[int, int, int]], evaluator: Evaluator) -> float | None:
    touched = sorted({d for _, source, target in move for d in (source, target)})
    before = sum(evaluator.score(layout.key(d)) for d in touched)
    trial = layout.copy()
    for model, source, _ in move:
        trial.hosted[source].remove(model)
    for model, _, target in move:
        trial.hosted[target].append(model)
    after = [evaluator.score(trial.key(d)) for d in touched]
    return None if any(s is None for s in after) else sum(after) - before


def total_rate(evaluator: Evaluator) -> float:
    return sum(m.rate for m in evaluator.problem.models)


def total_load(layout: Layout, evaluator: Evaluator) -> float:
    return sum(evaluator.load(layout.key(d)) for d in range(len(layout.meshes)))


def unplaceable_message(problem: Problem, failures: Counter[int]) -> str:
    names = [problem.models[i].name for i, _ in failures.most_common(3)]
    return (f"no mesh group of {problem.cluster.nodes} x {problem.cluster.gpus_per_node} {problem.cluster.hw.name} "
            f"holds every model; could not place {', '.join(repr(n) for n in names) or 'any model'} "
            "(memory: weights, reserves and one request's KV per model)")
