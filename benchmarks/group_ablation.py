"""Drop with and without one of a pipeline group's rules (`share_pages`, `balance_decodes`,
`plan_for_growth`), over several jitters of the same burst.

The burst of `burst_cluster.py` (same `ElasticCluster` over simulated replicas, model, traces and
budgets), under `drop` with the rule on and off. Each seed draws the upscaled copies and their
arrival jitter afresh, so the rows show whether a change in p99 TTFT is the rule's or one
workload's luck: with a few groups the tail depends on which requests land in which micro-batch.

Usage: python benchmarks/group_ablation.py [--rule share_pages] [--gpu A100-80GB]
       [--scenario azure-conv-long-outputs] [--seeds 0 1 2 3]
Prints a table, writes JSON and ends with one line of JSON: the median over the seeds of p99 TTFT
with the rule off over p99 TTFT with it on.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from burst_cluster import SCENARIOS, SETUPS, history_output_mean, run, workload

RULES = ("share_pages", "balance_decodes", "plan_for_growth")
METRICS = ("p50_ttft_s", "p99_ttft_s", "p99_tpot_s", "busy_share")


def compare(rule: str, name: str, gpu: str, setup_name: str, seed: int) -> dict:
    setup = SETUPS[setup_name]
    trace, start, seconds, scale, output_factor = SCENARIOS[name]
    burst = workload(trace, start, seconds, setup.scales.get(name, scale), output_factor, seed=seed,
                     model=setup.model)
    known = history_output_mean(trace, start, output_factor)
    row = {"seed": seed}
    for on in (False, True):
        r = run("drop", gpu, burst, setup.replicas, setup, expected_output_tokens=known, **{rule: on})
        row["on" if on else "off"] = {m: r[m] for m in METRICS}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rule", default="share_pages", choices=RULES)
    parser.add_argument("--setup", default="14b", choices=list(SETUPS))
    parser.add_argument("--gpu", default="A100-80GB")
    parser.add_argument("--scenario", default="azure-conv-long-outputs", choices=list(SCENARIOS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--out", default=None, help="default: results/group_ablation_RULE.json")
    args = parser.parse_args()
    print(f"{args.scenario} on the {args.setup} set-up, {args.gpu}: drop with {args.rule} off / on")
    print(f"{'seed':>4} {'p50 TTFT s':>15} {'p99 TTFT s':>15} {'p99 TPOT s':>17} {'busy':>11} {'p99 off/on':>10}")
    rows = []
    for seed in args.seeds:
        row = compare(args.rule, args.scenario, args.gpu, args.setup, seed)
        off, on = row["off"], row["on"]
        row["p99_ttft_off_over_on"] = off["p99_ttft_s"] / on["p99_ttft_s"]
        rows.append(row)
        print(f"{seed:4d} {off['p50_ttft_s']:7.3f}/{on['p50_ttft_s']:<7.3f} "
              f"{off['p99_ttft_s']:7.2f}/{on['p99_ttft_s']:<7.2f} "
              f"{off['p99_tpot_s']:8.4f}/{on['p99_tpot_s']:<8.4f} {off['busy_share']:5.1%}/{on['busy_share']:<5.1%} "
              f"{row['p99_ttft_off_over_on']:10.3f}")
    out = Path(args.out or f"results/group_ablation_{args.rule}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    median = statistics.median(r["p99_ttft_off_over_on"] for r in rows)
    print(json.dumps({"median_p99_ttft_off_over_on": round(median, 3)}))


if __name__ == "__main__":
    main()
