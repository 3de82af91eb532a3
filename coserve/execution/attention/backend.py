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


def get_attention_backend(name: str) -> AttentionBackend:
    from coserve.execution.attention.sdpa_gather import SdpaGatherBackend

    backends = {"sdpa_gather": SdpaGatherBackend}
    if name not in backends:
        raise ConfigError(f"attention_backend must be one of {sorted(backends)}, got {name!r}")
    return backends[name]()
