"""Which replicas drop layers and pipeline together: a greedy plan, O(N^2) at worst.

A group of g replicas, each keeping a share of the layers (stage_plan.py), holds `group_capacity(g)`
pages (the freed weights turned into KV, each page now spanning fewer layers on each member). A group is feasible when
its members' demand fits that. The plan works in two passes.

Cover: the most overloaded replica first, partners are added until its group is feasible: the
partner with the least spare that makes it feasible (big spares stay for bigger deficits, and an
overloaded partner is covered in the same group), else the one with the most spare. Groups stay as
small as the deficit now allows, because every member added is one more pipeline hop on every token.

Grow: a group cannot re-split until it restores, and under a burst its members' demand keeps rising
after it forms. So a group whose members' expected demand (`growth_pages` more, from
demand_growth.py) does not fit takes more members, up to `max_group_size`: first replicas no group
took, the one with the most room to spare first, then another group that is short of its expected
demand too (merged whole, so every replica the cover pass covered stays covered). A member or a
merge is added only if the group still holds the demand now. The group most short of its expected
demand goes first (it takes its pick, and the cluster carries out a plan's first group, then plans
again); groups that are not short keep the cover pass's order, so without growth the plan is the
cover pass's. (Refusing a leftover whose own growth leaves the group shorter still was tried: on
the simulated long-answer burst it stopped groups short of four and raised p99 TTFT.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ReplicaDemand:
    name: str
    demand_pages: int  # pages its running and queued requests need
    capacity_pages: int  # pages it holds serving alone
    growth_pages: int = 0  # what its demand is expected to add before a group could re-split

    @property
    def surplus(self) -> int:
        return self.capacity_pages - self.demand_pages

    @property
    def expected_pages(self) -> int:
        return self.demand_pages + self.growth_pages


Capacity = Callable[[int], int]


def plan_groups(replicas: list[ReplicaDemand], group_capacity: Capacity, max_group_size: int) -> list[list[str]]:
    groups, left = _cover(replicas, group_capacity, max_group_size)
    return [[r.name for r in group] for group in _grow(groups, left, group_capacity, max_group_size)]


def _cover(replicas: list[ReplicaDemand], group_capacity: Capacity, max_group_size: int
           ) -> tuple[list[list[ReplicaDemand]], list[ReplicaDemand]]:
    """Groups that hold their members' demand now, and the replicas left out of them."""
    overloaded = sorted((r for r in replicas if r.surplus < 0), key=lambda r: r.surplus)
    spare = sorted((r for r in replicas if r.surplus >= 0), key=lambda r: r.surplus)
    taken: set[str] = set()
    groups = []
    for first in overloaded:
        if first.name in taken:
            continue
        group = [first]
        while _demand(group) > group_capacity(len(group)) and len(group) < max_group_size:
            partner = _best_partner(group, spare, overloaded, taken, group_capacity)
            if partner is None:
                break
            group.append(partner)
            taken.add(partner.name)
        if len(group) > 1 and _demand(group) <= group_capacity(len(group)):
            groups.append(group)
            taken.update(r.name for r in group)
        else:  # no feasible group: hand the partners back for the next deficit
            taken.difference_update(r.name for r in group[1:])
    return groups, [r for r in replicas if r.name not in taken]


def _best_partner(group: list[ReplicaDemand], spare: list[ReplicaDemand], overloaded: list[ReplicaDemand],
                  taken: set[str], group_capacity: Capacity) -> ReplicaDemand | None:
    members = {r.name for r in group}
    candidates = [r for r in spare + overloaded if r.name not in taken and r.name not in members]
    if not candidates:
        return None
    demand = _demand(group)
    fitting = [r for r in candidates if demand + r.demand_pages <= group_capacity(len(group) + 1)]
    if fitting:  # the least spare that closes the group: another overloaded replica covers two at once
        return min(fitting, key=lambda r: r.surplus)
    return max(candidates, key=lambda r: r.surplus)


def _grow(groups: list[list[ReplicaDemand]], left: list[ReplicaDemand], group_capacity: Capacity,
          max_group_size: int) -> list[list[ReplicaDemand]]:
    """Each group, the most short first, takes members while its expected demand does not fit."""
    def shortfall(group: list[ReplicaDemand]) -> int:
        return _expected(group) - group_capacity(len(group))

    # the most short first (it takes its pick of the leftovers, and the cluster carries it out
    # first); groups that are not short keep the cover pass's order: without growth the plan is the cover pass's
    pending = sorted(groups, key=lambda g: max(0, shortfall(g)), reverse=True)
    left = sorted(left, key=lambda r: r.capacity_pages - r.expected_pages, reverse=True)
    grown = []
    while pending:
        group = pending.pop(0)
        while shortfall(group) > 0 and len(group) < max_group_size:
            size = len(group) + 1
            extra = next((r for r in left if _demand(group) + r.demand_pages <= group_capacity(size)), None)
            if extra is not None:
                left.remove(extra)
                group = [*group, extra]
                continue
            mate = next((other for other in pending if shortfall(other) > 0
                         and len(group) + len(other) <= max_group_size
                         and _demand(group) + _demand(other) <= group_capacity(len(group) + len(other))), None)
            if mate is None:
                break
            pending.remove(mate)
            group = [*group, *mate]
        grown.append(group)
    return grown


def _demand(group: list[ReplicaDemand]) -> int:
    return sum(r.demand_pages for r in group)


def _expected(group: list[ReplicaDemand]) -> int:
    return sum(r.expected_pages for r in group)
