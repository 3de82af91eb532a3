"""ModelSpec: the shape of a Llama-family model, derived from its config (never from a table)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from coserve.errors import ModelConfigError
from coserve.validation import is_count

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}

DTYPE_BYTES = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2}
DTYPE_NAMES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtype.removeprefix("torch.")
    if name not in DTYPE_NAMES:
        raise ModelConfigError(f"dtype must be one of {sorted(DTYPE_NAMES)}, got {dtype!r}")
    return DTYPE_NAMES[name]


@dataclass(frozen=True)
class ModelSpec:
    architecture: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    sliding_window: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    # every id the config treats as end of sequence (Llama 3 lists several)
    eos_token_ids: tuple[int, ...] = field(default=(), hash=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim",
                     "intermediate_size", "vocab_size", "max_position_embeddings"):
            value = getattr(self, name)
            if not is_count(value) or value <= 0:
                raise ModelConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ModelConfigError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")

    # -- conversions ---------------------------------------------------------------------------

    @classmethod
    def from_hf_config(cls, config: dict[str, Any]) -> ModelSpec:
        """ModelConfigError for a config that is not a usable one (a field missing or of the wrong type)."""
        if not isinstance(config, dict):
            raise ModelConfigError(f"a model config is a JSON object, got {type(config).__name__}")
        try:
            return cls._from_hf_config(config)
        except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError) as exc:
            if isinstance(exc, ModelConfigError):
                raise
            detail = f"missing field {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
            raise ModelConfigError(f"the model config cannot be read ({detail})") from exc

    @classmethod
    def _from_hf_config(cls, config: dict[str, Any]) -> ModelSpec:
        archs = config.get("architectures") or ["LlamaForCausalLM"]
        if isinstance(archs, str) or not isinstance(archs, list):
            raise ModelConfigError(f"architectures must be a list of names, got {archs!r}")
        arch = archs[0]
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ModelConfigError(
                f"architecture {arch!r} is not supported; supported: {sorted(SUPPORTED_ARCHITECTURES)}")
        num_heads = config["num_attention_heads"]
        head_dim = config.get("head_dim") or config["hidden_size"] // num_heads
        family = SUPPORTED_ARCHITECTURES[arch]
        rope_scaling = config.get("rope_scaling")
        rope_theta = config.get("rope_theta")
        rope_parameters = config.get("rope_parameters")  # transformers >= 5 folds theta in here
        if rope_parameters:
            rope_theta = rope_theta or rope_parameters.get("rope_theta")
            if rope_parameters.get("rope_type", "default") != "default":
                rope_scaling = {k: v for k, v in rope_parameters.items() if k != "rope_theta"}
        if rope_scaling and rope_scaling.get("rope_type", rope_scaling.get("type")) == "default":
            rope_scaling = None
        sliding_window = config.get("sliding_window") if family == "mistral" else None
        if family == "qwen2" and config.get("use_sliding_window"):
            sliding_window = config.get("sliding_window")
        eos = config.get("eos_token_id")
        return cls(
            architecture=arch,
            num_layers=config["num_hidden_layers"],
            hidden_size=config["hidden_size"],
            num_heads=num_heads,
            num_kv_heads=config.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            intermediate_size=config["intermediate_size"],
            vocab_size=config["vocab_size"],
            max_position_embeddings=config.get("max_position_embeddings", 4096),
            rms_norm_eps=config.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta or 10000.0),
            rope_scaling=rope_scaling,
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            attention_bias=bool(config.get("attention_bias", family == "qwen2")),
            sliding_window=sliding_window,
            bos_token_id=config.get("bos_token_id"),
            eos_token_id=eos[0] if isinstance(eos, list) else eos,
            eos_token_ids=tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,)),
        )

    def to_hf_config(self) -> dict[str, Any]:
        """A config dict that transformers' own model class accepts (used by tests and tools)."""
        rope_parameters = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling:
            rope_parameters = {**self.rope_scaling, "rope_theta": self.rope_theta}
            rope_parameters.setdefault("rope_type", rope_parameters.pop("type", "default"))
        config = {
            "architectures": [self.architecture],
            "model_type": SUPPORTED_ARCHITECTURES[self.architecture],
            "num_hidden_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling,
            "rope_parameters": rope_parameters,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "hidden_act": "silu",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
        }
        if self.sliding_window:
            config["sliding_window"] = self.sliding_window
            config["use_sliding_window"] = True
        return config

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # -- sizes ---------------------------------------------------------------------------------

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def layer_params(self) -> int:
        attn = self.hidden_size * (self.q_size + 2 * self.kv_size) + self.q_size * self.hidden_size
        if self.attention_bias:
            attn += self.q_size + 2 * self.kv_size
        mlp = 3 * self.hidden_size * self.intermediate_size
        return attn + mlp + 2 * self.hidden_size

    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    def head_params(self) -> int:
        """Final norm plus the LM head (zero extra when tied to the embedding)."""
        return self.hidden_size + (0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size)

    def end_parts(self, start: int, end: int) -> set[str]:
        """The weights outside the decoder layers that a stage over [start, end) uses: the embedding
        to begin the model and the LM head to end it; a tied head is the embedding itself. (The final
        norm is not a part: every stage keeps its few bytes.)"""
        parts = set()
        if start == 0 or (end == self.num_layers and self.tie_word_embeddings):
            parts.add("embedding")
        if end == self.num_layers and not self.tie_word_embeddings:
            parts.add("head")
        return parts

    def part_params(self, part: str) -> int:
        """The embedding and an untied head are both vocab x hidden."""
        if part not in ("embedding", "head") or (part == "head" and self.tie_word_embeddings):
            raise ValueError(f"{part!r} is not a part of this model")
        return self.vocab_size * self.hidden_size

    def num_params(self, start: int = 0, end: int | None = None) -> int:
        """Parameters held by a stage running layers [start, end)."""
        end = self.num_layers if end is None else end
        total = (end - start) * self.layer_params()
        if start == 0:
            total += self.embedding_params()
        if end == self.num_layers:
            # a stage that holds the head but not the embedding needs its own copy when tied
            total += self.head_params()
            if self.tie_word_embeddings and start != 0:
                total += self.embedding_params()
        return total

    def param_bytes(self, dtype: torch.dtype = torch.float16, start: int = 0, end: int | None = None) -> int:
        return self.num_params(start, end) * DTYPE_BYTES[dtype]

    def kv_bytes_per_token(self, dtype: torch.dtype = torch.float16, num_layers: int | None = None) -> int:
        layers = self.num_layers if num_layers is None else num_layers
        return 2 * layers * self.kv_size * DTYPE_BYTES[dtype]

    def flops_per_token(self, context_len: int = 0) -> float:
        """Forward FLOPs for one token attending over context_len earlier tokens."""
        matmul = 2 * self.num_layers * (self.layer_params() - 2 * self.hidden_size)
        attention = 4 * self.num_layers * self.q_size * context_len
        return float(matmul + attention + 2 * self.vocab_size * self.hidden_size)
