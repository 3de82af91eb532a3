"""Parameter drop and restore for a group of replicas (KunServe's cooperative execution).

Drop: every member keeps a contiguous layer range (stage_plan.py picks them), the members' requests'
KV for the layers a member no longer holds is exchanged to the member that does (same page ids, see
layer_kv.py), the other layers' weights and KV arrays are released, and so are the end parts its
stage never uses (the embedding but on the first stage, an untied head but on the last). The members'
pages move to one group owner whose limit is what the freed bytes now hold. From then on every batch
of any member runs through all members in layer order. Restore reverses it: each member pulls the
layers and parts it lacks from the peer holding them, regathers its requests' KV for those layers,
and takes its pages back.

A drop runs while the members' lanes are idle. The KV is copied then, but its modelled transfer is
waited out by the requests it belongs to, one after another over the link, while requests admitted
after the drop run at once (the cluster parks the former: KunServe's live exchange, with the bytes
of a request in transit not counted against the group's pages). A restore first copies the
weights while the group keeps serving (its pages held to what one member holds alone, so that every
member has room for them); only the KV regathered at the switch stalls.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from coserve.elastic.kv_moves import holds_no_pages, move_request, move_waiting
from coserve.elastic.replica import Replica
from coserve.elastic.stage_plan import StageCosts
from coserve.engine.kv_cache_manager import cdiv


@dataclass
class PipelineGroup:
    owner: str  # the page pool owner all members' requests allocate from
    members: list[Replica]
    ranges: list[tuple[int, int]]  # the layers each member keeps, in pipeline order
    next_batch: int = 0  # round-robin over the members' schedulers (one micro-batch each in flight)
    token_budgets: list[int] = field(default_factory=list)  # each member's step budget serving alone
    page_limit: int = 0  # the pages the freed bytes hold (the owner's limit while no restore is under way)
    exchange_s: dict[str, float] = field(default_factory=dict)  # at the drop: request id -> its KV's transfer

    @property
    def stages(self) -> list[tuple[Replica, int, int]]:
        return [(m, start, end) for m, (start, end) in zip(self.members, self.ranges)]

    def holder(self, layer: int) -> Replica:
        return next(m for m, (start, end) in zip(self.members, self.ranges) if start <= layer < end)

    def used_pages(self, member: Replica) -> int:
        return member.kv.num_held_blocks


def share_queue(group: PipelineGroup, member: Replica, pending_aborts: set[str] = frozenset()) -> int:
    """One queue for the group in effect: a member about to start a micro-batch with less than a
    batch's worth of prompt tokens waiting takes the oldest queued requests of the members with the
    longest queues (pages are the group's, so a request may run under any member). Without it, a
    member that drained its own queue sends small micro-batches through the pipeline while a partner
    still has a queue. Requests whose abort waits for their owner's batch stay. Returns how many
    requests moved."""
    budget = member.scheduler.config.max_num_batched_tokens
    queued = 0
    for request in member.scheduler.waiting:  # the queue may be long: count only up to the budget
        queued += request.num_tokens
        if queued >= budget:
            return 0
    moved = 0
    for donor in sorted((m for m in group.members if m is not member), key=lambda m: -m.scheduler.num_waiting):
        taken = []
        for request in donor.scheduler.waiting:
            if queued >= budget:
                break
            if holds_no_pages(donor, request, pending_aborts):
                taken.append(request)
                queued += request.num_tokens
        for request in taken:
            move_waiting(donor, member, request)
        moved += len(taken)
    return moved


def balance_decodes(group: PipelineGroup, member: Replica, decode_cost, pending_aborts: set[str] = frozenset()
                    ) -> int:
    """Even out the micro-batches' decode work (KunServe's decode balance, by predicted cost rather
    than by count). Pages and KV belong to the group, so a decoding request can move from one
    member's scheduler to another's for nothing: every stage already holds its KV. The member about
    to start a micro-batch hands its newest decodes to the partner whose decodes cost least, while
    that lowers the costlier of the two. `decode_cost(rows, context)` is the backend's prediction
    of a micro-batch of `rows` decodes reading `context` cached tokens. A member never takes more
    than its sequence cap. Returns how many moved.

    Only while no member has a queue: with one, the micro-batches fill with prefill (their token
    budgets, or while pages are short their share of the pages: `share_pages`), and moving decodes
    would only change how much prefill each takes."""
    if any(m.scheduler.waiting for m in group.members):
        return 0
    decodes = {m.index: _decodes(m) for m in group.members}
    load = {index: (len(reqs), sum(r.num_computed_tokens for r in reqs)) for index, reqs in decodes.items()}
    cost = {index: decode_cost(*rows_context) for index, rows_context in load.items()}
    mine = [r for r in decodes[member.index] if r.request_id not in pending_aborts]
    partners = [m for m in group.members if m is not member]
    moved = 0
    while mine:
        open_partners = [m for m in partners if m.scheduler.num_running < m.scheduler.config.max_num_seqs]
        if not open_partners:
            break
        dst = min(open_partners, key=lambda m: cost[m.index])
        (rows, context), (dst_rows, dst_context) = load[member.index], load[dst.index]
        tokens = mine[-1].num_computed_tokens
        shrunk, grown = (rows - 1, context - tokens), (dst_rows + 1, dst_context + tokens)
        after = (decode_cost(*shrunk), decode_cost(*grown))
        if max(after) >= max(cost[member.index], cost[dst.index]):
            break
        move_request(member, dst, mine.pop())
        load[member.index], load[dst.index] = shrunk, grown
        cost[member.index], cost[dst.index] = after
        moved += 1
    return moved


def share_pages(group: PipelineGroup, member: Replica) -> None:
    """Cap the pages the micro-batch `member` is about to start may give to queued requests: a 1/g
    share of the group's free pages, after those its members' running prompts still need to finish.
    Micro-batches are formed one at a time; while pages are short, the member that formed first
    admitted every prompt chunk the free pages held, and its partners' micro-batches, formed next,
    found none: one prefill-heavy micro-batch beside decode-only ones holds every lane to its pace
    (KunServe's lookahead spreads pending prefill over the micro-batches for the same reason). The
    pages a running prompt still needs come first, so a prompt admitted in part is never starved by
    later admissions. With pages to spare the share is more than a step's budget admits anyway."""
    needed = sum(_pages_to_finish_prompt(m, r) for m in group.members for r in m.scheduler.running)
    free = member.kv.pool.headroom(group.owner) - needed
    member.scheduler.admission_pages = cdiv(max(0, free), len(group.members))


def _pages_to_finish_prompt(member: Replica, request) -> int:
    """The pages a running request still needs for its known tokens (a decode: one at a page
    boundary)."""
    return member.kv.blocks_needed(request, request.num_tokens - request.num_computed_tokens)


def _decodes(member: Replica) -> list:
    """Its running requests whose next step computes one token (not a prompt, nor a recompute)."""
    return [r for r in member.scheduler.running if r.num_tokens - r.num_computed_tokens == 1]


def exchange_seconds_per_page(member: Replica, kept_layers: int, link_bytes_per_s: float) -> float:
    """At a drop, one of the member's pages crosses the link for every layer it gives up."""
    return (member.spec.num_layers - kept_layers) * member.page_bytes_per_layer / link_bytes_per_s


def layer_split(num_layers: int, num_members: int) -> list[tuple[int, int]]:
    bounds = [round(i * num_layers / num_members) for i in range(num_members + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def request_pages(member: Replica) -> list[int]:
    return [page for table in member.kv.block_tables.values() for page in table]


def stage_costs(replica: Replica) -> StageCosts:
    kept = replica.weight_bytes - replica.spec.num_layers * replica.layer_bytes - sum(replica.part_bytes.values())
    return StageCosts(replica.spec, replica.budget, replica.layer_bytes, replica.page_bytes_per_layer,
                      replica.part_bytes, kept)


def drop(members: list[Replica], link_bytes_per_s: float, ranges: list[tuple[int, int]] | None = None
         ) -> tuple[PipelineGroup, int]:
    """Form a pipeline group over `ranges` (default: even); returns it and the KV bytes exchanged.
    The copy is made here; its time at `link_bytes_per_s` is each request's own to wait out
    (`group.exchange_s`), not a stall of the group."""
    ranges = ranges or layer_split(members[0].spec.num_layers, len(members))
    group = PipelineGroup("+".join(m.name for m in members), members, ranges)
    exchanged = 0
    for member, (start, end) in zip(members, ranges):
        pages = request_pages(member)
        for other, (other_start, other_end) in zip(members, ranges):
            if other is not member:
                exchanged += member.kv_cache.copy_to(other.kv_cache, list(range(other_start, other_end)), pages)
        page_s = exchange_seconds_per_page(member, end - start, link_bytes_per_s)
        for request_id, table in member.kv.block_tables.items():
            if table:
                group.exchange_s[request_id] = len(table) * page_s
    for member, (start, end) in zip(members, ranges):
        for layer in member.held_layers():
            if not start <= layer < end:
                member.drop_layer(layer)
        for part in sorted(member.held_parts() - member.spec.end_parts(start, end)):
            member.drop_part(part)
    # bookkeeping last: if a member dies above, the members are still alone and own their pages
    for member in members:
        _reown(member, member.name, group.owner)
    _split_budgets(group)
    group.page_limit = min(m.pages_for(end - start, m.weight_bytes_held()) for m, (start, end) in zip(members, ranges))
    members[0].kv.pool.set_limit(group.owner, group.page_limit)
    return group, exchanged


def can_restore(group: PipelineGroup) -> bool:
    """Every member's requests fit the pages it holds serving alone."""
    return all(group.used_pages(m) <= m.independent_pages for m in group.members)


def restore_hold_pages(group: PipelineGroup) -> int:
    """The group's page limit while its members pull their weights back: with no more pages than one
    member holds alone, every member has room for all its weights and every page the group uses."""
    return min(m.independent_pages for m in group.members)


def start_restore(group: PipelineGroup, link_bytes_per_s: float) -> float:
    """Hold the group to `restore_hold_pages` while the weights cross (the members keep serving);
    returns the seconds the slowest member's weights take."""
    group.members[0].kv.pool.set_limit(group.owner, restore_hold_pages(group))
    return max(m.weight_bytes - m.weight_bytes_held() for m in group.members) / link_bytes_per_s


def cancel_restore(group: PipelineGroup) -> None:
    group.members[0].kv.pool.set_limit(group.owner, group.page_limit)


def restore(group: PipelineGroup, link_bytes_per_s: float, weights_precopied: bool = False) -> int:
    """Dissolve the group; returns the bytes (weights and KV) pulled from peers. With the weights
    copied while the group served (`start_restore`), only the KV regathered now stalls a member."""
    pulled = 0
    num_layers = group.members[0].spec.num_layers
    for member in group.members:
        pages = request_pages(member)
        for layer in sorted(set(range(num_layers)) - set(member.held_layers())):
            source = group.holder(layer)
            weights = member.restore_layer(layer, source.layer(layer))
            kv = source.kv_cache.copy_to(member.kv_cache, [layer], pages)
            member.stall_s += (kv if weights_precopied else weights + kv) / link_bytes_per_s
            pulled += weights + kv
        for part in sorted(set(member.part_bytes) - member.held_parts()):
            source = next(m for m, start, end in group.stages if part in m.spec.end_parts(start, end))
            weights = member.restore_part(part, source.part(part))
            member.stall_s += 0 if weights_precopied else weights / link_bytes_per_s
            pulled += weights
    dissolve(group)
    return pulled


def dissolve(group: PipelineGroup) -> None:
    """Give every member its requests' pages back under its own name; the group owner holds none."""
    for member in group.members:
        _reown(member, group.owner, member.name)
    for member, budget in zip(group.members, group.token_budgets):
        tune_scheduler(member, max_num_batched_tokens=budget)
        member.scheduler.admission_pages = None
    group.members[0].kv.pool.set_limit(group.owner, 0)


def _split_budgets(group: PipelineGroup) -> None:
    """Each of the g micro-batches gets 1/g of its member's step budget (never below max_num_seqs),
    so that prefill chunks spread over all of them (the queue is shared, see share_queue) and the
    stages stay even: one micro-batch carrying a whole budget of prefill beside decode-only ones
    held every lane of the pipeline to its pace. Over a round, a lane still runs a full budget of
    tokens' worth of layers."""
    group.token_budgets = [m.scheduler.config.max_num_batched_tokens for m in group.members]
    for member, budget in zip(group.members, group.token_budgets):
        # never below a token per sequence: every running decode keeps its place in each step
        tune_scheduler(member, max_num_batched_tokens=max(budget // len(group.members),
                                                          member.scheduler.config.max_num_seqs))


def tune_scheduler(member: Replica, **limits) -> None:
    """Change a member's scheduler limits (its step budget, its sequence cap) while it is grouped."""
    member.scheduler.config = dataclasses.replace(member.scheduler.config, **limits)


def _reown(member: Replica, src: str, dst: str) -> None:
    """Move the member's requests' pages from pool owner `src` to `dst`; it allocates as `dst` from now."""
    for table in member.kv.block_tables.values():
        member.kv.pool.transfer(table, src, dst)
    member.kv.owner = dst
