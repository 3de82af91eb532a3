"""Replicas of one model behind a router, with an overload strategy: the controller's loop.

One thread drives every replica's lane: it starts a batch on each idle lane, waits for any lane to
finish, applies sampled tokens, and between rounds lets the strategy act (swap requests in, migrate
one, or drop and restore layers). A replica inside a pipeline group starts no batch of its own; the
group's first member starts each member's micro-batch in turn and every stage hands its hidden states
to the next member's lane, so with g members up to g micro-batches are in flight.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from coserve.elastic import kv_moves, memory_source, pipeline
from coserve.elastic.backend import ProcessBackend
from coserve.elastic.demand_growth import OutputLengths, growth_pages
from coserve.elastic.drop_plan import ReplicaDemand, plan_groups
from coserve.elastic.replica import Replica
from coserve.elastic.router import freeness, pick_replica, queued_pages
from coserve.elastic.stage_plan import max_pages, plan_ranges
from coserve.engine.block_pool import BlockPool
from coserve.engine.config import EngineConfig
from coserve.engine.outputs import CompletionOutput, RequestOutput
from coserve.engine.request import RequestStatus
from coserve.engine.scheduler import SchedulerOutput
from coserve.errors import ConfigError, InvalidRequestError, OutOfCapacityError, UnknownModelError
from coserve.execution.lane import LaneError
from coserve.sampling_params import SamplingParams
from coserve.validation import is_count, is_finite_number, whole_number

logger = logging.getLogger(__name__)

STRATEGIES = ("recompute", "swap", "migrate", "drop", "auto")


@dataclass
class ElasticConfig:
    strategy: str = "drop"
    num_replicas: int = 2
    memory_budget_bytes: int = 1 << 30  # per replica: its weights plus its KV
    host_bytes_per_s: float = 25e9  # the host link swaps cross (PCIe 4.0 x16)
    peer_bytes_per_s: float = 25e9  # between replicas: migration, exchange, restore
    max_group_size: int = 2
    restore_below: float = 0.5  # restore when the group's pages fall under this share of one member's
    # own pages; far below the drop point, so a group does not flap
    # at a drop, recompute the running requests whose re-prefill is predicted to add less waiting than
    # exchanging their KV (memory_source.recompute_instead_of_exchange). Off: every request is exchanged,
    # which kept p99 TTFT lowest in six of seven simulated cases (benchmarks/exchange_or_recompute.py);
    # on slow links the choice trades that for a lower p99 TPOT
    recompute_if_cheaper: bool = False
    balance_decodes: bool = True  # even the micro-batches' decode cost within a group (pipeline.balance_decodes)
    share_pages: bool = True  # a group queue takes at most 1/g of the free pages per micro-batch (pipeline.share_pages)
    # size groups for the demand expected once the present requests reach the mean output length
    # (demand_growth.py); off: for the demand now
    plan_for_growth: bool = True
    # that mean, from the deployment's history; None: the mean of the requests finished so far
    expected_output_tokens: float | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {list(STRATEGIES)}, got {self.strategy!r}")
        if whole_number(self.memory_budget_bytes) is not None:  # 8e9 is a fine number of bytes
            self.memory_budget_bytes = whole_number(self.memory_budget_bytes)
        for name, least in (("num_replicas", 1), ("memory_budget_bytes", 1), ("max_group_size", 2)):
            value = getattr(self, name)
            if not is_count(value) or value < least:
                raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}")
            setattr(self, name, int(value))
        for name in ("host_bytes_per_s", "peer_bytes_per_s"):
            value = getattr(self, name)
            if not (is_finite_number(value) and value > 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
        if not (is_finite_number(self.restore_below) and 0 < self.restore_below < 1):
            raise ConfigError(f"restore_below must be in (0, 1), got {self.restore_below!r}")
        for name in ("recompute_if_cheaper", "balance_decodes", "share_pages", "plan_for_growth"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        expected = self.expected_output_tokens
        if expected is not None and not (is_finite_number(expected) and expected > 0):
            raise ConfigError(f"expected_output_tokens must be a finite number > 0 or null, got {expected!r}")


@dataclass
class Flight:
    """One batch of one replica's scheduler, moving through its stages (one stage when alone)."""

    engine: Replica
    out: SchedulerOutput
    batch: Any  # what the engine prepared from `out` (see Replica.prepare)
    stages: list[tuple[Replica, int, int]]
    started: float = 0.0
    stall_s: float = 0.0  # a modelled transfer its first stage absorbed (not compute)
    stage: int = 0
    hidden: Any = None  # the previous stage's output


@dataclass
class Transition:
    """A drop or restore under way. A restore's weights cross while the group serves (`ready_at`);
    then, as a drop does at once, it waits for the members' lanes to be idle."""

    kind: str  # "drop" or "restore"
    members: list[Replica]
    group: pipeline.PipelineGroup | None = None
    ready_at: float = 0.0


@dataclass
class Events:
    """What the strategy did, with times (the benchmark's timeline)."""

    drops: list[tuple[float, list[str], int]] = field(default_factory=list)  # time, members, bytes exchanged
    restores: list[tuple[float, list[str], int]] = field(default_factory=list)
    swaps_out: int = 0
    swaps_in: int = 0
    migrations: int = 0
    queue_moves: int = 0  # queued requests a group member took from a partner's queue
    spare_moves: int = 0  # queued requests `auto` moved to a replica with pages to spare
    exchange_recomputes: int = 0  # running requests recomputed at a drop rather than exchanged
    decode_moves: int = 0  # decoding requests moved between a group's micro-batches to even their cost


class ElasticCluster:
    """`backend` makes the replicas and waits on their lanes: `ProcessBackend(lane_cores)` unless
    given (the simulator passes its own)."""

    def __init__(self, engine_config: EngineConfig, config: ElasticConfig, clock=time.monotonic,
                 lane_cores: list[list[int]] | None = None, backend=None):
        self.model = engine_config.name
        self.config = config
        self.clock = clock
        self.backend = backend or ProcessBackend(lane_cores)
        self._pool: BlockPool | None = None
        self.replicas: list[Replica] = []
        try:
            for i in range(config.num_replicas):
                replica_config = dataclasses.replace(engine_config, name=f"{self.model}#{i}")
                self.replicas.append(self.backend.make_replica(replica_config, i, config, self._pool_for, clock))
        except BaseException:
            self.close()
            raise
        self.busy: dict[int, Flight] = {}  # replica index -> the job on its lane
        self.handoffs: dict[int, deque[Flight]] = {r.index: deque() for r in self.replicas}
        self.batch_in_flight: set[int] = set()  # replicas whose scheduler has a batch out
        self.groups: dict[int, pipeline.PipelineGroup] = {}  # member index -> its group
        self.swapped: dict[int, deque[kv_moves.SwappedRequest]] = {r.index: deque() for r in self.replicas}
        # requests whose KV is still crossing after a drop: member index -> (when it has, request)
        self.exchanging: dict[int, deque[tuple[float, Any]]] = {r.index: deque() for r in self.replicas}
        self.migration: kv_moves.Migration | None = None
        self.transition: Transition | None = None
        self.repairs: list[pipeline.PipelineGroup] = []  # groups that lost a member, waiting for quiet lanes
        self._orphans: list[RequestOutput] = []  # outputs produced between steps (a repair's failures)
        self.events = Events()
        self._request_ids: set[str] = set()  # of the requests not finished yet
        self._next_id = itertools.count()
        self._deferred_aborts: set[str] = set()
        self._capacity_by_size: dict[int, int] = {}
        self.output_lengths = OutputLengths(config.expected_output_tokens)
        self._seq_caps: dict[int, int] = {}  # max_num_seqs of members with parked requests
        self.prefill_speed = {r.index: memory_source.PrefillSpeed() for r in self.replicas}
        # read by auto's swap rule and by the exchange-or-recompute choice at a drop
        self._times_prefill = config.strategy == "auto" or (config.strategy == "drop" and config.recompute_if_cheaper)
        if config.strategy in ("swap", "auto"):
            for replica in self.replicas:
                replica.scheduler.preempt_hook = self._swap_hook(replica)

    def _pool_for(self, pages_per_replica: int) -> BlockPool:
        if self._pool is None:
            self._pool = BlockPool(pages_per_replica * self.config.num_replicas)
        return self._pool

    # -- requests --------------------------------------------------------------------------------

    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                    request_id: str | None = None, model: str | None = None, arrival_time: float | None = None) -> str:
        if model is not None and model != self.model:
            raise UnknownModelError(f"the model {model!r} does not exist; available: [{self.model!r}]")
        first = self.replicas[0]
        token_ids = first.prompt_token_ids_of(prompt)
        if request_id is None:  # a caller's own ids may look like ours: skip those in use
            request_id = next(rid for rid in (f"r{n}" for n in self._next_id) if rid not in self._request_ids)
        if request_id in self._request_ids:
            raise InvalidRequestError(f"request id {request_id!r} is already in use", "request_id")
        self._route(prompt, params, request_id, token_ids, arrival_time)
        self._request_ids.add(request_id)
        return request_id

    def _route(self, prompt, params: SamplingParams | None, request_id: str, token_ids: list[int],
               arrival_time: float | None) -> None:
        live = self.live_replicas()
        if not live:
            raise OutOfCapacityError(f"every replica of {self.model!r} is down")
        pick_replica(live, len(token_ids)).add_request(prompt, params, request_id, prompt_token_ids=token_ids,
                                                        arrival_time=arrival_time)

    def live_replicas(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive]

    def health(self) -> dict[str, str]:
        """Each replica's state: "ok", or "dead" once its worker is gone (it gets no more requests)."""
        return {r.name: "ok" if r.alive else "dead" for r in self.replicas}

    def abort_request(self, request_id: str) -> None:
        """Abort now, or once the owner's batch is back: a lane may still be writing the request's KV,
        and its pages must not be handed to another request before that stops."""
        self._deferred_aborts.add(request_id)
        self._apply_aborts()

    def _apply_aborts(self) -> None:
        for request_id in list(self._deferred_aborts):
            replica = self._owner_of(request_id)
            if replica is None or replica.index not in self.batch_in_flight:
                self._deferred_aborts.discard(request_id)
                self._request_ids.discard(request_id)
                if replica is not None:
                    replica.abort_request(request_id)

    def _owner_of(self, request_id: str) -> Replica | None:
        return next((r for r in self.replicas if request_id in r.states), None)

    def has_unfinished_requests(self) -> bool:
        return bool(self.busy or self._orphans or self.repairs) or any(
            r.has_unfinished_requests() or self.swapped[r.index] or self.handoffs[r.index] or self.exchanging[r.index]
            for r in self.replicas)

    def has_standing_groups(self) -> bool:
        """A group, or a drop or restore under way: an idle server keeps stepping until it dissolves."""
        return bool(self.groups or self.transition)

    def close(self) -> None:
        for replica in self.replicas:
            replica.close()
        close_backend = getattr(self.backend, "close", None)
        if close_backend is not None:
            close_backend()

    def __enter__(self) -> ElasticCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the loop --------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        outputs = self.dispatch()
        if self._orphans:
            outputs, self._orphans = self._finished(self._orphans) + outputs, []
        if self.busy:
            outputs += self.collect()
        return outputs

    def _finished(self, outputs: list[RequestOutput]) -> list[RequestOutput]:
        """Book the requests these outputs end (the simulator calls dispatch and collect, not step)."""
        for output in outputs:
            if output.finished:
                self._request_ids.discard(output.request_id)
                if output.outputs[0].finish_reason in ("stop", "length"):
                    self.output_lengths.add(len(output.outputs[0].token_ids))
        return outputs

    def dispatch(self) -> list[RequestOutput]:
        now = self.clock()
        self._manage(now)
        transition = self.transition
        frozen = {r.index for r in transition.members} if transition and now >= transition.ready_at else set()
        frozen |= {r.index for group in self.repairs for r in group.members}
        outputs: list[RequestOutput] = []
        for replica in self.replicas:
            if replica.index in self.busy or not replica.alive:
                continue
            if self.handoffs[replica.index]:
                self._submit(self.handoffs[replica.index].popleft())
            elif replica.index in frozen:
                continue
            elif replica.index not in self.groups:
                if replica.index not in self.batch_in_flight:
                    outputs += self._start(replica, [(replica, 0, replica.spec.num_layers)])
            elif self.groups[replica.index].members[0] is replica:
                outputs += self._start_group_batch(self.groups[replica.index])
        return self._finished(outputs)

    def _start_group_batch(self, group: pipeline.PipelineGroup) -> list[RequestOutput]:
        for _ in range(len(group.members)):
            member = group.members[group.next_batch % len(group.members)]
            group.next_batch += 1
            if member.index not in self.batch_in_flight:
                self.events.queue_moves += pipeline.share_queue(group, member, self._deferred_aborts)
                if self.config.balance_decodes and not self._pinned(group):
                    self.events.decode_moves += pipeline.balance_decodes(group, member, self.backend.decode_cost,
                                                                         self._deferred_aborts)
                if self.config.share_pages:
                    pipeline.share_pages(group, member)
                outputs = self._start(member, group.stages)
                if member.index in self.batch_in_flight or outputs:
                    return outputs
        return []

    def _start(self, engine: Replica, stages: list[tuple[Replica, int, int]]) -> list[RequestOutput]:
        out = engine.begin_step()
        if out is None:
            return []
        if not out.scheduled:
            return engine.finish_step(out, {})
        self.batch_in_flight.add(engine.index)
        self._submit(Flight(engine, out, engine.prepare(out), stages, self.clock(), stages[0][0].stall_s))
        return []

    def _submit(self, flight: Flight) -> None:
        replica, start, end = flight.stages[flight.stage]
        self.busy[replica.index] = flight
        replica.run_stage(flight.batch, start, end, flight.hidden)

    def collect(self) -> list[RequestOutput]:
        """Apply every job that has ended (the process backend waits for at least one)."""
        outputs: list[RequestOutput] = []
        busy = [self.replicas[i] for i in self.busy]
        for replica in sorted(self.backend.wait(busy), key=lambda r: r.index):
            flight = self.busy.pop(replica.index)
            try:
                result = replica.stage_result()
            except LaneError as exc:
                outputs += self._fail(flight, replica, exc)
                continue
            if flight.stage + 1 < len(flight.stages) and not flight.stages[flight.stage + 1][0].alive:
                outputs += self._fail(flight, replica, LaneError(f"{flight.stages[flight.stage + 1][0].name} is dead"))
            elif flight.stage + 1 < len(flight.stages):
                flight.stage += 1
                flight.hidden = result
                self.handoffs[flight.stages[flight.stage][0].index].append(flight)
            else:
                self.batch_in_flight.discard(flight.engine.index)
                # a pipeline's time includes waits behind other micro-batches
                if self._times_prefill and len(flight.stages) == 1:
                    elapsed = self.clock() - flight.started - flight.stall_s
                    self.prefill_speed[flight.engine.index].record(flight.out, elapsed)
                outputs += flight.engine.finish_step(flight.out, flight.engine.sample(flight.batch, result))
        if self._deferred_aborts:
            self._apply_aborts()
        return self._finished(outputs)

    def _fail(self, flight: Flight, replica: Replica, exc: LaneError) -> list[RequestOutput]:
        """A lane's job failed: the batch's requests fail with the reason and the replica recovers
        (a dead lane is replaced), so every other request goes on."""
        logger.error("a job of %s failed on %s: %s", flight.engine.name, replica.name, exc)
        was_alive = replica.alive
        replica.recover(exc)
        self.batch_in_flight.discard(flight.engine.index)
        outputs: list[RequestOutput] = []
        if was_alive and not replica.alive:  # first: the batch's requests with no token yet go elsewhere
            outputs += self._lose(replica, exc)
        outputs += flight.engine.fail_step(flight.out, exc)
        self._apply_aborts()
        return outputs

    def _lose(self, dead: Replica, exc: LaneError) -> list[RequestOutput]:
        """A replica is gone for good (its worker died, weights and KV with it). Alone, its requests
        that produced nothing yet go to another replica and the rest fail. In a pipeline group every
        member lost the KV of the dead one's layers: the group is repaired once its batches are back."""
        logger.error("replica %s is dead; it gets no more requests", dead.name)
        outputs: list[RequestOutput] = []
        while self.handoffs[dead.index]:  # stages that were to run on it never will
            flight = self.handoffs[dead.index].popleft()
            self.batch_in_flight.discard(flight.engine.index)
            outputs += flight.engine.fail_step(flight.out, exc)
        stranded = [s.request for s in self.swapped.pop(dead.index, ())]
        self.swapped[dead.index] = deque()
        if self.transition is not None and dead in self.transition.members:
            self.transition = None
        outputs += dead.fail_requests(stranded, exc)
        group = self.groups.get(dead.index)
        if group is not None:
            self._to_repair(group)
        elif not any(dead in g.members for g in self.repairs):  # alone (not a group already in repair)
            outputs += self._redispatch(dead, exc)
        return outputs

    def _redispatch(self, replica: Replica, exc: BaseException) -> list[RequestOutput]:
        """Move the replica's requests that produced no token yet to live replicas; fail the rest."""
        fresh, started = [], []
        for state in list(replica.states.values()):
            (started if state.request.num_output_tokens else fresh).append(state)
        outputs = replica.fail_requests([s.request for s in started], exc)
        for state in fresh:
            request = state.request
            replica.abort_request(request.request_id)
            try:
                self._route(state.prompt or request.prompt_token_ids, request.params, request.request_id,
                            request.prompt_token_ids, state.metrics.arrival_time)
            except Exception as error:  # nowhere left to run it
                self._request_ids.discard(request.request_id)
                outputs.append(_failed_output(state, error))
        return outputs

    # -- the strategy ------------------------------------------------------------------------------

    def _manage(self, now: float) -> None:
        strategy = self.config.strategy
        if strategy == "swap":
            self._swap_in()
        elif strategy == "migrate":
            self._migrate(now)
        elif strategy == "drop":
            self._unpark_exchanged(now)
            self._drop_or_restore(now)
        elif strategy == "auto":
            self._unpark_exchanged(now)
            self._swap_in()
            # not a group's members, nor those of a group in repair or about to drop or restore
            taken = {m.index for g in self.repairs for m in g.members}
            taken |= {m.index for m in self.transition.members} if self.transition else set()
            alone = [r for r in self.live_replicas() if r.index not in self.groups and r.index not in taken]
            # a replica with KV on the host needs its free pages to bring it back
            targets = [r for r in alone if not self.swapped[r.index]]
            self.events.spare_moves += memory_source.move_queued_to_spare(alone, targets, self._deferred_aborts)
            self._drop_or_restore(now)

    def _swap_hook(self, replica: Replica):
        def hook(victim) -> bool:
            if self.config.strategy == "auto" and not self._swap_is_cheaper(replica, victim):
                return False
            try:
                swapped = kv_moves.swap_out(replica, victim, self.config.host_bytes_per_s)
            except LaneError as exc:
                # mid-schedule: the victim is recomputed instead; a dead worker then fails the batch
                # it is about to be given, as any other death
                logger.error("swapping out %s on %s failed: %s", victim.request_id, replica.name, exc)
                return False
            if swapped is None:
                return False
            self.swapped[replica.index].append(swapped)
            self.events.swaps_out += 1
            return True
        return hook

    def _swap_is_cheaper(self, replica: Replica, victim) -> bool:
        """A grouped member holds only its layers' share of the victim's KV: it recomputes."""
        return replica.index not in self.groups and memory_source.swap_beats_recompute(
            replica, victim, self.prefill_speed[replica.index], self.config.host_bytes_per_s)

    def _swap_in(self) -> None:
        for replica in self.replicas:
            queue = self.swapped[replica.index]
            while queue and replica.index not in self.batch_in_flight:
                if queue[0].request.finished:  # aborted while on the host
                    replica.kv_cache.discard(queue.popleft().data)
                    continue
                try:
                    if not kv_moves.swap_in(replica, queue[0], self.config.host_bytes_per_s):
                        break
                except LaneError as exc:  # its KV did not come back: it fails, the rest go on
                    failed = queue.popleft()
                    replica.kv_cache.discard(failed.data)
                    self._orphans += replica.fail_requests([failed.request], exc)
                    self._copy_failed([replica], exc)
                    break
                queue.popleft()
                self.events.swaps_in += 1

    def _migrate(self, now: float) -> None:
        move = self.migration
        if move is not None:
            if move.request.finished or move.request not in move.src.scheduler.running \
                    or not (move.src.alive and move.dst.alive):
                self.migration = None
            elif now >= move.ready_at and move.src.index not in self.batch_in_flight \
                    and move.dst.index not in self.batch_in_flight:
                self.migration = None
                try:
                    if move.commit(self.config.peer_bytes_per_s):
                        self.events.migrations += 1
                except LaneError as exc:  # the request stays where it is (it moves last, after the copy)
                    self._copy_failed([move.src, move.dst], exc)
            return
        ranked = sorted(self.live_replicas(), key=freeness)
        src, dst = ranked[0], ranked[-1]
        if src is dst or not src.scheduler.waiting or not src.scheduler.running or freeness(dst) <= freeness(src):
            return
        request = src.scheduler.running[-1]  # the newest: Llumnix's LCFS victim
        pages = len(src.kv.block_tables.get(request.request_id, ()))
        if pages == 0 or dst.kv.pool.headroom(dst.kv.owner) - queued_pages(dst) < pages:
            return
        page_bytes = src.page_bytes_per_layer * src.spec.num_layers
        self.migration = kv_moves.Migration(request, src, dst, now + pages * page_bytes / self.config.peer_bytes_per_s,
                                            pages)

    def _drop_or_restore(self, now: float) -> None:
        for group in [g for g in self.repairs if self._quiet(g.members)]:
            self.repairs.remove(group)
            self._repair(group)
        drop = None
        pending = self.transition
        if pending is not None and pending.kind == "restore":
            # demand came back to the group while its weights crossed, or a drop elsewhere cannot
            # wait for them: a drop is for a queue short of pages, a restore is never urgent
            drop = self._next_drop() if now < pending.ready_at else None
            if drop is not None or not self._restore_holds(pending.group):
                pipeline.cancel_restore(pending.group)
                self.transition = None
        if self.transition is None:
            self.transition = drop or self._next_drop() or self._next_restore(now)
        if self.transition is None:
            return
        kind, members, group = self.transition.kind, self.transition.members, self.transition.group
        if now < self.transition.ready_at or not self._quiet(members):
            return  # the weights are still crossing, or the members' batches are still out
        self.transition = None
        try:
            if kind == "drop":
                # the most pages any split holds: a burst's demand only grows from here, and a group
                # cannot re-split until it restores; among those splits, the evenest stages
                ranges = plan_ranges(pipeline.stage_costs(members[0]), len(members), self._group_capacity(len(members)))
                if self.config.recompute_if_cheaper:
                    self._recompute_cheaper_than_exchange(members, ranges)
                group, moved = pipeline.drop(members, self.config.peer_bytes_per_s, ranges)
                self._park_exchanged(group, now)
            else:
                moved = pipeline.restore(group, self.config.peer_bytes_per_s, weights_precopied=True)
        except LaneError as exc:
            self._transition_failed(kind, members, group, exc)
            return
        for member in members:
            if kind == "drop":
                self.groups[member.index] = group
            else:
                del self.groups[member.index]
        (self.events.drops if kind == "drop" else self.events.restores).append((now, [m.name for m in members], moved))

    def _recompute_cheaper_than_exchange(self, members: list[Replica], ranges: list[tuple[int, int]]) -> None:
        """Before the KV is exchanged: requests for which a re-prefill adds less waiting than the
        exchange give up their pages and queue for recompute (their KV is then not copied)."""
        queued_share = sum(m.scheduler.num_waiting for m in members) / len(members)
        for member, (start, end) in zip(members, ranges):
            speed = self.prefill_speed[member.index]
            chosen = memory_source.recompute_instead_of_exchange(member, end - start, self.config.peer_bytes_per_s,
                                                                 speed, queued_share)
            for request in reversed(chosen):  # each goes to the queue's head: the oldest ends up first
                member.scheduler.recompute(request)
            self.events.exchange_recomputes += len(chosen)

    def _park_exchanged(self, group: pipeline.PipelineGroup, now: float) -> None:
        """KunServe's live exchange: each running request whose KV crossed waits out its transfer,
        a member's requests one after another over its link (the members send at the same time),
        while the pages freed by the drop admit new requests at once. A member's sequence cap
        keeps room for its parked requests, so they come back without exceeding it."""
        for member in group.members:
            ready = now
            for request in list(member.scheduler.running):
                seconds = group.exchange_s.get(request.request_id, 0.0)
                if seconds > 0:
                    ready += seconds
                    member.scheduler.running.remove(request)
                    self.exchanging[member.index].append((ready, request))
            if self.exchanging[member.index]:
                self._seq_caps[member.index] = member.scheduler.config.max_num_seqs
                self._fit_seq_cap(member)

    def _unpark_exchanged(self, now: float) -> None:
        """Requests whose KV has crossed run again, ahead of those admitted since the drop and in
        their old order."""
        for replica in self.replicas:
            queue = self.exchanging[replica.index]
            due = []
            while queue and queue[0][0] <= now and replica.index not in self.batch_in_flight:
                _, request = queue.popleft()
                if not request.finished:  # else aborted (or failed) while its KV crossed
                    due.append(request)
            replica.scheduler.running[0:0] = due
            if replica.index in self._seq_caps and (due or not queue):
                self._fit_seq_cap(replica)

    def _fit_seq_cap(self, replica: Replica) -> None:
        """The cap less the requests still parked (the whole cap once none is)."""
        cap = self._seq_caps[replica.index]
        parked = len(self.exchanging[replica.index])
        pipeline.tune_scheduler(replica, max_num_seqs=max(1, cap - parked))
        if not parked:
            del self._seq_caps[replica.index]

    def _transition_failed(self, kind: str, members: list[Replica], group, exc: LaneError) -> None:
        """A drop or restore failed: a member died, or a worker's call raised. Before a drop's
        bookkeeping the members are still alone: a member that had let layers go takes them back,
        its requests prefilling again (the KV of those layers went with them), and a dead one is
        lost. A restore leaves the group standing, part restored: it is repaired."""
        logger.error("a %s of %s failed: %s", kind, [m.name for m in members], exc)
        dead = self._found_dead(members)
        if kind == "restore" and not dead:  # no death to send it to repair: send it all the same
            self._to_repair(group)
        for member in members:
            if kind == "drop" and member.alive and not member.is_whole():
                self._orphans += self._reload_alone(member)
        for member in dead:
            self._orphans += self._lose(member, exc)

    def _reload_alone(self, member: Replica) -> list[RequestOutput]:
        """Reload the layers a replica now serving alone lacks (Ray: from the checkpoint) and
        recompute its running requests, whose KV lacks them; one that cannot reload is lost."""
        try:
            member.reload_layers()
        except LaneError as exc:  # without its layers it cannot serve: out of service, as if dead
            member.recover(LaneError(f"replica {member.name} cannot reload its layers: {exc}", dead=True))
            return self._lose(member, exc)
        _recompute_running(member)
        return []

    def _to_repair(self, group: pipeline.PipelineGroup) -> None:
        for member in group.members:
            del self.groups[member.index]
        self.repairs.append(group)

    def _found_dead(self, replicas: list[Replica]) -> list[Replica]:
        """After a failed copy, which does not say whose worker died: ask each one still serving."""
        serving = [r for r in replicas if r.alive]
        for replica in serving:
            if not replica.responds():
                replica.recover(LaneError(f"replica {replica.name} is down", dead=True))
        return [r for r in serving if not r.alive]

    def _copy_failed(self, replicas: list[Replica], exc: LaneError) -> None:
        """A KV copy between jobs (swap in, migration) failed: a replica found dead is lost, and
        the others serve on."""
        logger.error("a KV copy on %s failed: %s", [r.name for r in replicas], exc)
        for replica in self._found_dead(replicas):
            self._orphans += self._lose(replica, exc)

    def _pinned(self, group: pipeline.PipelineGroup) -> bool:
        """Requests stay with their member while some still wait for their exchanged KV (the sequence
        caps keep room for them) or while the group is restoring (each member must fit its own)."""
        transition = self.transition
        return any(self.exchanging[m.index] for m in group.members) or (
            transition is not None and transition.group is group)

    def _quiet(self, members: list[Replica]) -> bool:
        return not any(m.index in self.busy or m.index in self.batch_in_flight or self.handoffs[m.index]
                       for m in members)

    def _repair(self, group: pipeline.PipelineGroup) -> None:
        """After a member died (or a restore failed half done): every member's requests lost the
        KV of some layers. The survivors reload the layers they had dropped and serve alone, their
        requests prefilling again (their tokens are all here, so nothing they generate changes);
        the dead member's requests start over elsewhere, or fail if they had produced tokens."""
        pipeline.dissolve(group)
        parked = {}
        for member in group.members:  # KV crossing or not, it is recomputed or lost below
            parked[member.index] = [request for _, request in self.exchanging[member.index] if not request.finished]
            self.exchanging[member.index].clear()
            if member.index in self._seq_caps:
                self._fit_seq_cap(member)
        lost = LaneError(f"a member of pipeline group {group.owner} died")
        outputs: list[RequestOutput] = []
        for member in group.members:
            if member.alive:
                member.scheduler.running[0:0] = parked[member.index]
                outputs += self._reload_alone(member)
            else:
                outputs += self._redispatch(member, lost)
        self._orphans += outputs
        self.events.restores.append((self.clock(), [m.name for m in group.members if m.alive], 0))

    def _next_restore(self, now: float) -> Transition | None:
        for group in {id(g): g for g in self.groups.values()}.values():
            if self._should_restore(group):
                seconds = pipeline.start_restore(group, self.config.peer_bytes_per_s)
                return Transition("restore", group.members, group, now + seconds)
        return None

    def _next_drop(self) -> Transition | None:
        # a replica with KV on the host stays alone: the swapped KV spans every layer
        alone = [r for r in self.live_replicas() if r.index not in self.groups and not self.swapped[r.index]]
        # KunServe's trigger (demand above capacity with a queue) also fires when the queue is for
        # compute, which freed pages cannot shorten: only a replica that is short of pages counts
        if len(alone) < 2 or not any(r.scheduler.waiting and r.scheduler.short_of_pages for r in alone):
            return None
        demands = [ReplicaDemand(r.name, self._demand_pages(r), r.independent_pages, self._growth_pages(r))
                   for r in alone]
        plan = plan_groups(demands, self._group_capacity, self.config.max_group_size)
        by_name = {r.name: r for r in alone}
        return Transition("drop", [by_name[name] for name in plan[0]]) if plan else None

    def _demand_pages(self, replica: Replica) -> int:
        return replica.kv.num_held_blocks + queued_pages(replica)

    def _growth_pages(self, replica: Replica) -> int:
        if not self.config.plan_for_growth:
            return 0
        requests = [*replica.scheduler.running, *replica.scheduler.waiting]
        return growth_pages(requests, replica.kv.block_size, self.output_lengths.mean)

    def _group_capacity(self, size: int) -> int:
        """Fixed by the replicas' shape and budget: worked out once per size (the planner asks often)."""
        if size not in self._capacity_by_size:
            self._capacity_by_size[size] = max_pages(pipeline.stage_costs(self.replicas[0]), size)
        return self._capacity_by_size[size]

    def _should_restore(self, group: pipeline.PipelineGroup) -> bool:
        """The group's demand (pages held plus what its queue needs) under `restore_below` of what
        it is held to while the weights cross (one member's own pages): the rest is room for its
        requests to grow meanwhile. A queue for compute (sequence slots, token budget) does not
        keep a group together, only one short of pages does (`_restore_holds`): under steady load
        after a burst there is nearly always a request or two waiting for the next step."""
        demand = sum(group.used_pages(m) + queued_pages(m) for m in group.members)
        return self._restore_holds(group) and demand <= self.config.restore_below * pipeline.restore_hold_pages(group)

    def _restore_holds(self, group: pipeline.PipelineGroup) -> bool:
        """Nothing a restore under way cannot go on with: no member short of pages for its queue and
        none with KV on the host, and each one's requests fit its own pages. (A request that
        arrives meanwhile waits for the switch; one refused pages calls it off.)"""
        members = group.members
        return not any((m.scheduler.waiting and m.scheduler.short_of_pages) or self.swapped[m.index]
                       or self.exchanging[m.index] for m in members) and pipeline.can_restore(group)


def _recompute_running(replica: Replica) -> None:
    """Its running requests' KV is incomplete: they give up their pages and prefill again, first in
    the queue and in their order."""
    for request in reversed(list(replica.scheduler.running)):
        replica.scheduler.recompute(request)


def _failed_output(state, error: BaseException) -> RequestOutput:
    """An error output for a request no replica holds any more."""
    request = state.request
    request.status = RequestStatus.FINISHED_ERROR
    completion = CompletionOutput(0, "", [], request.finish_reason, None)
    output = RequestOutput(request.request_id, state.prompt, request.prompt_token_ids, [completion], True,
                           state.metrics, request.num_preemptions)
    output.error = f"{type(error).__name__}: {error}"
    output.unavailable = isinstance(error, OutOfCapacityError)  # e.g. rerouted when no replica was left
    return output
