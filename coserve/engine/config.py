"""Engine configuration for one model deployment."""

from __future__ import annotations

import re
from dataclasses import dataclass

from coserve.errors import ConfigError
from coserve.execution.attention.backend import ATTENTION_BACKENDS
from coserve.execution.models.spec import DTYPE_NAMES
from coserve.validation import is_count, is_finite_number, whole_number

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
        for field_name in ("model", "name", "tokenizer", "dtype", "device", "attention_backend"):
            value = getattr(self, field_name)
            if not (value is None and field_name in ("name", "tokenizer")) and not (isinstance(value, str) and value):
                raise ConfigError(f"{field_name} must be a non-empty string, got {value!r}")
        self.name = self.name or self.model
        counts = {"block_size": False, "max_num_seqs": False, "max_num_batched_tokens": False, "num_kv_blocks": True,
                  "long_prefill_token_threshold": True, "max_model_len": True, "num_threads": True}
        for field_name, optional in counts.items():
            value = getattr(self, field_name)
            if not (optional and value is None) and not (is_count(value) and value >= 1):
                raise ConfigError(f"{field_name} must be a positive integer{' or None' if optional else ''}, "
                                  f"got {value!r}")
        if not (is_count(self.seed) and self.seed >= 0):
            raise ConfigError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.max_num_batched_tokens < self.max_num_seqs:
            # running requests are served in order; a budget below the batch size would starve the tail
            raise ConfigError(f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= "
                              f"max_num_seqs ({self.max_num_seqs})")
        budget = self.kv_cache_memory_bytes
        if budget is not None:
            if whole_number(budget) is None or budget <= 0:
                raise ConfigError(f"kv_cache_memory_bytes must be a whole number of bytes > 0, got {budget!r}")
            self.kv_cache_memory_bytes = whole_number(budget)  # 1e9 from a script is a fine budget
        if not (is_finite_number(self.gpu_memory_utilization) and 0 < self.gpu_memory_utilization <= 1):
            raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization!r}")
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.dtype.removeprefix("torch.") not in DTYPE_NAMES:  # checked before any weight is read
            raise ConfigError(f"dtype must be one of {sorted(DTYPE_NAMES)}, got {self.dtype!r}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ConfigError(f"attention_backend must be one of {list(ATTENTION_BACKENDS)}, "
                              f"got {self.attention_backend!r}")
