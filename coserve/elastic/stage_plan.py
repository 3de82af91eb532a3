"""How a pipeline group splits a model's layers among its members: enough pages first, then even stages.

Members are not alike once they drop what their stage never uses (ModelSpec.end_parts): the first keeps
the embedding, the last the LM head (and the embedding too when they are tied), the middle ones
neither. The last also runs the head's matmul on every row it samples, which for a small model is
several layers' worth of work (SmolLM2: 28M head weights against 3.5M per layer). So an even split of
the layers is neither the one that holds the most pages nor the one whose stages take equal time.

A split is a layer count per member, in pipeline order. Member i holding k layers has
(budget - k * layer_bytes - its parts' bytes) // (k * page_bytes_per_layer) pages of room, and the
group holds the least of these; its stage costs k * layer_cost + its head cost. `max_pages` is the
most pages any split gives; `plan_ranges` takes the cheapest slowest-stage among the splits that hold
the pages asked for (the group's demand, or the most there are). Both are exact: for a page target P
member i can keep at most floor((budget - parts_i) / (layer_bytes + P * page_bytes_per_layer)) layers,
and any counts under those caps that add up to the model's layers hold P pages (the tests compare
both with every split of small models).

Costs are in weights touched per sampled row, the decode shape: the pages a drop frees are filled by
requests that then spend most of their steps decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

from coserve.execution.models.spec import ModelSpec


@dataclass(frozen=True)
class StageCosts:
    spec: ModelSpec
    budget: int  # bytes per member: its weights plus its KV
    layer_bytes: int
    page_bytes_per_layer: int
    part_bytes: dict[str, int]  # each end part's bytes
    kept_bytes: int = 0  # weights every member keeps whatever its layers (the final norm)

    @property
    def layer_cost(self) -> int:
        return self.spec.layer_params()

    def position_bytes(self, position: int, size: int) -> int:
        """Bytes besides its layers that the member at `position` of a group of `size` keeps."""
        last = self.spec.num_layers
        start, end = (0 if position == 0 else 1), (last if position == size - 1 else last - 1)
        if size == 1:
            start, end = 0, last
        return self.kept_bytes + sum(self.part_bytes[p] for p in self.spec.end_parts(start, end))

    def position_cost(self, position: int, size: int) -> int:
        """The head's matmul on the last stage; the embedding is a lookup and costs next to nothing."""
        return self.spec.vocab_size * self.spec.hidden_size if position == size - 1 else 0

    def max_layers(self, position: int, size: int, pages: int) -> int:
        """The most layers the member can keep and still hold `pages` pages."""
        room = self.budget - self.position_bytes(position, size)
        return max(0, room // (self.layer_bytes + pages * self.page_bytes_per_layer))

    def pages(self, position: int, size: int, num_layers: int) -> int:
        room = self.budget - num_layers * self.layer_bytes - self.position_bytes(position, size)
        return max(0, room // (num_layers * self.page_bytes_per_layer))


def _caps(costs: StageCosts, size: int, pages: int) -> list[int] | None:
    """Each member's most layers at `pages`, or None when no split holds that many."""
    num_layers = costs.spec.num_layers
    caps = [min(costs.max_layers(i, size, pages), num_layers - size + 1) for i in range(size)]
    return caps if min(caps) >= 1 and sum(caps) >= num_layers else None


def max_pages(costs: StageCosts, size: int) -> int:
    """The most pages a group of `size` members holds, over every split (0 if none fits)."""
    if size > costs.spec.num_layers or _caps(costs, size, 1) is None:
        return 0
    low, high = 1, max(1, costs.budget // costs.page_bytes_per_layer)
    while low < high:  # the largest page count some split still holds
        mid = (low + high + 1) // 2
        low, high = (mid, high) if _caps(costs, size, mid) is not None else (low, mid - 1)
    return low


def plan_ranges(costs: StageCosts, size: int, pages_wanted: int) -> list[tuple[int, int]]:
    """Layer ranges in pipeline order: the least slowest-stage cost among the splits that hold
    min(pages_wanted, max_pages) pages. ValueError if no split of the model over `size` fits."""
    num_layers = costs.spec.num_layers
    best = max_pages(costs, size)
    if best == 0:
        raise ValueError(f"no split of {num_layers} layers over {size} members fits the budget")
    counts = _caps(costs, size, max(1, min(pages_wanted, best)))
    fixed = [costs.position_cost(i, size) for i in range(size)]
    # From every member at its cap, take a layer off the slowest stage until the layers add up. No
    # split is faster: one whose slowest stage beat this would keep fewer layers on the member slowest
    # here, so more on another, which then runs slower than this split's slowest stage once did.
    while sum(counts) > num_layers:
        slowest = max((i for i in range(size) if counts[i] > 1), key=lambda i: counts[i] * costs.layer_cost + fixed[i])
        counts[slowest] -= 1
    bounds = [0]
    for count in counts:
        bounds.append(bounds[-1] + count)
    return list(zip(bounds[:-1], bounds[1:]))
