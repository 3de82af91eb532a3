"""Simulate independent groups of devices in parallel processes.

Devices influence each other only through the router, and the router only chooses among the
replicas of one model. Devices that share no model, directly or through a chain of models, never
see each other's events, so each such group can run its own event loop, in its own process, and
the records are the ones a single loop over every device would produce.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass

from coserve.metrics import RequestRecord
from coserve.simulator.cluster import CostFactory, SimCluster, SimDeviceSpec
from coserve.workload import WorkloadRequest


@dataclass
class GroupRun:
    devices: list[SimDeviceSpec]
    requests: list[WorkloadRequest]

    @property
    def work(self) -> int:
        """The simulator's cost grows with the token steps it plays, so output tokens stand for it."""
        return sum(r.output_len + 1 for r in self.requests)


def independent_groups(devices: list[SimDeviceSpec]) -> list[list[SimDeviceSpec]]:
    """Devices joined by a model they both hold, in the order the devices were given."""
    parent = list(range(len(devices)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_holder: dict[str, int] = {}
    for index, spec in enumerate(devices):
        for model in spec.models:
            other = first_holder.setdefault(model.name, index)
            parent[root(index)] = root(other)
    groups: dict[int, list[SimDeviceSpec]] = {}
    for index, spec in enumerate(devices):
        groups.setdefault(root(index), []).append(spec)
    return list(groups.values())


def group_runs(devices: list[SimDeviceSpec], requests: list[WorkloadRequest]) -> list[GroupRun]:
    """One run per independent group with the requests for its models, heaviest first."""
    runs = []
    for group in independent_groups(devices):
        models = {m.name for spec in group for m in spec.models}
        runs.append(GroupRun(group, [r for r in requests if r.model in models]))
    return sorted(runs, key=lambda run: run.work, reverse=True)


# what forked workers read: a cost factory is often a closure, which cannot be pickled
_RUNS: list[GroupRun] = []
_COST_FOR: list[CostFactory] = []


def _simulate(index: int) -> tuple[list[RequestRecord], float]:
    run = _RUNS[index]
    cluster = SimCluster(run.devices, _COST_FOR[0])
    return cluster.run(run.requests), cluster.clock.now


def simulate_in_parallel(devices: list[SimDeviceSpec], cost_for: CostFactory, requests: list[WorkloadRequest],
                         workers: int) -> tuple[list[RequestRecord], float]:
    """Records of every request and the simulated end time, over at most `workers` processes."""
    unknown = sorted({r.model for r in requests} - {m.name for spec in devices for m in spec.models})
    if workers <= 1 or unknown:  # one loop, which also reports unknown models
        cluster = SimCluster(devices, cost_for)
        return cluster.run(requests), cluster.clock.now
    runs = group_runs(devices, requests)
    _RUNS[:], _COST_FOR[:] = runs, [cost_for]
    try:
        if len(runs) == 1:
            return _simulate(0)
        # heaviest first, each to the next free worker: the longest group starts at once and the
        # small ones fill in around it, whatever the work estimate got wrong
        with multiprocessing.get_context("fork").Pool(min(workers, len(runs))) as pool:
            results = list(pool.imap_unordered(_simulate, range(len(runs)), chunksize=1))
    finally:
        _RUNS.clear()
        _COST_FOR.clear()
    records = [record for run_records, _ in results for record in run_records]
    return records, max(end for _, end in results)
