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

# Only the most promising groups after the greedy pass get replicas, and the best of those local
# search: both cost hundreds of unit estimates per group, and groups far behind after greedy rarely
# overtake the leaders (on the paper's set-up the winner is among the first few).
REPLICATED_GROUPS = 16
POLISHED_GROUPS = 8
# Gains smaller than this fraction of the offered rate are noise, not a reason to move a model.
RELATIVE_TOLERANCE = 1e-6
MAX_LOCAL_SEARCH_ROUNDS = 50
# A copy costs memory and a slice of a mesh: it must add at least 1% of its model's rate, below
# which gains are within the estimate's own error.
REPLICA_MIN_GAIN = 0.01
SATURATED = 0.999  # a unit this loaded has no room for another replica


def plan_greedy(problem: Problem, evaluator: Evaluator | None = None,
                groups: Iterable[tuple[Mesh, ...]] | None = None) -> Layout:
    """The best layout over all mesh groups; ConfigError naming the models no group could place.

    Every group gets the greedy pass in MuxServe's order. The most promising groups are also tried
    in the other orders and get the replica pass; the spatial baseline's layout joins them as one
    more start, so the result is never worse than it; the best few get local search.
    """
    evaluator = evaluator or Evaluator(problem)
    orders = placement_orders(problem)
    finished: list[tuple[float, int, Layout, int]] = []  # (promise, tie-break, layout, order used)
    failures: Counter[int] = Counter()
    for meshes in groups if groups is not None else mesh_groups(problem.cluster):
        if not worth_trying(meshes, problem):
            continue
        for used, order in enumerate(orders):  # the next order only where the previous one fails
            layout, failed = greedy_layout(meshes, order, evaluator)
            if layout is not None:
                finished.append((promise(layout, evaluator), len(finished), layout, used))
                break
            failures[failed] += 1
    if not finished:
        raise ConfigError(unplaceable_message(problem, failures))
    finished.sort(key=lambda item: item[:2], reverse=True)
    candidates = [item[2] for item in finished[:REPLICATED_GROUPS]]
    for _, _, layout, used in finished[:REPLICATED_GROUPS]:
        retries = (greedy_layout(layout.meshes, order, evaluator)[0] for order in orders[used + 1:])
        candidates.extend(retry for retry in retries if retry is not None)
    candidates.extend(baseline_starts(problem, evaluator))
    if problem.settings.replicas:
        for layout in candidates:
            add_replicas(layout, evaluator)
    candidates.sort(key=lambda layout: (layout.total(evaluator), -total_load(layout, evaluator)), reverse=True)
    if problem.settings.local_search:
        candidates[:POLISHED_GROUPS] = [improve(layout, evaluator) for layout in candidates[:POLISHED_GROUPS]]
    return max(candidates, key=lambda layout: layout.total(evaluator))


def baseline_starts(problem: Problem, evaluator: Evaluator) -> list[Layout]:
    """The spatial baseline's layout (when it fits) as a start: local search may then colocate."""
    from coserve.placement.baselines import plan_spatial  # baselines import this module's helpers

    if not problem.settings.replicas:
        return []  # spatial layouts may hold replicas, outside the search space without them
    try:
        return [plan_spatial(problem, evaluator)]
    except ConfigError:
        return []


def promise(layout: Layout, evaluator: Evaluator) -> float:
    """Score after the greedy pass, plus (when replicas may follow) the unmet rate in proportion to the
    GPUs left idle: a group with empty meshes can still serve more."""
    score = layout.total(evaluator)
    if not evaluator.problem.settings.replicas:
        return score
    idle = sum(mesh.size for mesh, models in zip(layout.meshes, layout.hosted) if not models)
    unmet = max(0.0, total_rate(evaluator) - score)
    return score + unmet * idle / evaluator.problem.cluster.num_gpus


def placement_orders(problem: Problem) -> list[list[int]]:
    """Model indices by computation requirement (MuxServe's order), and, as second opinions, by
    size (bin packing's largest first) and by rate; duplicates dropped."""
    models = problem.models
    keys = [lambda m: (m.computation, m.weight_bytes), lambda m: (m.weight_bytes, m.rate),
            lambda m: (m.rate, m.weight_bytes)]
    orders: list[list[int]] = []
    for key in keys:
        order = sorted(range(len(models)), key=lambda i: key(models[i]), reverse=True)
        if order not in orders:
            orders.append(order)
    return orders


def worth_trying(meshes: tuple[Mesh, ...], problem: Problem) -> bool:
    """Some mesh must hold the largest model; without replicas, no more meshes than models (or nodes,
    when there are fewer models than nodes: every group then has a mesh per node)."""
    largest = max(m.size for m in meshes)
    if largest < max(m.min_mesh for m in problem.models):
        return False
    return problem.settings.replicas or len(meshes) <= max(len(problem.models), problem.cluster.nodes)


def greedy_layout(meshes: tuple[Mesh, ...], order: list[int], evaluator: Evaluator) -> tuple[Layout | None, int]:
    """Place each model where it adds the most, then copies of those one mesh cannot serve;
    (None, model) when some model fits nowhere."""
    layout = Layout(meshes)
    scores = [0.0] * len(meshes)
    for model in order:
        choice = best_mesh(layout, model, scores, evaluator)
        if choice is None:
            return None, model
        mesh, score = choice
        layout.add(mesh, model)
        scores[mesh] = score
    if evaluator.problem.settings.replicas:  # only once every model has its first copy: never at their expense
        for model in order:
            replicate(layout, model, evaluator)
    return layout, -1


def replicate(layout: Layout, model: int, evaluator: Evaluator) -> None:
    """Copies of a model that one mesh cannot serve, while each adds REPLICA_MIN_GAIN of its rate."""
    threshold = REPLICA_MIN_GAIN * evaluator.problem.models[model].rate
    while model in underserved(layout, evaluator, [model]):
        gains = [(replica_gain(layout, model, d, evaluator), d) for d in candidate_meshes(layout, model, evaluator)]
        gains = [(g, d) for g, d in gains if g is not None and g > threshold]
        if not gains:
            return
        layout.add(max(gains)[1], model)


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
                if gain is not None and gain > max(best_gain, REPLICA_MIN_GAIN * evaluator.problem.models[model].rate):
                    best_gain, best_move = gain, (model, mesh)
        if best_move is None:
            return
        model, mesh = best_move
        layout.add(mesh, model)


def underserved(layout: Layout, evaluator: Evaluator, among: list[int] | None = None) -> list[int]:
    """Models whose estimated score (served rate or goodput) falls short of their rate."""
    got = model_scores(layout, evaluator, among)
    models = evaluator.problem.models
    return [i for i in sorted(got) if got[i] < models[i].rate * (1 - RELATIVE_TOLERANCE)]


def model_scores(layout: Layout, evaluator: Evaluator, among: list[int] | None = None) -> dict[int, float]:
    got: dict[int, float] = {}
    for d in range(len(layout.meshes)):
        if among is not None and not any(m in layout.hosted[d] for m in among):
            continue
        key = layout.key(d)
        estimate = evaluator.unit(key) if key[1] else None
        for member in estimate.members if estimate else ():
            value = member.served if evaluator.objective == "throughput" else member.rate * member.slo_attainment
            got[member.model.index] = got.get(member.model.index, 0.0) + value
    return got


def candidate_meshes(layout: Layout, model: int, evaluator: Evaluator) -> list[int]:
    """Meshes with room that could take a copy of `model`, one per distinct unit."""
    seen, out = set(), []
    spec = evaluator.problem.models[model]
    for d, mesh in enumerate(layout.meshes):
        if model in layout.hosted[d] or not evaluator.can_host(spec, mesh.size):
            continue
        signature = layout.key(d)
        if evaluator.load(signature) >= SATURATED:  # a full unit only reshuffles what it serves
            continue
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
        apply_move(layout, move)
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
    apply_move(trial, move)
    after = [evaluator.score(trial.key(d)) for d in touched]
    return None if any(s is None for s in after) else sum(after) - before


def apply_move(layout: Layout, move: list[tuple[int, int, int]]) -> None:
    for model, source, _ in move:
        layout.remove(source, model)
    for model, _, target in move:
        layout.add(target, model)


def total_rate(evaluator: Evaluator) -> float:
    return sum(m.rate for m in evaluator.problem.models)


def total_load(layout: Layout, evaluator: Evaluator) -> float:
    return sum(evaluator.load(layout.key(d)) for d in range(len(layout.meshes)))


def unplaceable_message(problem: Problem, failures: Counter[int]) -> str:
    names = [problem.models[i].name for i, _ in failures.most_common(3)]
    return (f"no mesh group of {problem.cluster.nodes} x {problem.cluster.gpus_per_node} {problem.cluster.hw.name} "
            f"holds every model; could not place {', '.join(repr(n) for n in names) or 'any model'} "
            "(memory: weights, reserves and one request's KV per model)")
