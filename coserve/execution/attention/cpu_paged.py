"""CPU attention that reads decode K/V in place from the pages (a small C++ kernel, built on first use).

Prefill chunks still go through the portable SDPA path: they are few per step and SDPA's flash
kernel is good at them. The kernel is compiled once per machine with torch's JIT extension loader
and cached under ~/.cache/torch_extensions; if no compiler is available the engine falls back to
the portable backend.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch

from coserve.execution.attention.metadata import AttentionMetadata
from coserve.execution.attention.sdpa_gather import SdpaGatherBackend

logger = logging.getLogger(__name__)

_SOURCE = Path(__file__).parent / "csrc" / "paged_decode.cpp"
_lock = threading.Lock()
_kernel = None
_failed: str | None = None


def load_kernel():
    """The compiled module, or None (with the reason logged once) when it cannot be built."""
    global _kernel, _failed
    with _lock:
        if _kernel is None and _failed is None:
            try:
                from torch.utils.cpp_extension import load

                flags = ["-O3", "-march=native", "-fopenmp-simd"]
                _kernel = load("coserve_paged_decode", [str(_SOURCE)], extra_cflags=flags, verbose=False)
            except Exception as exc:  # no compiler, no headers: the portable path still works
                _failed = f"{type(exc).__name__}: {exc}"
                logger.warning("CPU paged attention kernel unavailable, using sdpa_gather: %s", _failed)
    return _kernel


class CpuPagedBackend(SdpaGatherBackend):
    def __init__(self, kernel) -> None:
        self.kernel = kernel

    def _decode(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                meta: AttentionMetadata, scale: float, sliding_window: int | None) -> torch.Tensor:
        out = torch.empty_like(q)
        self.kernel.paged_decode_attention(out, q.contiguous(), k_cache, v_cache, meta.decode_block_tables,
                                           meta.decode_context_lens, scale, sliding_window or 0)
        return out
