"""One model's view of the page pool: each request's block table, grown as its tokens are computed."""

from __future__ import annotations

from coserve.engine.block_pool import BlockPool
from coserve.engine.request import Request


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager:
    def __init__(self, pool: BlockPool, block_size: int, owner: str = "default"):
        self.pool = pool
        self.block_size = block_size  # tokens of this model per page
        self.owner = owner
        self.block_tables: dict[str, list[int]] = {}

    def blocks_needed(self, request: Request, num_new_tokens: int) -> int:
        held = len(self.block_tables.get(request.request_id, ()))
        return max(0, cdiv(request.num_computed_tokens + num_new_tokens, self.block_size) - held)

    def tokens_within(self, request: Request, pages: int) -> int:
        """How many more of the request's tokens `pages` more pages (beside those it holds) hold."""
        held = len(self.block_tables.get(request.request_id, ()))
        return (held + pages) * self.block_size - request.num_computed_tokens

    def allocate_slots(self, request: Request, num_new_tokens: int) -> bool:
        """Make room for `num_new_tokens` more tokens; False (nothing taken) if the pool is short."""
        table = self.block_tables.get(request.request_id)
        if table is None:
            table = self.block_tables[request.request_id] = []
        needed = cdiv(request.num_computed_tokens + num_new_tokens, self.block_size) - len(table)
        if needed <= 0:
            return True
        blocks = self.pool.allocate(needed, self.owner)
        if blocks is None:
            return False
        table.extend(blocks)
        return True

    def free(self, request: Request) -> None:
        blocks = self.block_tables.pop(request.request_id, None)
        if blocks:
            self.pool.free(blocks, self.owner)

    def block_table(self, request: Request) -> list[int]:
        return self.block_tables[request.request_id]

    @property
    def num_held_blocks(self) -> int:
        return sum(len(table) for table in self.block_tables.values())
