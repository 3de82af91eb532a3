"""The engine for one model: its weights, KV tensors and runner on top of the request lifecycle."""

from __future__ import annotations

import logging
import time

import torch

from coserve.engine.block_pool import BlockPool
from coserve.engine.config import EngineConfig
from coserve.engine.device_pool import DeviceKVPool
from coserve.engine.engine_core import EngineCore
from coserve.engine.kv_cache_manager import KVCacheManager
from coserve.engine.outputs import RequestOutput
from coserve.errors import ConfigError
from coserve.execution.attention import get_attention_backend
from coserve.execution.kv_cache import PagedKVCache, page_bytes
from coserve.execution.memory import host_zeros
from coserve.execution.model_runner import ModelRunner
from coserve.execution.models.llama import LlamaModel
from coserve.execution.models.spec import ModelSpec, parse_dtype
from coserve.execution.sampler import Sampler
from coserve.execution.weights import load_model

logger = logging.getLogger(__name__)

CPU_DEFAULT_KV_BYTES = 1 << 30


def _move_to_huge_pages(model: torch.nn.Module) -> None:
    """Decode streams every weight each step; 2 MiB pages spare the TLB most of the misses."""
    for param in model.parameters():
        moved = host_zeros(tuple(param.shape), param.dtype)
        moved.copy_(param.data)
        param.data = moved


def usable_device(name: str) -> torch.device:
    """`name` as a torch device, ConfigError if this machine has no such device (checked before
    any weight is read, which would otherwise fail deep inside torch)."""
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ConfigError(f"device {name!r} is not on this machine ({count} CUDA devices visible)")
    return device


def max_model_len_of(config: EngineConfig, spec: ModelSpec) -> int:
    if config.max_model_len is not None and config.max_model_len > spec.max_position_embeddings:
        # positions past the trained context give unreliable text, as vLLM refuses them too
        raise ConfigError(f"{config.name}: max_model_len {config.max_model_len} exceeds the model's context of "
                          f"{spec.max_position_embeddings} tokens")
    return config.max_model_len or min(spec.max_position_embeddings, 32768)


def build_model(spec: ModelSpec, state_dict: dict[str, torch.Tensor], max_model_len: int,
                device: torch.device, dtype: torch.dtype) -> LlamaModel:
    """The whole model in inference mode, its weights from a Hugging Face-named state dict."""
    model = LlamaModel(spec, max_position=max_model_len, device=device)
    model.to(device=device, dtype=dtype)
    model.rotary.cos, model.rotary.sin = model.rotary.cos.to(dtype), model.rotary.sin.to(dtype)
    model.load_hf_state_dict(state_dict)
    if device.type == "cpu":
        _move_to_huge_pages(model)
    return model.eval()


class LLMEngine(EngineCore):
    """`pool`: a device's shared page pool; without one the engine owns a pool of its own."""

    def __init__(self, config: EngineConfig, clock=time.monotonic, pool: DeviceKVPool | None = None):
        self.device = usable_device(config.device)
        self.dtype = parse_dtype(config.dtype)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        loaded = load_model(config.model, dtype=self.dtype, seed=config.seed)
        self.config = config  # read by the helpers below before the core is built
        self.spec = loaded.spec
        tokenizer, chat_template = loaded.tokenizer, loaded.chat_template
        if config.tokenizer:
            # only layer 0 is read: the cheapest way to reach another model's tokenizer
            donor = load_model(config.tokenizer, layer_range=(0, 1))
            tokenizer, chat_template = donor.tokenizer, donor.chat_template
        if tokenizer is not None and len(tokenizer) > self.spec.vocab_size:
            raise ConfigError(f"model {config.name!r}: its tokenizer ({config.tokenizer or config.model}) has "
                              f"{len(tokenizer)} tokens but the model embeds only {self.spec.vocab_size}, so text "
                              "prompts would hold ids it cannot read; pair it with a tokenizer of its vocabulary")
        self.max_model_len = max_model_len_of(config, self.spec)
        self.model = self._build_model(loaded.state_dict)
        self.weight_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        self.kv_cache, kv = self._make_kv_cache(pool)
        super().__init__(config, self.spec, kv, clock, tokenizer, chat_template)
        num_blocks = self.kv.pool.num_blocks
        attention = get_attention_backend(config.attention_backend, self.device)
        self.runner = ModelRunner(self.model, self.kv_cache, attention, Sampler(config.seed, self.device), self.device)
        logger.info("%s: %.1f MB weights, %d KV blocks of %d tokens (%.1f MB), max_model_len %d",
                    config.name, self.weight_bytes / 1e6, num_blocks, self.kv.block_size,
                    self.kv_cache.nbytes / 1e6, self.max_model_len)

    def _build_model(self, state_dict: dict[str, torch.Tensor]) -> LlamaModel:
        return build_model(self.spec, state_dict, self.max_model_len, self.device, self.dtype)

    def _make_kv_cache(self, pool: DeviceKVPool | None) -> tuple[PagedKVCache, KVCacheManager]:
        """The KV tensors and this model's view of the page pool (subclasses lay pages out otherwise)."""
        config = self.config
        if pool is not None:
            kv_cache = pool.cache_for(self.spec, self.dtype)
            return kv_cache, KVCacheManager(pool.blocks, kv_cache.block_size, owner=config.name)
        num_blocks = self._num_kv_blocks()
        kv_cache = PagedKVCache(self.spec, num_blocks, config.block_size, self.spec.num_layers, self.dtype,
                                self.device)
        return kv_cache, KVCacheManager(BlockPool(num_blocks), config.block_size, owner=config.name)

    def _num_kv_blocks(self) -> int:
        config = self.config
        if config.num_kv_blocks:
            return config.num_kv_blocks
        budget = config.kv_cache_memory_bytes
        if budget is None and self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            budget = int(free * config.gpu_memory_utilization) - (1 << 30)  # headroom for activations
            if budget <= 0:
                raise ConfigError(f"no GPU memory left for the KV cache on {self.device} "
                                  f"({free / 2**30:.1f} GiB free); set kv_cache_memory_bytes or num_kv_blocks")
        budget = budget or CPU_DEFAULT_KV_BYTES
        page = page_bytes(self.spec, config.block_size, self.spec.num_layers, self.dtype)
        if budget < page:
            raise ConfigError(f"{config.name}: a KV budget of {budget} bytes holds no page ({page} bytes: "
                              f"{config.block_size} tokens over {self.spec.num_layers} layers)")
        return budget // page

    def step(self) -> list[RequestOutput]:
        out = self.begin_step()
        if out is None:
            return []
        try:
            sampled = self.runner.execute(out, self.kv.block_tables) if out.scheduled else {}
        except Exception as exc:  # keep serving: fail this batch, free its pages
            return self.fail_step(out, exc)
        return self.finish_step(out, sampled)

    def _forget(self, request_id: str) -> None:
        self.runner.sampler.forget(request_id)
