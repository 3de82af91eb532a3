"""coserve's small-batch GEMV against F.linear on SmolLM2's layer shapes, one thread.

    python benchmarks/cpu_gemv.py [--rows 1 2 4 6 8 12 16] [--repeats 5]

A decode step of SmolLM2-135M in float32 passes every linear layer once: 30 layers of q/k/v
(960x576), o (576x576), gate/up (3072x576) and down (576x1536), then the LM head (49152x576).
Each layer here holds its own random weights (540 MB in all), so every step streams them from
memory as a real step does. Prints ms per step for each batch size (rows) and writes JSON; ends
with one line of JSON: the kernel's speed-up over F.linear at 2 rows and at the largest row count
the engine sends to the kernel (cpu_kernels.SMALL_BATCH).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from coserve.execution import cpu_kernels

LAYER_SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]
HEAD_SHAPE = (49152, 576)
NUM_LAYERS = 30


def step_seconds(weights: list[torch.Tensor], rows: int, linear, repeats: int) -> float:
    inputs = {w.shape[1]: torch.randn(rows, w.shape[1]) for w in weights}

    def step():
        for w in weights:
            linear(inputs[w.shape[1]], w)

    step()  # first touch of the inputs and the kernel
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 6, 8, 12, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default="results/cpu_gemv.json")
    args = parser.parse_args()

    torch.set_num_threads(1)
    module = cpu_kernels.load()
    if module is None:
        raise SystemExit("the CPU kernels did not build")
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(*shape, generator=gen) for _ in range(NUM_LAYERS) for shape in LAYER_SHAPES]
    weights.append(torch.randn(*HEAD_SHAPE, generator=gen))

    rows_out = []
    print(f"{'rows':>5}{'kernel ms':>11}{'F.linear ms':>13}{'speed-up':>10}")
    for rows in args.rows:
        kernel = step_seconds(weights, rows, lambda x, w: module.small_batch_linear(x, w, None), args.repeats) \
            if rows <= 8 else None  # the kernel takes at most 8 rows
        blas = step_seconds(weights, rows, lambda x, w: F.linear(x, w), args.repeats)
        rows_out.append({"rows": rows, "kernel_ms": kernel and kernel * 1e3, "f_linear_ms": blas * 1e3})
        shown = f"{kernel * 1e3:>11.1f}{blas / kernel:>10.2f}x" if kernel else f"{'-':>11}{'':>10}"
        print(f"{rows:>5}{shown[:11]}{blas * 1e3:>13.1f}{shown[11:]}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"config": vars(args), "steps": rows_out}, indent=1))
    by_rows = {r["rows"]: r for r in rows_out if r["kernel_ms"]}
    headline = {f"kernel_speedup_at_{n}_rows": round(by_rows[n]["f_linear_ms"] / by_rows[n]["kernel_ms"], 3)
                for n in (2, cpu_kernels.SMALL_BATCH) if n in by_rows}
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
