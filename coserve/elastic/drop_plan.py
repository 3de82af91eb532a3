"""Which replicas drop layers and pipeline together: a greedy plan in O(N log N).

A group of g replicas, each keeping a share of the layers (stage_plan.py), holds `group_capacity(g)`
pages (the freed weights turned into KV, each page now spanning fewer layers on each member). A group is feasible when
its members' demand fits that. The plan covers the most overloaded replica first, adding partners until
its group is feasible: the partner with the least spare that makes it feasible (big spares stay for
bigger deficits, and an overloaded partner is covered in the same group), else the one with the most
spare. Groups stay as small as the deficit allows,
because every member added is one more pipeline hop on every token.

A group cannot re-split until it restores, so its size is chosen for the demand its members'
requests are expected to reach (`headroom_pages`, from demand_growth.py): partners are added while
that does not fit. Whether a group forms at all is still decided by the demand now: a group that holds what its
members need now helps at once, even if it will not hold all the growth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ReplicaDemand:
    name: str
    demand_pages: int  # pages its running and queued requests need
    capacity_pages: int  # pages it holds serving alone
    headroom_pages: int = 0  # what its demand is expected to add before a group could re-split

    @property
    def surplus(self) -> int:
        return self.capacity_pages - self.demand_pages

    @property
    def expected_pages(self) -> int:
        return self.demand_pages + self.headroom_pages


def plan_groups(replicas: list[ReplicaDemand], group_capacity: Callable[[int], int],
                max_group_size: int) -> list[list[str]]:
    overloaded = sorted((r for r in replicas if r.surplus < 0), key=lambda r: r.surplus)
    spare = sorted((r for r in replicas if r.surplus >= 0), key=lambda r: r.surplus)
    taken: set[str] = set()
    groups = []
    for first in overloaded:
        if first.name in taken:
            continue
        group = [first]
        while sum(r.expected_pages for r in group) > group_capacity(len(group)) and len(group) < max_group_size:
            partner = _best_partner(group, spare, overloaded, taken, group_capacity)
            if partner is None:
                break
            group.append(partner)
            taken.add(partner.name)
        if len(group) > 1 and sum(r.demand_pages for r in group) <= group_capacity(len(group)):
            groups.append([r.name for r in group])
            taken.update(r.name for r in group)
        else:  # no feasible group: hand the partners back for the next deficit
            taken.difference_update(r.name for r in group[1:])
    return groups


def _best_partner(group: list[ReplicaDemand], spare: list[ReplicaDemand], overloaded: list[ReplicaDemand],
                  taken: set[str], group_capacity: Callable[[int], int]) -> ReplicaDemand | None:
    members = {r.name for r in group}
    candidates = [r for r in spare + overloaded if r.name not in taken and r.name not in members]
    if not candidates:
        return None
    expected = sum(r.expected_pages for r in group)
    fitting = [r for r in candidates if expected + r.expected_pages <= group_capacity(len(group) + 1)]
    if fitting:  # the least spare that closes the group: another overloaded replica covers two at once
        return min(fitting, key=lambda r: r.surplus)
    return max(candidates, key=lambda r: r.surplus)
