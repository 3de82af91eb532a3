"""coserve's small C++ CPU kernels (csrc/), compiled on first use and cached per machine.

torch's JIT extension loader builds them once (about 30 s) into ~/.cache/torch_extensions. Where
no compiler is available everything falls back to plain PyTorch, only slower.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import threading
import time
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
                name = f"coserve_cpu_kernels_{_cpu_fingerprint()}"
                clear_stale_lock(_build_dir(name))
                _module = build(name, [str(s) for s in _SOURCES], extra_cflags=flags, extra_ldflags=["-fopenmp"],
                                verbose=False)
            except Exception as exc:  # no compiler or headers: the PyTorch paths still work
                _failure = f"{type(exc).__name__}: {exc}"
                logger.warning("coserve CPU kernels unavailable, using PyTorch paths: %s", _failure)
    return _module


STALE_LOCK_S = 300.0  # a build takes about 30 s (a minute on a slow VM)


def _build_dir(name: str) -> Path:
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(name, verbose=False))


def clear_stale_lock(build_dir: Path) -> None:
    """torch's loader waits, with no time limit, while another process's build holds `lock` in the
    build folder; a build that was killed leaves the lock behind, and every later start would hang
    on it. A lock older than any build takes is such a leftover: remove it."""
    lock = build_dir / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except OSError:  # no lock: nobody is building
        return
    if age > STALE_LOCK_S:
        logger.warning("removing %s, left %.0f s ago by a kernel build that did not finish", lock, age)
        lock.unlink(missing_ok=True)


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
