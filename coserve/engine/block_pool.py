"""A pool of equal-size KV pages with O(1) allocate/free, shared by every model on a device.

Pages carry no model-specific shape: each model decides how many of its tokens fit one page. The
pool only counts who holds how many pages, so a quota can cap a model and a page freed by one model
is usable by any other at once.
"""

from __future__ import annotations

from coserve.errors import ConfigError


class BlockPool:
    def __init__(self, num_blocks: int):
        if num_blocks <= 0:
            raise ValueError(f"a KV pool needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        # a stack: the most recently freed page is reused first, while it is still in cache
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self._owner: list[str | None] = [None] * num_blocks
        self.used_by: dict[str, int] = {}
        self.quotas: dict[str, int] = {}  # pages an owner may hold now (adaptive policies move them)
        self.limits: dict[str, int] = {}  # pages an owner may ever hold (a fixed slice of the device)

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    def usage(self, owner: str | None = None) -> float:
        used = self.num_used_blocks if owner is None else self.used_by.get(owner, 0)
        return used / self.num_blocks

    def set_quotas(self, quotas: dict[str, int], fixed: bool = False) -> None:
        """Cap each owner's pages; `fixed` caps are also the most it may ever hold (a slice that
        adaptation never grows)."""
        if sum(quotas.values()) > self.num_blocks:
            raise ConfigError(f"quotas sum to {sum(quotas.values())} pages but the pool has {self.num_blocks}")
        self.quotas = dict(quotas)
        if fixed:
            self.limits = dict(quotas)

    def set_limit(self, owner: str, pages: int) -> None:
        """Cap one owner (its quota and its limit) without touching the others'."""
        self.quotas[owner] = self.limits[owner] = pages

    def transfer(self, blocks: list[int], from_owner: str, to_owner: str) -> None:
        """Hand held pages to another owner without freeing them (their contents stay valid)."""
        for block in blocks:
            if self._owner[block] != from_owner:
                raise RuntimeError(f"block {block} is held by {self._owner[block]!r}, not {from_owner!r}")
            self._owner[block] = to_owner
        self.used_by[from_owner] -= len(blocks)
        self.used_by[to_owner] = self.used_by.get(to_owner, 0) + len(blocks)

    def capacity(self, owner: str) -> int:
        """The most pages `owner` could ever hold: a request needing more can never run."""
        return min(self.num_blocks, self.limits.get(owner, self.num_blocks))

    def headroom(self, owner: str) -> int:
        """Pages `owner` may still take: the free pages, capped by what its quota leaves."""
        quota = self.quotas.get(owner)
        if quota is None:
            return len(self._free)
        return max(0, min(len(self._free), quota - self.used_by.get(owner, 0)))

    def allocate(self, count: int, owner: str) -> list[int] | None:
        """`count` pages for `owner`, or None (and nothing taken) when they are not available."""
        if count > self.headroom(owner):
            return None
        blocks = [self._free.pop() for _ in range(count)]
        for block in blocks:
            self._owner[block] = owner
        self.used_by[owner] = self.used_by.get(owner, 0) + count
        return blocks

    def free(self, blocks: list[int], owner: str) -> None:
        for block in blocks:
            if self._owner[block] != owner:
                raise RuntimeError(f"block {block} is held by {self._owner[block]!r}, not {owner!r}")
            self._owner[block] = None
            self._free.append(block)
        self.used_by[owner] -= len(blocks)
