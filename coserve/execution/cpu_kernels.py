"""coserve's small C++ CPU kernels (csrc/), compiled on first use and cached per machine.

torch's JIT extension loader builds them once (about 30 s) into ~/.cache/torch_extensions. Where
no compiler is available everything falls back to plain PyTorch, only slower.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import threading
from pathlib import Path

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

_SOURCES = [Path(__file__).parent / "csrc" / name for name in ("bindings.cpp", "paged_decode.cpp", "small_gemm.cpp")]
_lock = threading.Lock()
_module = None
_failure: str | None = None


def load():
    """The compiled module, or None (the reason logged once) when it cannot be built."""
    global _module, _failure
    with _lock:
        if _module is None and _failure is None:
            try:
                from torch.utils.cpp_extension import load as build

                # -fopenmp turns at::parallel_for on (without it the kernels run on one thread)
                flags = ["-O3", "-march=native", "-fopenmp"]
                _module = build(f"coserve_cpu_kernels_{_cpu_fingerprint()}", [str(s) for s in _SOURCES],
                                extra_cflags=flags, extra_ldflags=["-fopenmp"], verbose=False)
            except Exception as exc:  # no compiler or headers: the PyTorch paths still work
                _failure = f"{type(exc).__name__}: {exc}"
                logger.warning("coserve CPU kernels unavailable, using PyTorch paths: %s", _failure)
    return _module


def _cpu_fingerprint() -> str:
    """-march=native code must not be reused on another CPU model: key the build by the CPU."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = platform.processor()
    return hashlib.sha1(flags.encode()).hexdigest()[:10]


SMALL_BATCH = 8  # up to here our GEMV beats BLAS on one core (tiled: weights stream once per step)


def linear(x: torch.Tensor, layer: torch.nn.Module) -> torch.Tensor:
    """F.linear with `layer`'s weight (and bias, if it has one); decode-sized float32 batches on
    CPU stream the weights through our GEMV instead of BLAS."""
    bias = getattr(layer, "bias", None)
    if x.shape[0] <= SMALL_BATCH and x.dtype == torch.float32 and x.device.type == "cpu":
        module = _module if _module is not None else load()
        if module is not None:
            return module.small_batch_linear(x, layer.weight, bias)
    return F.linear(x, layer.weight, bias)
