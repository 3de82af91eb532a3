"""Meshes (GPUs of one node that serve a set of models together) and the mesh groups to search.

A mesh group splits every node into meshes of power-of-two sizes; nodes are interchangeable, so a
group is a multiset of per-node partitions (MuxServe's enumeration: 10 partitions of an 8-GPU node,
715 groups for 4 nodes).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import combinations_with_replacement

from coserve.errors import ConfigError
from coserve.placement.problem import Cluster


@dataclass(frozen=True)
class Mesh:
    id: int
    node: int
    gpus: tuple[int, ...]  # global GPU ids: node x gpus_per_node + local index
    size: int = 0  # len(gpus), filled in

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", len(self.gpus))


def node_partitions(gpus: int, sizes: list[int]) -> list[tuple[int, ...]]:
    """Every way to write `gpus` as a sum of `sizes`, parts in descending order."""
    out: list[tuple[int, ...]] = []

    def extend(left: int, largest: int, parts: tuple[int, ...]) -> None:
        if left == 0:
            out.append(parts)
            return
        for size in sorted(sizes, reverse=True):
            if size <= min(left, largest):
                extend(left - size, size, parts + (size,))

    extend(gpus, gpus, ())
    return out


MAX_MESH_GROUPS = 50_000  # the greedy planner spends a few ms on each: beyond this, minutes to hours


def mesh_groups(cluster: Cluster) -> Iterator[tuple[Mesh, ...]]:
    """All mesh groups of the cluster, from the fewest meshes (largest first) to the most."""
    count = count_groups(cluster)
    if count > MAX_MESH_GROUPS:
        raise ConfigError(f"a cluster of {cluster.nodes} nodes x {cluster.gpus_per_node} GPUs has {count} mesh "
                          f"groups to search (limit {MAX_MESH_GROUPS}): plan a part of it (fewer nodes) and "
                          "repeat that placement")
    partitions = node_partitions(cluster.gpus_per_node, cluster.mesh_sizes())
    for per_node in combinations_with_replacement(partitions, cluster.nodes):
        yield build_meshes(cluster, per_node)


def build_meshes(cluster: Cluster, per_node: tuple[tuple[int, ...], ...]) -> tuple[Mesh, ...]:
    """Meshes of one partition per node; GPU ids are contiguous inside each node."""
    meshes = []
    for node, parts in enumerate(per_node):
        first = node * cluster.gpus_per_node
        for size in parts:
            meshes.append(Mesh(len(meshes), node, tuple(range(first, first + size))))
            first += size
    return tuple(meshes)


def count_groups(cluster: Cluster) -> int:
    """Multisets of `nodes` partitions drawn from a node's partitions: C(partitions + nodes - 1, nodes)."""
    partitions = len(node_partitions(cluster.gpus_per_node, cluster.mesh_sizes()))
    return math.comb(partitions + cluster.nodes - 1, cluster.nodes)
