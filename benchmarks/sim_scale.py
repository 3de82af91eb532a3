"""How the simulator's cost grows with GPUs and requests: MuxServe's set-up, planned then simulated.

    python benchmarks/sim_scale.py [--nodes 2 4] [--durations 60 600] [--workers 1 2]

For each cluster size the paper's 19 LLaMA models (examples/plan_paper.yaml, alpha 0.9, rates
scaled with the number of nodes so that load per GPU stays put; on one node the 19 models' weights
leave so little KV memory that the cluster serves a seventh of its arrivals and the queue, not the
cluster, sets the cost, so the default starts at two) are placed by `coserve plan`'s
greedy strategy, then `coserve simulate` replays requests of the planned lengths (the paper's ShareGPT
means, 161 and 338 tokens, uniform within +-90%) for each duration under
`mux` with roofline costs, in one process and in `--workers` processes (devices that share no
model simulated apart). Prints GPUs, devices, requests, simulated seconds and wall seconds;
writes JSON; ends with one line of JSON {"seconds_32_gpus_600_s": ..} (the fastest worker count).
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from muxserve_eval import paper_config, place, planned_lengths

from coserve.simulator.cli import simulate_args, simulate_placement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--durations", type=float, nargs="+", default=[60.0, 600.0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--output", default="results/sim_scale.json")
    args = parser.parse_args()

    rows = []
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    for nodes in args.nodes:
        path = Path(args.output).with_name(f"placement_{nodes}nodes.yaml")
        raw = paper_config(nodes=nodes)
        plan_seconds = place(raw, "greedy", path)
        for duration, workers in itertools.product(args.durations, args.workers):
            result = simulate_placement(simulate_args(str(path), duration=duration, workers=workers,
                                                      **planned_lengths(raw)))
            rows.append({"gpus": nodes * 8, "workers": workers, "devices": result["num_devices"],
                         "requests": result["num_requests"],
                         "duration_s": duration, "simulated_s": result["simulated_seconds"],
                         "wall_s": result["wall_seconds"], "plan_s": plan_seconds,
                         "req_s": result["request_throughput"], "slo_attainment": result["slo_attainment"],
                         "steady_req_s": result["steady_request_throughput"],
                         "offered_req_s": result["offered_request_rate"]})
            row = rows[-1]
            print(f"{row['gpus']:>4} GPUs {row['workers']} workers {row['devices']:>3} devices "
                  f"{row['requests']:>7} requests "
                  f"{row['simulated_s']:>7.0f} s simulated in {row['wall_s']:>6.1f} s "
                  f"({row['steady_req_s']:.1f} of {row['offered_req_s']:.1f} req/s served in steady state, "
                  f"SLO attainment {row['slo_attainment'] or 0:.3f})", flush=True)
    Path(args.output).write_text(json.dumps(rows, indent=1))
    big = [r["wall_s"] for r in rows if r["gpus"] == 32 and r["duration_s"] == 600.0]
    print(json.dumps({"seconds_32_gpus_600_s": round(min(big), 1) if big else None}))


if __name__ == "__main__":
    main()
