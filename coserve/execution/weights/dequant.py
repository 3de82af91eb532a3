"""GGML tensor types decoded to float32 with vectorised numpy.

Each quantised type stores fixed-size blocks of values; a decoder maps an (n_blocks, block_bytes) uint8
array to (n_blocks, block_values) float32. Byte layouts follow ggml's block_* structs (little-endian).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as T

# bounds peak memory on big tensors: the decoders' int/float temporaries are several times the output
BLOCKS_PER_CHUNK = 1 << 16


@dataclass(frozen=True)
class BlockFormat:
    values: int  # values per block
    nbytes: int  # bytes per block
    decode: Callable[[np.ndarray], np.ndarray]


def _f16(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The fp16 scale at byte `offset` of every block, as an (n, 1) float32 column."""
    raw = np.ascontiguousarray(blocks[:, offset:offset + 2])
    return raw.view(np.float16).astype(np.float32)


def _nibbles(packed: np.ndarray) -> np.ndarray:
    """ggml packs element j in the low nibble of byte j and element j + half in its high nibble."""
    return np.concatenate([packed & 0x0F, packed >> 4], axis=-1)


def _high_bits(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The 5th bit of each of 32 values, stored as a little-endian uint32 bitmask."""
    bits = np.ascontiguousarray(blocks[:, offset:offset + 4]).view(np.uint32)
    return ((bits >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)


def _f32(blocks: np.ndarray) -> np.ndarray:
    return blocks.view(np.float32)


def _f16_values(blocks: np.ndarray) -> np.ndarray:
    return blocks.view(np.float16).astype(np.float32)


def _bf16(blocks: np.ndarray) -> np.ndarray:
    # bf16 is the top half of an fp32
    return (blocks.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def _q8_0(blocks: np.ndarray) -> np.ndarray:
    return _f16(blocks, 0) * blocks[:, 2:].view(np.int8).astype(np.float32)


def _q4_0(blocks: np.ndarray) -> np.ndarray:
    q = _nibbles(blocks[:, 2:]).astype(np.int8) - 8
    return _f16(blocks, 0) * q.astype(np.float32)


def _q4_1(blocks: np.ndarray) -> np.ndarray:
    q = _nibbles(blocks[:, 4:]).astype(np.float32)
    return _f16(blocks, 0) * q + _f16(blocks, 2)


def _q5_0(blocks: np.ndarray) -> np.ndarray:
    q = (_nibbles(blocks[:, 6:]) | (_high_bits(blocks, 2) << 4)).astype(np.int8) - 16
    return _f16(blocks, 0) * q.astype(np.float32)


def _q5_1(blocks: np.ndarray) -> np.ndarray:
    q = (_nibbles(blocks[:, 8:]) | (_high_bits(blocks, 4) << 4)).astype(np.float32)
    return _f16(blocks, 0) * q + _f16(blocks, 2)


def _k_scales(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eight 6-bit scales and eight 6-bit mins squeezed into 12 bytes (ggml's get_scale_min_k4)."""
    low, mid, top = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = np.concatenate([low & 63, (top & 0x0F) | ((low >> 6) << 4)], axis=-1)
    mins = np.concatenate([mid & 63, (top >> 4) | ((mid >> 6) << 4)], axis=-1)
    return scales.astype(np.float32), mins.astype(np.float32)


def _q4_k(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    scales, mins = _k_scales(blocks[:, 4:16])
    # 4 chunks of 32 bytes; each chunk's low nibbles are one 32-value sub-block, high nibbles the next
    qs = blocks[:, 16:].reshape(n, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    q = (qs & 0x0F).reshape(n, 8, 32).astype(np.float32)
    scale = (_f16(blocks, 0) * scales)[..., None]
    offset = (_f16(blocks, 2) * mins)[..., None]
    return (scale * q - offset).reshape(n, 256)


def _q6_k(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    # two halves of 128 values: low 4 bits from 64 bytes of ql, top 2 bits from 32 bytes of qh
    ql = blocks[:, :128].reshape(n, 2, 64)
    qh = blocks[:, 128:192].reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    q = _nibbles(ql) | ((qh & 3).reshape(n, 2, 128) << 4)
    q = q.reshape(n, 16, 16).astype(np.int8) - 32
    scales = blocks[:, 192:208].view(np.int8).astype(np.float32)
    scale = (_f16(blocks, 208) * scales)[..., None]
    return (scale * q.astype(np.float32)).reshape(n, 256)


FORMATS: dict[T, BlockFormat] = {
    T.F32: BlockFormat(1, 4, _f32),
    T.F16: BlockFormat(1, 2, _f16_values),
    T.BF16: BlockFormat(1, 2, _bf16),
    T.Q8_0: BlockFormat(32, 34, _q8_0),
    T.Q4_0: BlockFormat(32, 18, _q4_0),
    T.Q4_1: BlockFormat(32, 20, _q4_1),
    T.Q5_0: BlockFormat(32, 22, _q5_0),
    T.Q5_1: BlockFormat(32, 24, _q5_1),
    T.Q4_K: BlockFormat(256, 144, _q4_k),
    T.Q6_K: BlockFormat(256, 210, _q6_k),
}


def byte_size(ggml_type: int, shape: Sequence[int]) -> int:
    """Bytes a tensor of this type and logical shape occupies in the file."""
    fmt = _format(ggml_type)
    count = math.prod(shape)
    if count % fmt.values:
        raise ValueError(f"{T(ggml_type).name} needs a multiple of {fmt.values} values, got shape {shape}")
    return count // fmt.values * fmt.nbytes


def dequantize(raw: np.ndarray, ggml_type: int, shape: Sequence[int]) -> np.ndarray:
    """Raw file bytes of a tensor (any array viewable as uint8) to float32 of the logical `shape`."""
    fmt = _format(ggml_type)
    data = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    expected = byte_size(ggml_type, shape)
    if data.size != expected:
        raise ValueError(f"{T(ggml_type).name} tensor of shape {tuple(shape)} needs {expected} bytes, "
                         f"got {data.size}")
    blocks = data.reshape(-1, fmt.nbytes)
    out = np.empty((blocks.shape[0], fmt.values), dtype=np.float32)
    for start in range(0, blocks.shape[0], BLOCKS_PER_CHUNK):
        stop = start + BLOCKS_PER_CHUNK
        out[start:stop] = fmt.decode(blocks[start:stop]).reshape(-1, fmt.values)
    return out.reshape(tuple(shape))


def _format(ggml_type: int) -> BlockFormat:
    try:
        return FORMATS[T(ggml_type)]
    except (KeyError, ValueError):
        known = ", ".join(t.name for t in FORMATS)
        raise ValueError(f"unsupported GGML tensor type {ggml_type!r}; supported: {known}") from None
