"""Host memory for large, long-lived tensors (KV pages, weights), backed by transparent huge pages.

The KV pool is read in small scattered runs (a page per block), and with 4 KiB pages nearly every
run is a TLB miss. Asking the kernel for 2 MiB pages (madvise) removes most of them. Where that is
not possible (not Linux, THP disabled) the tensor is an ordinary allocation.
"""

from __future__ import annotations

import contextlib
import math
import mmap

import torch

_HUGE_PAGE = 2 << 20


def host_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zero-filled CPU tensor whose memory the kernel may back with huge pages."""
    numel = math.prod(shape)
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    if nbytes < _HUGE_PAGE or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.zeros(shape, dtype=dtype)
    region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    with contextlib.suppress(OSError):  # without huge pages it is still a valid zeroed allocation
        region.madvise(mmap.MADV_HUGEPAGE)
    # the tensor keeps the mapping alive through the buffer protocol
    return torch.frombuffer(region, dtype=dtype, count=numel).view(shape)
