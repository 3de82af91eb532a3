"""Seeded random weights for any ModelSpec, in Hugging Face names.

Every tensor draws from its own generator seeded by (seed, name), so a pipeline stage's tensors equal
the same-named tensors of the whole model, whatever layer range asked for them.
"""

from __future__ import annotations

import zlib

import torch

from coserve.execution.models.spec import ModelSpec
from coserve.execution.weights.names import Shape, expected_shapes

INIT_STD = 0.02  # the initializer_range of Llama-family configs


def random_state_dict(spec: ModelSpec, seed: int = 0, dtype: torch.dtype = torch.float32,
                      layer_range: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    return {name: random_tensor(name, shape, seed).to(dtype)
            for name, shape in expected_shapes(spec, layer_range).items()}


def random_tensor(name: str, shape: Shape, seed: int) -> torch.Tensor:
    if name.endswith("norm.weight"):
        return torch.ones(shape)
    generator = torch.Generator().manual_seed(_tensor_seed(name, seed))
    # biases get the same small noise as matrices so a model that drops them computes visibly different
    return torch.randn(shape, generator=generator) * INIT_STD


def _tensor_seed(name: str, seed: int) -> int:
    # crc32 is stable across processes, unlike hash(); the mix keeps (seed, name) pairs apart
    return (seed * 0x9E3779B1 + zlib.crc32(name.encode())) % (1 << 63)
