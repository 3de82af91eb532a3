"""MuxServe's evaluation in the simulator: 32 A100s, 19 LLaMA models, alpha x rate-scale grid.

    python benchmarks/muxserve_eval.py [--alphas 0.7 0.9 1.3 1.7 2.1] [--scales 0.5 0.75 1 1.25] [--duration 30]
    python benchmarks/muxserve_eval.py --plot-from results/muxserve_eval.json   # redraw the figure only

For each popularity exponent and rate scale, `coserve plan` places the paper's models
(examples/plan_paper.yaml, top model 40 req/s x scale) twice, as MuxServe plans each workload:
greedy (MuxServe's placement) and spatial (each model on dedicated GPUs sized to its rate). Each
point is then simulated with roofline costs under three policies: `mux` on the greedy placement,
`temporal` on the same placement (one lane per mesh, first come first served), and `spatial` (the
spatial placement; one model per mesh). Requests have the lengths the planner was told: the
paper's ShareGPT means (161 and 338 tokens), uniform within +-90%. Prints throughput and SLO
attainment tables (the planner's TTFT/TPOT targets, and MuxServe's own: end-to-end latency within
`coserve simulate`'s default --latency-slo-scale, 8, times the request's latency alone), the
highest scale keeping 99% attainment per policy under each, writes JSON and a PNG (SLO attainment
against rate per alpha, throughput against alpha per scale), and ends with one line of JSON:
{"max_throughput_over_spatial": .., "max_rate_at_99_slo_over_spatial": .., "simulation_seconds": ..}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from coserve.placement import build_problem, load_plan_config, parse_plan_config, plan, write_placement
from coserve.simulator.cli import simulate_args, simulate_placement

PAPER = Path(__file__).resolve().parent.parent / "examples" / "plan_paper.yaml"
POLICIES = {"mux": ("greedy", "mux"), "temporal": ("greedy", "temporal"), "spatial": ("spatial", "mux")}
LENGTH_SPREAD = 0.9  # lengths uniform in mean x [0.1, 1.9]: as wide as a uniform around the mean allows


def paper_config(alpha: float | None = None, scale: float = 1.0, nodes: int | None = None) -> dict:
    """examples/plan_paper.yaml as a raw plan config: `alpha` when given, every rate times `scale`,
    and on `nodes` nodes the rates scaled with the node count, so load per GPU stays put."""
    raw = load_plan_config(PAPER).model_dump(exclude_unset=True)
    if alpha is not None:
        raw["workload"]["alpha"] = alpha
    if nodes is not None:
        scale *= nodes / raw["cluster"]["nodes"]
        raw["cluster"]["nodes"] = nodes
    raw["workload"]["top_rate"] *= scale
    return raw


def place(raw: dict, strategy: str, path: Path) -> float:
    """Plan a raw config with `strategy`, write the placement to `path`; the seconds planning took."""
    started = time.perf_counter()
    write_placement(plan(build_problem(parse_plan_config(raw, "paper set-up")), strategy), path)
    return time.perf_counter() - started


def planned_lengths(raw: dict) -> dict:
    """`coserve simulate` options for requests with the mean lengths the planner was given."""
    return {"dataset": "random", "input_len": round(raw["workload"]["mean_prompt_len"]),
            "output_len": round(raw["workload"]["mean_output_len"]), "range_ratio": LENGTH_SPREAD}


def simulate_point(alpha: float, scale: float, duration: float, workers: int, out_dir: Path,
                   policies: tuple[str, ...] = tuple(POLICIES)) -> dict:
    """Plan the paper's workload at (alpha, scale) greedily and spatially, simulate each of
    `policies` on the same requests; {policy: {"req_s" (steady), "req_s_whole_run", "offered_req_s",
    "slo_attainment", "wall_s", "plan_s"}}."""
    raw = paper_config(alpha, scale)
    paths, plan_seconds = {}, {}
    for strategy in {POLICIES[p][0] for p in policies}:
        paths[strategy] = out_dir / f"placement_alpha{alpha}_scale{scale}_{strategy}.yaml"
        plan_seconds[strategy] = place(raw, strategy, paths[strategy])
    point = {}
    for policy in policies:
        strategy, sim_policy = POLICIES[policy]
        r = simulate_placement(simulate_args(str(paths[strategy]), policy=sim_policy, duration=duration,
                                             workers=workers, **planned_lengths(raw)))
        point[policy] = {"req_s": r["steady_request_throughput"], "req_s_whole_run": r["request_throughput"],
                         "offered_req_s": r["offered_request_rate"],
                         "slo_attainment": r["slo_attainment"] or 0.0,
                         "latency_slo_attainment": r["latency_slo_attainment"] or 0.0, "wall_s": r["wall_seconds"],
                         "plan_s": plan_seconds[strategy]}
    return point


def highest_scale_at_99(by_policy: dict, key: str) -> dict[str, float]:
    """Per policy, the highest rate scale whose attainment (under `key`) is at least 99% (0: none)."""
    return {p: max((float(s) for s, v in by_policy[p].items() if v[key] >= 0.99), default=0.0) for p in POLICIES}


def plot(results: dict, scales: list[float], path: Path) -> None:
    """Top row: SLO attainment against rate scale, one panel per alpha (MuxServe's figure 5 layout);
    bottom row: request throughput against alpha, one panel per rate scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = list(results)
    columns = max(len(alphas), len(scales))
    fig, axes = plt.subplots(2, columns, figsize=(3.2 * columns, 6), squeeze=False)
    for ax, alpha in zip(axes[0], alphas):
        for policy in POLICIES:
            ax.plot(scales, [results[alpha][policy][str(s)]["slo_attainment"] for s in scales], "o-", label=policy)
        ax.axhline(0.99, color="grey", linewidth=0.8, linestyle="--")
        ax.set(title=f"alpha {alpha}", xlabel="rate scale", ylim=(0, 1.02))
    axes[0, 0].set(ylabel="SLO attainment")
    for ax, scale in zip(axes[1], scales):
        for policy in POLICIES:
            ax.plot([float(a) for a in alphas], [results[a][policy][str(scale)]["req_s"] for a in alphas],
                    "o-", label=policy)
        ax.set(title=f"rate scale {scale}", xlabel="alpha")
    axes[1, 0].set(ylabel="requests / s")
    for ax in axes.flat:
        if not ax.lines:
            ax.set_visible(False)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize="small")
    fig.suptitle("MuxServe's set-up in the simulator: 32 A100-80GB, 19 LLaMA models")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.7, 0.9, 1.3, 1.7, 2.1])
    parser.add_argument("--scales", type=float, nargs="+", default=[0.5, 0.75, 1.0, 1.25])
    parser.add_argument("--duration", type=float, default=30.0, help="simulated seconds of arrivals per point")
    parser.add_argument("--workers", type=int, default=2, help="processes per simulation (independent meshes)")
    parser.add_argument("--output", default="results/muxserve_eval.json")
    parser.add_argument("--plot", default="results/muxserve_eval.png")
    parser.add_argument("--plot-from", help="a saved results JSON: redraw its figure and exit")
    args = parser.parse_args()
    if args.plot_from:
        saved = json.loads(Path(args.plot_from).read_text())
        plot(saved["results"], saved["config"]["scales"], Path(args.plot))
        return

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict = {}
    for alpha in args.alphas:
        for scale in args.scales:
            for policy, r in simulate_point(alpha, scale, args.duration, args.workers, out.parent).items():
                results.setdefault(str(alpha), {}).setdefault(policy, {})[str(scale)] = r
                print(f"alpha {alpha} scale {scale} {policy:>8}: {r['req_s']:.1f} req/s, "
                      f"SLO attainment {r['slo_attainment']:.3f} ({r['wall_s']:.0f} s)", flush=True)
    seconds = time.perf_counter() - started

    print("\nreq/s: requests finished per second in the last two thirds of the arrival window (steady state)")
    print(f"{'alpha':>6}{'scale':>7}{'offered':>9}" + "".join(f"{p + ' req/s':>16}{p + ' SLO':>14}" for p in POLICIES))
    throughput_ratios, rate_ratios, latency_rate_ratios = [], [], []
    for alpha, by_policy in results.items():
        for scale in map(str, args.scales):
            row = "".join(f"{by_policy[p][scale]['req_s']:>16.1f}{by_policy[p][scale]['slo_attainment']:>14.3f}"
                          for p in POLICIES)
            print(f"{alpha:>6}{scale:>7}{by_policy['mux'][scale]['offered_req_s']:>9.1f}{row}")
            throughput_ratios.append(by_policy["mux"][scale]["req_s"] / by_policy["spatial"][scale]["req_s"])
        held = highest_scale_at_99(by_policy, "slo_attainment")
        held_e2e = highest_scale_at_99(by_policy, "latency_slo_attainment")
        results[alpha]["highest_scale_at_99_slo"] = held
        results[alpha]["highest_scale_at_99_latency_slo"] = held_e2e
        print(f"alpha {alpha}: highest rate scale with 99% SLO attainment {held}; "
              f"with MuxServe's end-to-end SLO {held_e2e}")
        if held["spatial"]:
            rate_ratios.append(held["mux"] / held["spatial"])
        if held_e2e["spatial"]:
            latency_rate_ratios.append(held_e2e["mux"] / held_e2e["spatial"])
    latency_scale = simulate_args(str(PAPER)).latency_slo_scale  # the default each point ran with
    print(f"MuxServe's SLO attainment (end-to-end latency within {latency_scale:g}x the request alone), by policy:")
    for alpha, by_policy in results.items():
        for scale in map(str, args.scales):
            print(f"{alpha:>6}{scale:>7}" + "".join(f"{p:>10} {by_policy[p][scale]['latency_slo_attainment']:.3f}"
                                                   for p in POLICIES))
    if latency_rate_ratios:
        print(f"mux's highest rate scale at 99% of MuxServe's SLO over spatial's: up to "
              f"{max(latency_rate_ratios):.3f}x")
    out.write_text(json.dumps({"config": vars(args), "results": results}, indent=1))
    plot(results, args.scales, Path(args.plot))
    print(json.dumps({"max_throughput_over_spatial": round(max(throughput_ratios), 3),
                      "max_rate_at_99_slo_over_spatial": round(max(rate_ratios), 3) if rate_ratios else None,
                      "simulation_seconds": round(seconds, 1)}))


if __name__ == "__main__":
    main()
