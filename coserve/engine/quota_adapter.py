"""ADBS's adaptive KV quotas, recomputed every scheduling round from what each model holds and needs.

MuxServe moves quota from under-used models to busy ones every few seconds, by a fixed fraction.
Here quotas are rebuilt from the current state at every round instead, so there is no period and
no step size to tune:

1. a model keeps every page it holds (taking held pages would force preemption and waste work);
2. free pages go to the pages each model's next step needs, the model furthest through its SLO
   budget first (a model missing its TTFT/TPOT target is served before one meeting it), ties by
   the oldest waiting request (first come, first served);
3. what is still free is split by expected demand (request rate x KV bytes per token, MuxServe's
   initial quota rule), so an idle model keeps room for its next arrivals.

A model at its quota preempts its own newest request (recompute) rather than wait for pages it
can never get, so a full pool never deadlocks. Pure function: no clock, no tensors.
"""

from __future__ import annotations

from coserve.engine.model_load import ModelLoad


def adapt_quotas(loads: list[ModelLoad], num_pages: int, demand: dict[str, float],
                 limits: dict[str, int] | None = None) -> dict[str, int]:
    """New quotas; `limits` are fixed caps (configured slices) no quota may exceed."""
    limits = limits or {}
    if len(loads) == 1:  # what the rounds below come to for a lone model, without reading its needs
        (load,) = loads
        return {load.name: min(num_pages, max(load.used_pages, limits.get(load.name, num_pages)))}
    quotas = {load.name: load.used_pages for load in loads}

    def room(name: str) -> int:
        return max(0, limits.get(name, num_pages) - quotas[name])

    free = num_pages - sum(quotas.values())
    for load in sorted(loads, key=lambda load: (-load.slo_pressure, load.oldest_arrival)):
        grant = min(free, load.needed_pages, room(load.name))
        quotas[load.name] += grant
        free -= grant
    while free > 0:  # leftovers by demand; a capped model's share goes to the others
        open_models = {load.name: demand.get(load.name, 0.0) for load in loads if room(load.name) > 0}
        if not open_models:
            break
        for name, pages in split_pages(free, open_models).items():
            grant = min(pages, room(name))
            quotas[name] += grant
            free -= grant
    return quotas


def split_pages(total: int, weights: dict[str, float]) -> dict[str, int]:
    """`total` pages in proportion to `weights` (largest remainder; equal split if all are zero)."""
    if not weights:
        return {}
    weight_sum = sum(weights.values())
    if weight_sum <= 0:
        weights, weight_sum = dict.fromkeys(weights, 1.0), float(len(weights))
    exact = {name: total * w / weight_sum for name, w in weights.items()}
    pages = {name: int(x) for name, x in exact.items()}
    by_remainder = sorted(exact, key=lambda name: exact[name] - pages[name], reverse=True)
    for name in by_remainder[:total - sum(pages.values())]:
        pages[name] += 1
    return pages
