"""MuxServe's real-trace experiment in the simulator: the 16 models of ChatLMSYS day 55 on 32 A100s.

    python benchmarks/lmsys_replay.py [--condense 500 800 1200 1600 2000] [--duration 30] [--workers 2]

The vendored rates (coserve/data/traces/muxserve_chatlmsys_day55_model_rates.csv) give each of the
16 models its size (LLaMA 7B to 65B) and request rate at five time-compression factors. The trace's
arrival times are not in the file, so arrivals are Poisson at those rates; prompts and outputs are
uniform around the trace's means (100 and 261 tokens, +-90%). For each factor `coserve plan` places
the models twice (greedy, MuxServe's placement; and spatial, each model on GPUs of its own), then
the simulator replays the same requests under `mux` and `temporal` on the greedy placement and
under `spatial`. SLOs are 8x each model's latency alone (MuxServe's chatlmsys plots).

Prints request throughput (the steady rate: requests finished in the last two thirds of the
arrival window, per second) and SLO attainment per policy and factor with mux's ratios, writes JSON,
and ends with one line of JSON: {"max_throughput_over_spatial": .., "max_throughput_over_temporal": ..}.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

from muxserve_eval import POLICIES  # the same three set-ups: (placement strategy, simulated policy)

import coserve
from coserve.placement import build_problem, parse_plan_config, plan, write_placement
from coserve.simulator.cli import simulate_args, simulate_placement

RATES = Path(coserve.__file__).parent / "data" / "traces" / "muxserve_chatlmsys_day55_model_rates.csv"


def trace_rows(condense: int) -> list[dict]:
    with RATES.open() as f:
        rows = [row for row in csv.DictReader(f) if int(row["condense"]) == condense]
    if not rows:
        raise SystemExit(f"no rates for condense factor {condense} in {RATES.name}")
    return sorted(rows, key=lambda row: int(row["name"].split("-")[1]))


def plan_config(rows: list[dict], strategy: str) -> dict:
    return {"cluster": {"nodes": 4, "gpus_per_node": 8, "gpu": "A100-80GB", "interconnect": "nvlink"},
            "models": [{"name": row["name"], "model": row["model_size"], "rate": float(row["rate_rps"]),
                        "mean_prompt_len": float(row["avg_prompt_len"]),
                        "mean_output_len": float(row["avg_output_len"])} for row in rows],
            "slo": {"scale": 8.0}, "planner": {"strategy": strategy, "objective": "throughput"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--condense", type=int, nargs="+", default=[500, 800, 1200, 1600, 2000])
    parser.add_argument("--duration", type=float, default=30.0, help="simulated seconds of arrivals per point")
    parser.add_argument("--workers", type=int, default=2, help="processes per simulation (independent meshes)")
    parser.add_argument("--output", default="results/lmsys_replay.json")
    args = parser.parse_args()

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict = {}
    for condense in args.condense:
        rows = trace_rows(condense)
        prompt, output = float(rows[0]["avg_prompt_len"]), float(rows[0]["avg_output_len"])
        paths = {}
        for strategy in ("greedy", "spatial"):
            paths[strategy] = out.with_name(f"placement_lmsys{condense}_{strategy}.yaml")
            config = parse_plan_config(plan_config(rows, strategy), f"LMSYS day 55, condense {condense}")
            write_placement(plan(build_problem(config)), paths[strategy])
        for policy, (strategy, sim_policy) in POLICIES.items():
            r = simulate_placement(simulate_args(
                str(paths[strategy]), policy=sim_policy, duration=args.duration, dataset="random",
                input_len=round(prompt), output_len=round(output), range_ratio=0.9, workers=args.workers))
            results.setdefault(str(condense), {})[policy] = {
                "total_rate": sum(float(row["rate_rps"]) for row in rows), "req_s": r["steady_request_throughput"],
                "req_s_whole_run": r["request_throughput"],
                "slo_attainment": r["slo_attainment"] or 0.0,
                "latency_slo_attainment": r["latency_slo_attainment"] or 0.0, "requests": r["num_requests"],
                "wall_s": r["wall_seconds"]}
            print(f"condense {condense} {policy:>8}: {r['request_throughput']:.1f} req/s, "
                  f"SLO attainment {r['slo_attainment'] or 0:.3f}, MuxServe's end-to-end SLO "
                  f"({r['latency_slo_scale']:g}x alone) "
                  f"{r['latency_slo_attainment'] or 0:.3f} ({r['wall_seconds']:.0f} s)", flush=True)
    seconds = time.perf_counter() - started

    print("\nreq/s: requests finished per second in the last two thirds of the arrival window (steady state)")
    print(f"\n{'condense':>8}{'rate':>8}" + "".join(f"{p + ' req/s':>16}{p + ' SLO':>14}" for p in POLICIES)
          + f"{'mux/spatial':>13}{'mux/temporal':>14}")
    over_spatial, over_temporal = [], []
    for condense, by_policy in results.items():
        ratios = [by_policy["mux"]["req_s"] / by_policy[p]["req_s"] for p in ("spatial", "temporal")]
        over_spatial.append(ratios[0])
        over_temporal.append(ratios[1])
        row = "".join(f"{by_policy[p]['req_s']:>16.1f}{by_policy[p]['slo_attainment']:>14.3f}" for p in POLICIES)
        print(f"{condense:>8}{by_policy['mux']['total_rate']:>8.1f}{row}{ratios[0]:>13.3f}{ratios[1]:>14.3f}")
    out.write_text(json.dumps({"config": vars(args), "results": results, "seconds": seconds}, indent=1))
    print(json.dumps({"max_throughput_over_spatial": round(max(over_spatial), 3),
                      "max_throughput_over_temporal": round(max(over_temporal), 3)}))


if __name__ == "__main__":
    main()
