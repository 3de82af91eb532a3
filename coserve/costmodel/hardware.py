"""Accelerator specs the roofline cost model reads: peak FLOP/s per dtype, memory, links.

Numbers are the vendors' published dense (no sparsity) figures for the SXM parts. Memory sizes are
what `nvidia-smi` reports as total, since that is what a process can address. Any field can be
overridden (`get_hardware(name, overrides=...)`), which is how `cpu-local` gets a real machine's
numbers: its built-in values describe a small 2-core VM and are placeholders, not measurements.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from coserve.errors import ConfigError
from coserve.validation import is_finite_number

GB = 1e9  # bandwidths are quoted in decimal GB/s
MIB = 1 << 20
INTERCONNECTS = ("nvlink", "pcie")


@dataclass(frozen=True)
class HardwareSpec:
    name: str
    peak_flops: dict[str, float] = field(hash=False)  # dense FLOP/s by dtype name ("float16", ...)
    memory_bytes: int  # device memory one process can address
    memory_bandwidth: float  # bytes/s, HBM (or DRAM for cpu-local)
    nvlink_bandwidth: float  # bytes/s per direction per device; 0 when the part has none
    pcie_bandwidth: float  # bytes/s per direction per device
    network_bandwidth: float  # bytes/s per node between nodes
    # One collective (all-reduce, send) costs at least this much however small the message; NCCL's
    # small-message all-reduce latency inside an NVLink node is in the 5-20 us range.
    collective_latency_s: float = 10e-6
    # Memory a serving process takes before weights and KV: MuxServe budgets 1.6 GB for the two
    # CUDA contexts (prefill and decode process) of one model, i.e. 0.8 GB each.
    process_overhead_bytes: int = 800 * MIB
    # Fraction of the compute units that already saturates memory bandwidth. MuxServe's Fig. 2:
    # LLaMA-7B decode barely slows when cut from 100% to 30% of the SMs; 40% is a conservative knee.
    bandwidth_saturation_share: float = 0.4
    interconnect: str = "nvlink"  # the intra-node link that tensor and pipeline parallelism use

    def __post_init__(self) -> None:
        if self.interconnect not in INTERCONNECTS:
            raise ConfigError(f"cluster.interconnect must be one of {INTERCONNECTS}, got {self.interconnect!r}")
        if self.interconnect == "nvlink" and self.nvlink_bandwidth <= 0:
            raise ConfigError(f"cluster.interconnect: {self.name} has no NVLink; use 'pcie'")
        for name in _NUMBERS:
            value = getattr(self, name)
            if not is_finite_number(value) or value < 0 or (value == 0 and name in _POSITIVE):
                must = "positive" if name in _POSITIVE else "non-negative"
                raise ConfigError(f"cluster.hardware.{name} must be a finite {must} number, got {value!r}")
        if self.process_overhead_bytes >= self.memory_bytes:
            raise ConfigError(f"cluster.hardware.process_overhead_bytes ({self.process_overhead_bytes}) leaves "
                              f"nothing of memory_bytes ({self.memory_bytes})")
        if not 0 < self.bandwidth_saturation_share <= 1:
            raise ConfigError("cluster.hardware.bandwidth_saturation_share must be in (0, 1], "
                              f"got {self.bandwidth_saturation_share}")
        if not isinstance(self.peak_flops, dict) or not self.peak_flops \
                or not all(is_finite_number(v) and v > 0 for v in self.peak_flops.values()):
            raise ConfigError(f"cluster.hardware.peak_flops must map dtypes to positive FLOP/s, got {self.peak_flops}")

    @property
    def link_bandwidth(self) -> float:
        """Bytes/s per direction of the link between devices of one node."""
        return self.nvlink_bandwidth if self.interconnect == "nvlink" else self.pcie_bandwidth

    def flops(self, dtype: str) -> float:
        if dtype not in self.peak_flops:
            raise ConfigError(f"dtype {dtype!r} has no peak FLOP/s on {self.name}; known: {sorted(self.peak_flops)}")
        return self.peak_flops[dtype]


_NUMBERS = ("memory_bytes", "memory_bandwidth", "nvlink_bandwidth", "pcie_bandwidth", "network_bandwidth",
            "collective_latency_s", "process_overhead_bytes")
_POSITIVE = {"memory_bytes", "memory_bandwidth", "pcie_bandwidth", "network_bandwidth"}



def _gpu_flops(half: float, single: float) -> dict[str, float]:
    return {"float16": half, "bfloat16": half, "float32": single}


BUILTIN: dict[str, HardwareSpec] = {
    # A100 SXM4 80GB: 312 TFLOP/s fp16 tensor, 19.5 fp32 (PyTorch leaves TF32 matmul off by default);
    # 2.039 TB/s HBM2e; NVLink3 600 GB/s both ways; PCIe 4 x16; HDR InfiniBand 200 Gb/s (MuxServe's).
    "A100-80GB": HardwareSpec("A100-80GB", _gpu_flops(312e12, 19.5e12), 81920 * MIB, 2039 * GB,
                              300 * GB, 32 * GB, 25 * GB),
    # H100 SXM5 80GB: 989 TFLOP/s fp16, 67 fp32; 3.35 TB/s HBM3; NVLink4 900 GB/s; PCIe 5; NDR 400 Gb/s.
    "H100-80GB": HardwareSpec("H100-80GB", _gpu_flops(989e12, 67e12), 81559 * MIB, 3350 * GB,
                              450 * GB, 64 * GB, 50 * GB),
    # H200 SXM: H100's compute with 141 GB HBM3e at 4.8 TB/s.
    "H200": HardwareSpec("H200", _gpu_flops(989e12, 67e12), 143771 * MIB, 4800 * GB, 450 * GB, 64 * GB, 50 * GB),
    # A small CPU box: 2 AVX2 cores at ~2.5 GHz (2 FMA ports x 8 fp32 lanes x 2 FLOP = 80 GFLOP/s a
    # core), 16 GiB, ~20 GB/s DRAM; no NVLink. Placeholders: give your machine's numbers.
    "cpu-local": HardwareSpec("cpu-local", {"float32": 160e9, "bfloat16": 80e9, "float16": 80e9},
                              16 << 30, 20 * GB, 0.0, 10 * GB, 1.25 * GB, collective_latency_s=50e-6,
                              process_overhead_bytes=200 * MIB, bandwidth_saturation_share=0.5,
                              interconnect="pcie"),
}

OVERRIDABLE = {f.name for f in fields(HardwareSpec)} - {"name", "interconnect"}


def get_hardware(name: str, interconnect: str | None = None, overrides: dict[str, Any] | None = None,
                 field_name: str = "cluster.gpu") -> HardwareSpec:
    """The built-in spec called `name`, with `interconnect` and any field in `overrides` replaced.

    An unknown name or override raises ConfigError naming `field_name` (or the override's field).
    """
    if name not in BUILTIN:
        raise ConfigError(f"{field_name}: unknown GPU type {name!r}; known: {', '.join(BUILTIN)}")
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - OVERRIDABLE)
    if unknown:
        raise ConfigError(f"cluster.hardware: unknown fields {unknown}; known: {sorted(OVERRIDABLE)}")
    if "peak_flops" in overrides:
        if not isinstance(overrides["peak_flops"], dict):
            raise ConfigError("cluster.hardware.peak_flops must map dtypes to FLOP/s, e.g. {float16: 312e12}, "
                              f"got {overrides['peak_flops']!r}")
        overrides["peak_flops"] = {**BUILTIN[name].peak_flops, **overrides["peak_flops"]}
    if interconnect is not None:
        overrides["interconnect"] = interconnect
    return replace(BUILTIN[name], **overrides)


def overrides_of(spec: HardwareSpec) -> dict[str, Any]:
    """The fields of `spec` that differ from its built-in namesake: what `get_hardware` needs to
    rebuild it (a placement file carries them, so the simulator sees the spec the planner used)."""
    base = BUILTIN[spec.name]
    return {name: getattr(spec, name) for name in sorted(OVERRIDABLE) if getattr(spec, name) != getattr(base, name)}
