"""The one interface every attention implementation offers, and the registry that picks one."""

from __future__ import annotations

from typing import Protocol

import torch

from coserve.errors import ConfigError
from coserve.execution.attention.metadata import AttentionMetadata


class AttentionBackend(Protocol):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
                scale: float, sliding_window: int | None) -> torch.Tensor:
        """Write this step's k/v into the paged cache, then attend.

        q: [T, Hq, D]; k, v: [T, Hkv, D]; caches: [num_blocks, block_size, Hkv, D] (views of the
        page pool for one layer). Returns [T, Hq, D].
        """
        ...


ATTENTION_BACKENDS = ("auto", "sdpa_gather", "cpu_paged")


def get_attention_backend(name: str, device: torch.device | str = "cpu") -> AttentionBackend:
    """`auto` picks the in-place CPU kernel when it builds, else the portable gather + SDPA path."""
    from coserve.execution import cpu_kernels
    from coserve.execution.attention.cpu_paged import CpuPagedBackend
    from coserve.execution.attention.sdpa_gather import SdpaGatherBackend

    if name not in ATTENTION_BACKENDS:
        raise ConfigError(f"attention_backend must be one of {list(ATTENTION_BACKENDS)}, got {name!r}")
    on_cpu = torch.device(device).type == "cpu"
    if name == "sdpa_gather" or (name == "auto" and not on_cpu):
        return SdpaGatherBackend()
    if not on_cpu:
        raise ConfigError("attention_backend 'cpu_paged' runs on the CPU only")
    kernel = cpu_kernels.load()
    if kernel is None:
        if name == "cpu_paged":
            raise ConfigError("attention_backend 'cpu_paged' could not be built (see the log)")
        return SdpaGatherBackend()
    return CpuPagedBackend(kernel)
