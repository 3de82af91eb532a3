"""Layer-major KV storage for a replica that may drop layers: one page array per held layer.

A page id means the same token slots in every layer array, on every replica of the model: page ids
come from one cluster-wide pool, so moving a request's KV between replicas (exchange, migration,
regather) copies rows at the same ids and never re-numbers a block table. Each array is a shared
memory mapping the kernel backs only where pages are written, so reserving the whole id space costs
address space, not memory; the page pool's limits are what hold a replica to its budget.
"""

from __future__ import annotations

import torch

from coserve.execution.kv_cache import page_bytes
from coserve.execution.models.spec import DTYPE_BYTES, ModelSpec


def layer_page_bytes(spec: ModelSpec, block_size: int, dtype: torch.dtype) -> int:
    """Bytes of one page (K and V of `block_size` tokens) in one layer."""
    return page_bytes(spec, block_size, 1, dtype)


class HeldLayers:
    """Which layers' KV a replica holds, for replicas whose arrays live elsewhere or nowhere (a remote
    worker's, a simulated replica's)."""

    def __init__(self, num_layers: int):
        self._held = set(range(num_layers))

    def held_layers(self) -> list[int]:
        return sorted(self._held)

    def add_layer(self, index: int) -> None:
        self._held.add(index)

    def drop_layer(self, index: int) -> None:
        self._held.discard(index)


class LayerKV:
    def __init__(self, spec: ModelSpec, num_pages: int, block_size: int, dtype: torch.dtype, layers=None):
        self.spec = spec
        self.num_pages = num_pages
        self.block_size = block_size
        self.dtype = dtype
        self.page_shape = (2, block_size, spec.num_kv_heads, spec.head_dim)
        self.buffers: list[torch.Tensor | None] = [None] * spec.num_layers
        self.layers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * spec.num_layers
        for index in range(spec.num_layers) if layers is None else layers:
            self.add_layer(index)

    def add_layer(self, index: int) -> torch.Tensor:
        shape = (self.num_pages, *self.page_shape)
        numel = self.num_pages * 2 * self.block_size * self.spec.kv_size
        storage = torch.UntypedStorage._new_shared(numel * DTYPE_BYTES[self.dtype])  # zero-filled, lazily
        buffer = torch.empty(0, dtype=self.dtype).set_(storage, 0, shape)
        self.buffers[index] = buffer
        self.layers[index] = (buffer[:, 0], buffer[:, 1])
        return buffer

    def drop_layer(self, index: int) -> None:
        self.buffers[index] = None
        self.layers[index] = None

    @property
    def nbytes(self) -> int:
        """Bytes reserved (address space; memory only where pages are written)."""
        return sum(b.numel() * b.element_size() for b in self.buffers if b is not None)

    def held_layers(self) -> list[int]:
        return [i for i, b in enumerate(self.buffers) if b is not None]

    def read(self, layers: list[int], pages: list[int]) -> torch.Tensor:
        """A copy of these pages in these layers: [len(layers), len(pages), 2, block, heads, dim]."""
        index = torch.tensor(pages, dtype=torch.long)
        return torch.stack([self.buffers[layer].index_select(0, index) for layer in layers])

    def write(self, layers: list[int], pages: list[int], data: torch.Tensor) -> None:
        index = torch.tensor(pages, dtype=torch.long)
        for row, layer in enumerate(layers):
            self.buffers[layer].index_copy_(0, index, data[row])

    def discard(self, data: torch.Tensor) -> None:
        """A host copy from `read` that will never be written back (the tensor is freed with it)."""

    def copy_to(self, other: LayerKV, layers: list[int], pages: list[int]) -> int:
        """Copy these pages of these layers into `other` at the same ids; returns bytes moved."""
        if not layers or not pages:
            return 0
        index = torch.tensor(pages, dtype=torch.long)
        for layer in layers:
            other.buffers[layer].index_copy_(0, index, self.buffers[layer].index_select(0, index))
        return len(layers) * len(pages) * layer_page_bytes(self.spec, self.block_size, self.dtype)
