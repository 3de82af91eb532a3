"""One KV page pool per device, shared by every model placed on it (MuxServe's unified KV cache).

Pages are equal runs of bytes. Each model fits as many of its own tokens into a page as the bytes
allow (its `tokens_per_page`), so models with different layer counts, KV heads or head sizes
draw on the same pages, and a page one model frees is usable by any other at once. This is vLLM's
equal-page-bytes idea applied across models; MuxServe instead splits blocks per attention head.
The cost of equal pages is coarser granularity for models with small KV per token, bounded by
sizing pages for the largest model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from coserve.engine.block_pool import BlockPool
from coserve.engine.config import EngineConfig
from coserve.errors import ConfigError
from coserve.execution.kv_cache import PagedKVCache
from coserve.execution.memory import host_zeros
from coserve.execution.models.spec import ModelSpec, parse_dtype
from coserve.execution.weights import load_model


@dataclass(frozen=True)
class PageLayout:
    page_bytes: int
    num_pages: int

    @staticmethod
    def page_bytes_for(specs: list[tuple[ModelSpec, torch.dtype]], min_tokens_per_page: int = 16) -> int:
        """Pages big enough for `min_tokens_per_page` tokens of the model with the most KV per token."""
        if not specs:
            raise ConfigError("a device pool needs at least one model")
        return max(spec.kv_bytes_per_token(dtype) for spec, dtype in specs) * min_tokens_per_page

    @classmethod
    def for_models(cls, specs: list[tuple[ModelSpec, torch.dtype]], budget_bytes: int,
                   min_tokens_per_page: int = 16) -> PageLayout:
        page_bytes = cls.page_bytes_for(specs, min_tokens_per_page)
        num_pages = budget_bytes // page_bytes
        if num_pages < 1:
            raise ConfigError(f"a KV budget of {budget_bytes} bytes holds no page of {page_bytes} bytes")
        return cls(page_bytes, num_pages)

    @classmethod
    def for_configs(cls, configs: list[EngineConfig], budget_bytes: int) -> PageLayout:
        """The layout for these deployments; reads each model's shape, not its weights."""
        specs = [(load_model(c.model, tokenizer=False, layer_range=(0, 1)).spec, parse_dtype(c.dtype))
                 for c in configs]
        return cls.for_models(specs, budget_bytes)


class DeviceKVPool:
    def __init__(self, layout: PageLayout, device: torch.device | str = "cpu"):
        self.layout = layout
        self.device = torch.device(device)
        shape = (layout.num_pages, layout.page_bytes)
        on_cpu = self.device.type == "cpu"
        self.buffer = host_zeros(shape, torch.uint8) if on_cpu else torch.zeros(shape, dtype=torch.uint8,
                                                                                 device=self.device)
        self.blocks = BlockPool(layout.num_pages)

    def tokens_per_page(self, spec: ModelSpec, dtype: torch.dtype) -> int:
        return self.layout.page_bytes // spec.kv_bytes_per_token(dtype)

    def cache_for(self, spec: ModelSpec, dtype: torch.dtype) -> PagedKVCache:
        """This model's view of every page: [pages, layers, 2, tokens_per_page, kv_heads, head_dim]."""
        tokens = self.tokens_per_page(spec, dtype)
        if tokens < 1:
            raise ConfigError(f"a page of {self.layout.page_bytes} bytes cannot hold one token of a model "
                              f"needing {spec.kv_bytes_per_token(dtype)} bytes per token")
        used = tokens * spec.kv_bytes_per_token(dtype)
        typed = self.buffer[:, :used].view(dtype)  # same bytes, read as this model's dtype
        return PagedKVCache(spec, self.layout.num_pages, tokens, spec.num_layers, dtype, self.device, typed)

    def set_quotas(self, quotas: dict[str, int], fixed: bool = False) -> None:
        self.blocks.set_quotas(quotas, fixed)


def initial_quotas(demands: dict[str, float], num_pages: int) -> dict[str, int]:
    """Split pages in proportion to each model's demand (request rate x KV bytes per token).

    Every model gets at least one page; rounding leftovers go to the largest demands first.
    """
    if not demands or any(d < 0 for d in demands.values()):
        raise ConfigError(f"demands must be non-negative, got {demands}")
    if num_pages < len(demands):
        raise ConfigError(f"{num_pages} pages cannot give {len(demands)} models one page each")
    total = sum(demands.values()) or float(len(demands))
    shares = {m: (d if sum(demands.values()) else 1.0) / total * num_pages for m, d in demands.items()}
    quotas = {m: max(1, int(s)) for m, s in shares.items()}
    for model in sorted(demands, key=lambda m: shares[m] - int(shares[m]), reverse=True):
        if sum(quotas.values()) >= num_pages:
            break
        quotas[model] += 1
    while sum(quotas.values()) > num_pages:  # minimum-one pages pushed us over: trim the largest
        quotas[max(quotas, key=quotas.get)] -= 1
    return quotas
