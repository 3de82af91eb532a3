"""At a drop, exchange every running request's KV (KunServe) or recompute those for which a re-prefill
adds less waiting (coserve's `recompute_if_cheaper`), over peer links from NVLink down to a slow NIC.

The burst of `burst_cluster.py` (same `ElasticCluster` over simulated replicas, same model, traces and
budgets), run under `drop` twice per link speed: once exchanging every request, once letting
`memory_source.recompute_instead_of_exchange` choose. The peer link also carries restores and hidden
states, so a slower link slows the whole group; the two runs of one row share it.

Usage: python benchmarks/exchange_or_recompute.py [--gpu H100-80GB] [--links 450 25 3 1]
Prints one table per scenario, writes JSON and ends with one line of JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from burst_cluster import SCENARIOS, run, workload

DEFAULT_LINKS_GB_S = (450.0, 25.0, 3.0, 1.0)  # H100 NVLink, 200 Gb/s NIC, 25 GbE, 10 GbE-class


def compare(name: str, gpu: str, replicas: int, links: list[float]) -> list[dict]:
    trace, start, seconds, scale, output_factor = SCENARIOS[name]
    burst = workload(trace, start, seconds, scale, output_factor)
    print(f"\n{name} on {replicas}x {gpu}, x{scale:g} ({len(burst)} requests in {seconds:g} s), strategy drop")
    print(f"{'link GB/s':>9} {'choice':<9} {'p50 TTFT':>9} {'p99 TTFT':>9} {'p50 TPOT':>9} {'p99 TPOT':>9} "
          f"{'req/s':>7} {'drops':>5} {'recomputed':>10}")
    rows = []
    for link in links:
        for choice, flag in (("exchange", False), ("cheaper", True)):
            r = run("drop", gpu, burst, replicas, peer_bytes_per_s=link * 1e9, recompute_if_cheaper=flag)
            r.pop("timeline")
            rows.append({"scenario": name, "link_gb_s": link, "choice": choice, **r})
            print(f"{link:9g} {choice:<9} {r['p50_ttft_s']:9.3f} {r['p99_ttft_s']:9.3f} {r['p50_tpot_s']:9.4f} "
                  f"{r['p99_tpot_s']:9.4f} {r['throughput_req_s']:7.2f} {r['drops']:5d} {r['exchange_recomputes']:10d}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", default="H100-80GB")
    parser.add_argument("--scenarios", nargs="+", default=["azure-conv", "azure-conv-long-outputs"],
                        choices=list(SCENARIOS))
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--links", nargs="+", type=float, default=list(DEFAULT_LINKS_GB_S), help="GB/s")
    parser.add_argument("--out", default="results/exchange_or_recompute.json")
    args = parser.parse_args()
    rows = [row for name in args.scenarios for row in compare(name, args.gpu, args.replicas, args.links)]
    pairs = [(a, b) for a, b in zip(rows[::2], rows[1::2]) if b["exchange_recomputes"]]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    # over the rows where the choice recomputed anything: how much it cost or saved at the tail
    headline = {
        "rows_with_recomputes": len(pairs),
        "max_p99_ttft_cheaper_over_exchange": max((b["p99_ttft_s"] / a["p99_ttft_s"] for a, b in pairs), default=None),
        "min_p99_tpot_cheaper_over_exchange": min((b["p99_tpot_s"] / a["p99_tpot_s"] for a, b in pairs), default=None),
    }
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in headline.items()}))


if __name__ == "__main__":
    main()
