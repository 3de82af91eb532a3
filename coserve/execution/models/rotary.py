"""Rotary position embeddings with the rope-scaling variants found in Llama, Mistral and Qwen2 configs."""

from __future__ import annotations

import math
from typing import Any

import torch

from coserve.errors import ModelConfigError


def _default_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
    # Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, the band between blended
    factor = scaling["factor"]
    low_freq_factor = scaling.get("low_freq_factor", 1.0)
    high_freq_factor = scaling.get("high_freq_factor", 4.0)
    old_context = scaling["original_max_position_embeddings"]
    low_freq_wavelen = old_context / low_freq_factor
    high_freq_wavelen = old_context / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, blended, scaled)


def _yarn_inv_freq(head_dim: int, theta: float, scaling: dict[str, Any],
                   max_position: int) -> tuple[torch.Tensor, float]:
    factor = scaling["factor"]
    old_context = scaling.get("original_max_position_embeddings") or max_position
    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1
    mscale = scaling.get("mscale")
    mscale_all_dim = scaling.get("mscale_all_dim")

    def get_mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)
        else:
            attention_factor = get_mscale(factor)

    def correction_dim(num_rotations: float) -> float:
        return head_dim * math.log(old_context / (num_rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation = 1.0 - ramp
    pos_freqs = theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv_freq, attention_factor


def rope_inv_freq(head_dim: int, theta: float, scaling: dict[str, Any] | None,
                  max_position: int) -> tuple[torch.Tensor, float]:
    """Inverse frequencies and the attention scaling factor applied to cos/sin."""
    inv_freq = _default_inv_freq(head_dim, theta)
    if not scaling:
        return inv_freq, 1.0
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return inv_freq, 1.0
    if rope_type == "linear":
        return inv_freq / scaling["factor"], 1.0
    if rope_type == "llama3":
        return _llama3_inv_freq(inv_freq, scaling), 1.0
    if rope_type == "freq_factors":  # GGUF's form of the same idea: one divisor per frequency
        return inv_freq / torch.tensor(scaling["factors"], dtype=torch.float32), 1.0
    if rope_type == "yarn":
        return _yarn_inv_freq(head_dim, theta, scaling, max_position)
    if rope_type == "dynamic":
        # Dynamic NTK only changes frequencies beyond the trained context; within it, default RoPE.
        return inv_freq, 1.0
    raise ModelConfigError(f"rope_scaling type {rope_type!r} is not supported")


class RotaryEmbedding:
    """Precomputed cos/sin tables, indexed by absolute token position (non-interleaved halves)."""

    def __init__(self, head_dim: int, theta: float, scaling: dict[str, Any] | None,
                 max_position: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        inv_freq, attention_factor = rope_inv_freq(head_dim, theta, scaling, max_position)
        positions = torch.arange(max_position, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)
        self.cos = (freqs.cos() * attention_factor).to(device=device, dtype=dtype)
        self.sin = (freqs.sin() * attention_factor).to(device=device, dtype=dtype)

    def lookup(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin rows for these positions, shaped [T, 1, D/2] to broadcast over heads."""
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of each head of x [T, H, D] (the Hugging Face layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
