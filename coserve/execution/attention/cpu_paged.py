"""CPU attention that reads decode K/V in place from the pages (csrc/paged_decode.cpp).

Prefill chunks still go through the portable SDPA path: they are few per step and SDPA's flash
kernel is good at them.
"""

from __future__ import annotations

import torch

from coserve.execution.attention.metadata import AttentionMetadata
from coserve.execution.attention.sdpa_gather import SdpaGatherBackend


class CpuPagedBackend(SdpaGatherBackend):
    def __init__(self, kernel) -> None:
        self.kernel = kernel

    def _decode(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                meta: AttentionMetadata, scale: float, sliding_window: int | None) -> torch.Tensor:
        out = torch.empty_like(q)
        self.kernel.paged_decode_attention(out, q.contiguous(), k_cache, v_cache, meta.decode_block_tables,
                                           meta.decode_context_lens, scale, sliding_window or 0)
        return out
