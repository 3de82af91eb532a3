"""Cost models: how long a job takes on (a share of) a device.

`roofline` predicts prefill and decode durations from a model's shape and a hardware spec; the
simulator and the placement planner call it through `prefill_seconds` / `decode_seconds`, and a
model fitted to profiles can later sit behind the same functions.
"""

from coserve.costmodel.hardware import BUILTIN, HardwareSpec, get_hardware
from coserve.costmodel.roofline import JobCost, decode_cost, decode_seconds, prefill_cost, prefill_seconds

__all__ = [
    "BUILTIN", "HardwareSpec", "JobCost", "decode_cost", "decode_seconds", "get_hardware", "prefill_cost",
    "prefill_seconds",
]
