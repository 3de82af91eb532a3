"""How well a cost file's fit prices its own timed jobs, by new tokens per job.

    python benchmarks/cost_fit_buckets.py costs/small.cpu-1core.json [more cost files]

For each lane size, the jobs profiled alone are grouped by new tokens (1, 2-8, 9-16, ... 257-512)
and each group prints its count and the total measured over the total the fit predicts: where a
group has few jobs the fit may price it long or short, and served prompts that fall there are
simulated that much off. Reads the files only; runs nothing.
"""

from __future__ import annotations

import argparse

import numpy as np

from coserve.simulator.cost import FittedModel

BUCKETS = ((1, 1), (2, 8), (9, 16), (17, 32), (33, 64), (65, 128), (129, 256), (257, 512))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cost_files", nargs="+")
    for path in parser.parse_args().cost_files:
        model = FittedModel.load(path)
        for size, kinds in model.samples.items():
            jobs = kinds["alone"]
            tokens = np.array([shape.tokens for shape, _ in jobs])
            measured = np.array([seconds for _, seconds in jobs])
            predicted = np.array([model.seconds(shape, size) for shape, _ in jobs])
            print(f"{path} ({size}-core lane, {len(jobs)} jobs alone)")
            for low, high in BUCKETS:
                inside = (tokens >= low) & (tokens <= high)
                if inside.any():
                    print(f"  tokens {low:>3}-{high:<3} jobs {inside.sum():>4}  measured / predicted "
                          f"{measured[inside].sum() / predicted[inside].sum():.3f}")


if __name__ == "__main__":
    main()
