"""Engine configuration for one model deployment."""

from __future__ import annotations

from dataclasses import dataclass

from coserve.errors import ConfigError

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass
class EngineConfig:
    model: str = DEFAULT_MODEL
    name: str | None = None  # the name requests use; defaults to `model`
    tokenizer: str | None = None  # borrow another model's tokenizer (random-weight models have none)
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0
    block_size: int = 16
    kv_cache_memory_bytes: int | None = None  # CPU default 1 GiB; CUDA default from free memory
    num_kv_blocks: int | None = None  # overrides the byte budget
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    long_prefill_token_threshold: int | None = None
    max_model_len: int | None = None  # defaults to the model's context, capped at 32768
    attention_backend: str = "auto"  # auto | cpu_paged | sdpa_gather
    num_threads: int | None = None  # torch intra-op threads on CPU

    def __post_init__(self) -> None:
        self.name = self.name or self.model
        for field_name in ("block_size", "max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{field_name} must be a positive integer, got {value!r}")
        if self.max_num_batched_tokens < self.max_num_seqs:
            # running requests are served in order; a budget below the batch size would starve the tail
            raise ConfigError(f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= "
                              f"max_num_seqs ({self.max_num_seqs})")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ConfigError(f"num_kv_blocks must be >= 1, got {self.num_kv_blocks}")
        if self.kv_cache_memory_bytes is not None and self.kv_cache_memory_bytes <= 0:
            raise ConfigError(f"kv_cache_memory_bytes must be > 0, got {self.kv_cache_memory_bytes}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
