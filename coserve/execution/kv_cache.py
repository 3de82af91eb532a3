"""Page-major KV storage for one model: page i holds `block_size` tokens of every held layer.

Keeping a page's bytes contiguous is what lets models of different shapes share one pool of
equal-byte pages (each model fits as many of its tokens into a page as the bytes allow).
"""

from __future__ import annotations

import torch

from coserve.execution.memory import host_zeros
from coserve.execution.models.spec import DTYPE_BYTES, ModelSpec


def page_bytes(spec: ModelSpec, block_size: int, num_layers: int, dtype: torch.dtype) -> int:
    return num_layers * 2 * block_size * spec.kv_size * DTYPE_BYTES[dtype]


class PagedKVCache:
    def __init__(self, spec: ModelSpec, num_blocks: int, block_size: int, num_layers: int,
                 dtype: torch.dtype, device: torch.device | str = "cpu",
                 buffer: torch.Tensor | None = None):
        shape = (num_blocks, num_layers, 2, block_size, spec.num_kv_heads, spec.head_dim)
        if buffer is None:
            # zeroed, not empty: masked-out slots are still multiplied by zero weights in SDPA
            on_cpu = torch.device(device).type == "cpu"
            buffer = host_zeros(shape, dtype) if on_cpu else torch.zeros(shape, dtype=dtype, device=device)
        self.buffer = buffer.view(shape)
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.layers = [(self.buffer[:, i, 0], self.buffer[:, i, 1]) for i in range(num_layers)]

    @property
    def nbytes(self) -> int:
        return self.buffer.numel() * self.buffer.element_size()
