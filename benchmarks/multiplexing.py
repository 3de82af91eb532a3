"""Three colocated models on one CPU device under spatial, temporal and mux policies, same budget.

    python benchmarks/multiplexing.py [--num-prompts 32] [--rates 0.25 0.5 ...] [--slo-scale 5]

The real SmolLM2-135M and two random-weight Llama shapes (8 layers/384 wide and 2 layers/64 wide,
sharing SmolLM2's vocabulary) get power-law popularity (alpha 1.3: the real model is the most
popular) and ShareGPT length pairs scaled down to this CPU. Every policy gets the same device
(`DeviceConfig`): the same memory budget (weights + activations + KV pages) and the same cores.

- spatial: each model on its own lane and its own fixed slice of the pages (by rate x KV bytes
  per token); the popular model gets a core to itself, the other two share the second core;
- temporal: one lane on all cores, models served first come first served, pages shared;
- mux: one lane per core, ADBS (prefill first, models past their SLO first, quotas adapted every
  round), any model on any lane, a batch nobody else waits for run on a wide lane over all cores.

The SLO is MuxServe's: a request meets it when its end-to-end latency is within `--slo-scale`
times the latency the same request has alone on the whole device (its prompt's prefill, measured
at a few prompt lengths and interpolated, plus its decode steps; one lane over all cores, through
the same lane machinery). The `mux` policy steers by TTFT/TPOT targets read off the same solo
latencies; attainment of those is printed beside. For each policy the script measures throughput
with all requests released at once (`--repeats` runs per policy, the policies taking turns; the
median counts), then sweeps the request rate upwards until 99% SLO attainment
is lost, to find the highest rate that keeps it. Each throughput round also times every model's
requests alone on one core (and SmolLM2's on both): half the one-core times' sum estimates the
ceiling two cores can reach, and the two-phase schedule (the small models beside SmolLM2, then
SmolLM2 on both cores) what `mux` aims at (`ceiling`), each printed beside every policy's share
of it. It prints the tables, writes JSON, and ends with one line of JSON.

    python benchmarks/multiplexing.py --summarize results/multiplexing.json   # reprint the estimates
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from coserve import SamplingParams
from coserve.bench.in_process import prompt_ids, replay
from coserve.bench.result import write_json
from coserve.engine.config import EngineConfig
from coserve.engine.device_config import ColocatedModel, DeviceConfig, build_device, memory_bill
from coserve.engine.device_engine import DeviceEngine, available_cores
from coserve.execution.weights import load_model
from coserve.metrics import SLO, LatencySLO, compute_metrics, run_duration
from coserve.workload import LengthSpec, WorkloadSpec, generate_workload

REAL = "smollm2-135m-instruct"
MODELS = {
    "smollm2": dict(model=REAL),
    "small": dict(model="random:llama-small-49k", tokenizer=REAL, seed=1),
    "tiny": dict(model="random:llama-tiny-49k", tokenizer=REAL, seed=2),
}


def lane_cores(policy: str) -> list[list[int]]:
    cores = available_cores()
    if policy == "temporal":
        return [cores]
    if policy == "spatial":  # MODELS is ordered by popularity: the first gets a core of its own
        return [[cores[0]], [cores[-1]], [cores[-1]]]
    return [[core] for core in cores]


def engine_configs() -> list[EngineConfig]:
    return [EngineConfig(name=n, max_num_seqs=32, max_num_batched_tokens=512, **c) for n, c in MODELS.items()]


def device_budget(kv_bytes: int) -> int:
    """The same budget for every policy: the models' weights and activations plus `kv_bytes`."""
    configs = engine_configs()
    specs = {c.name: load_model(c.model, tokenizer=False, layer_range=(0, 1)).spec for c in configs}
    return -memory_bill([ColocatedModel(c) for c in configs], specs, 0).kv_bytes + kv_bytes


def make_device(policy: str, kv_bytes: int, rates: dict[str, float], slos: dict[str, SLO] | None = None,
                spread: bool = True, cores: list[list[int]] | None = None, wide: bool = True) -> DeviceEngine:
    models = [ColocatedModel(c, rates[c.name], (slos or {}).get(c.name)) for c in engine_configs()]
    device = DeviceConfig(policy=policy, memory_budget_bytes=device_budget(kv_bytes),
                          lane_cores=cores or lane_cores(policy), spread_batches=spread, wide_lane=wide)
    return build_device(models, device)


def alone(device: DeviceEngine, model: str, prompt_len: int, max_tokens: int, request_id: int):
    """Serve one request with nothing else on the device: its token times and its TTFT (ms)."""
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    device.engines[model].add_request(prompt_ids(request_id, prompt_len), params)
    finished = []
    while device.has_unfinished_requests():
        finished += [o for o in device.step() if o.finished]
    metrics = finished[0].metrics
    return metrics.token_times, (metrics.token_times[0] - metrics.arrival_time) * 1000


def solo_latency(lengths: LengthSpec, kv_bytes: int, rates: dict[str, float]) -> dict[str, LatencySLO]:
    """Each model alone on the whole device (one lane on every core, lane overheads included): the
    prefill time at a few prompt lengths up to the cap, and the decode step of a request of half
    the prompt cap and the full output cap. A first request per model warms its code paths."""
    device = make_device("temporal", kv_bytes, rates)
    cap, output_cap = lengths.max_input_len, lengths.max_output_len
    probes = sorted({max(n, 1) for n in (cap // 16, cap // 4, cap // 2, cap)})
    base = {}
    try:
        for name in MODELS:
            alone(device, name, cap // 2, output_cap, 0)
            prefill = tuple((n, alone(device, name, n, 1, 1 + i)[1]) for i, n in enumerate(probes))
            times, _ = alone(device, name, cap // 2, output_cap, len(probes) + 1)
            base[name] = LatencySLO(prefill, decode_ms=(times[-1] - times[0]) / (len(times) - 1) * 1000)
    finally:
        device.close()
    return base


def step_targets(slo: LatencySLO, lengths: LengthSpec) -> SLO:
    """What the `mux` policy steers by: TTFT and TPOT targets for a typical request (half the
    prompt cap), read off the same solo latencies and scale."""
    return SLO(ttft_ms=slo.scale * slo.base_ms(lengths.max_input_len // 2, 1), tpot_ms=slo.scale * slo.decode_ms)


def measure(policy: str, workload: WorkloadSpec, kv_bytes: int, slos, targets, rates) -> dict:
    """`slos`: what attainment is judged by; `targets`: the TTFT/TPOT the device steers by."""
    base_policy, _, variant = policy.partition("-")
    device = make_device(base_policy, kv_bytes, rates, targets, spread=variant != "nospread",
                         wide=variant != "nowide")
    try:
        records = replay(device, generate_workload(workload), f"{policy}-{workload.request_rate}")
    finally:
        device.close()
    metrics = compute_metrics(records, slos, models=tuple(MODELS))
    overall = metrics.overall
    return {"rate": workload.request_rate, "req_s": overall.request_throughput,
            "tok_s": overall.output_throughput, "slo_attainment": overall.slo_attainment,
            "ttft_tpot_attainment": compute_metrics(records, targets).overall.slo_attainment,
            "ttft_p99_ms": overall.ttft_ms.p99, "tpot_p99_ms": overall.tpot_ms.p99,
            "failed": overall.failed,
            "per_model": {m: {"req_s": g.request_throughput, "slo_attainment": g.slo_attainment}
                          for m, g in metrics.per_model.items()}}


def alone_times(workload: WorkloadSpec, kv_bytes: int, rates: dict[str, float]) -> dict[str, float]:
    """Seconds each model takes to serve its own requests of `workload` with the device to itself:
    on one core (every model), and SmolLM2 also on both cores. One lane, the whole page pool, the
    models one after another. If no policy runs a model's work on a core faster than that model
    alone on the core does, half the one-core times' sum is the shortest time two cores can serve
    the whole workload in: an estimate of the ceiling a multiplexing policy aims at (not a bound:
    batching and the machine's drift between runs can beat it)."""
    requests = generate_workload(workload)
    times = {}
    for label, cores, names in (("1 core", [available_cores()[:1]], MODELS), ("2 cores", None, ("smollm2",))):
        device = make_device("temporal", kv_bytes, rates, cores=cores)
        try:
            for name in names:
                mine = [r for r in requests if r.model == name]
                times[f"{name}, {label}"] = run_duration(replay(device, mine, f"alone-{label}-{name}"))
        finally:
            device.close()
    return times


def ceiling(alone: list[dict[str, float]], output_tokens: int) -> dict:
    """Two estimates from `alone_times` runs (the median of each time counts). `ideal`: every core
    busy at one-core alone speed until the end (half the one-core sum). `two_phase`: the schedule
    `mux` aims at when all requests come at once: the small models' work on one core while SmolLM2
    runs on the other at its one-core speed, then SmolLM2's rest on both cores at its two-core
    speed. A policy beats `two_phase` only where a model runs faster beside others than alone."""
    median = {k: sorted(run[k] for run in alone)[len(alone) // 2] for k in alone[0]}
    one_core = sum(v for k, v in median.items() if k.endswith(", 1 core"))
    popular_one, popular_two = median["smollm2, 1 core"], median["smollm2, 2 cores"]
    others = one_core - popular_one
    if others <= popular_one:
        two_phase = others + (1 - others / popular_one) * popular_two
    else:  # SmolLM2 ends first: the small models' rest runs on both cores, at best twice as fast
        two_phase = popular_one + (others - popular_one) / 2
    return {"alone_s": median, "two_core_scaling_smollm2": popular_one / popular_two,
            "ideal_makespan_s": one_core / 2, "ideal_tok_s": output_tokens / (one_core / 2),
            "two_phase_makespan_s": two_phase, "two_phase_tok_s": output_tokens / two_phase}


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def print_ceiling(bound: dict, results: dict) -> None:
    print("\nalone (s, median of the rounds): " + ", ".join(f"{k} {v:.1f}" for k, v in bound["alone_s"].items()))
    print(f"SmolLM2 alone runs {bound['two_core_scaling_smollm2']:.2f}x faster on two cores than on one")
    estimates = (("ceiling (one-core times spread evenly over both cores)", "ideal"),
                 ("two-phase schedule (small models beside SmolLM2, then SmolLM2 on both cores)", "two_phase"))
    for label, key in estimates:
        tok_s = bound[f"{key}_tok_s"]
        over_spatial = ratio(tok_s, results["spatial"]["saturated"]["tok_s"]) if "spatial" in results else None
        reached = ", ".join(f"{policy} {r['saturated']['tok_s'] / tok_s:.2f}" for policy, r in results.items())
        print(f"{label}: {bound[f'{key}_makespan_s']:.1f} s, {tok_s:.1f} tok/s, {over_spatial}x spatial; "
              f"share of it reached: {reached}")


def summarize(path: str) -> None:
    """Reprint the estimates of a saved run (its `alone_runs` and results), with today's formulas."""
    saved = json.loads(Path(path).read_text())
    output_tokens = saved.get("output_tokens")
    if output_tokens is None:  # runs before it was saved: tokens per request x requests, of any run
        run = next(iter(saved["results"].values()))["saturated"]
        output_tokens = round(run["tok_s"] / run["req_s"] * saved["config"]["num_prompts"])
    print_ceiling(ceiling(saved["alone_runs"], output_tokens), saved["results"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--rates", type=float, nargs="+",
                        default=[0.25, 0.5, 0.75, 0.875, 1.0, 1.125, 1.25, 1.375, 1.5, 2.0, 3.0])
    parser.add_argument("--repeats", type=int, default=3, help="saturated runs per policy, interleaved")
    parser.add_argument("--alpha", type=float, default=1.3)
    parser.add_argument("--slo-scale", type=float, default=5.0)
    parser.add_argument("--kv-bytes", type=int, default=256 << 20)
    parser.add_argument("--max-input-len", type=int, default=256)
    parser.add_argument("--max-output-len", type=int, default=64)
    parser.add_argument("--policies", nargs="+", default=["spatial", "temporal", "mux"],
                        help="also: mux-nospread (mux without spreading a batch over idle lanes), "
                             "mux-nowide (spreading by splitting the batch, without the wide lane)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="results/multiplexing.json")
    parser.add_argument("--summarize", metavar="JSON", help="reprint the estimates of a saved run, run nothing")
    args = parser.parse_args()
    if args.summarize:
        return summarize(args.summarize)

    lengths = LengthSpec("sharegpt-lengths", max_input_len=args.max_input_len, max_output_len=args.max_output_len)
    names = tuple(MODELS)
    shares = WorkloadSpec(names, alpha=args.alpha).weights()
    rates = dict(zip(names, shares.tolist()))
    base = solo_latency(lengths, args.kv_bytes, rates)
    slos = {m: slo.scaled(args.slo_scale) for m, slo in base.items()}
    targets = {m: step_targets(slo, lengths) for m, slo in slos.items()}
    for m, slo in base.items():
        prefill = ", ".join(f"{n} tok {ms:.1f}" for n, ms in slo.prefill_ms)
        print(f"{m} alone: prefill {prefill} ms; decode step {slo.decode_ms:.1f} ms")
    print(f"SLO: end-to-end latency <= {args.slo_scale:g}x the request's latency alone; the mux policy "
          "steers by TTFT/TPOT " + ", ".join(f"{m} {t.ttft_ms:.0f}/{t.tpot_ms:.0f} ms" for m, t in targets.items()))

    def workload(rate: float) -> WorkloadSpec:
        return WorkloadSpec(names, args.num_prompts, rate, alpha=args.alpha, seed=args.seed, lengths=lengths)

    # Throughput: the policies take turns, `--repeats` rounds, and each reports its median run, so a
    # slow spell of this shared VM does not land on one policy alone.
    runs, alone = {policy: [] for policy in args.policies}, []
    for _ in range(args.repeats):
        for policy in args.policies:
            runs[policy].append(measure(policy, workload(math.inf), args.kv_bytes, slos, targets, rates))
        alone.append(alone_times(workload(math.inf), args.kv_bytes, rates))
    output_tokens = sum(r.output_len for r in generate_workload(workload(math.inf)))
    bound = ceiling(alone, output_tokens)
    results = {}
    for policy in args.policies:
        ranked = sorted(runs[policy], key=lambda run: run["tok_s"])
        saturated = ranked[len(ranked) // 2]
        sweep, held = [], 0.0
        for rate in sorted(args.rates):  # upwards until attainment is lost: higher rates only queue more
            point = measure(policy, workload(rate), args.kv_bytes, slos, targets, rates)
            sweep.append(point)
            if (point["slo_attainment"] or 0) < 0.99:
                break
            held = rate
        results[policy] = {"saturated": saturated, "saturated_tok_s_runs": [r["tok_s"] for r in runs[policy]],
                           "sweep": sweep, "rate_at_99_slo": held}
        print(f"{policy:>9}: {saturated['req_s']:.3f} req/s, {saturated['tok_s']:.1f} tok/s saturated (median of "
              f"{[round(r['tok_s'], 1) for r in runs[policy]]}); "
              f"attainment by rate {[(p['rate'], round(p['slo_attainment'] or 0, 3)) for p in sweep]} "
              f"(TTFT/TPOT targets: {[round(p['ttft_tpot_attainment'] or 0, 3) for p in sweep]})")

    print(f"\n{'policy':<10}{'req/s':>8}{'tok/s':>8}{'p99 TTFT ms':>13}{'p99 TPOT ms':>13}{'rate@99%':>10}")
    for policy, r in results.items():
        s = r["saturated"]
        print(f"{policy:<10}{s['req_s']:>8.3f}{s['tok_s']:>8.1f}{s['ttft_p99_ms'] or 0:>13.0f}"
              f"{s['tpot_p99_ms'] or 0:>13.0f}{r['rate_at_99_slo']:>10.3g}")

    print_ceiling(bound, results)

    lowest, mux_rate = min(args.rates), results.get("mux", {}).get("rate_at_99_slo")
    for policy, r in results.items():
        if not r["rate_at_99_slo"]:  # the ratio has no finite value; say what the sweep does show
            beyond = f"; mux holds it to {mux_rate:g} req/s, over {mux_rate / lowest:g}x that" if mux_rate else ""
            print(f"{policy}: 99% attainment lost already at the lowest rate swept ({lowest:g} req/s){beyond}")

    headline = {}
    if {"mux", "spatial", "temporal"} <= results.keys():
        mux, spatial, temporal = results["mux"], results["spatial"], results["temporal"]
        headline = {
            "mux_over_spatial_throughput": ratio(mux["saturated"]["tok_s"], spatial["saturated"]["tok_s"]),
            "mux_over_temporal_throughput": ratio(mux["saturated"]["tok_s"], temporal["saturated"]["tok_s"]),
            "mux_over_spatial_rate_at_99_slo": ratio(mux["rate_at_99_slo"], spatial["rate_at_99_slo"]),
            "mux_over_temporal_rate_at_99_slo": ratio(mux["rate_at_99_slo"], temporal["rate_at_99_slo"]),
        }
    write_json(args.output, {"config": vars(args), "model_shares": rates,
                             "solo_latency": {m: vars(s) for m, s in base.items()},
                             "steer_targets_ms": {m: vars(t) for m, t in targets.items()},
                             "results": results, "ceiling": bound, "alone_runs": alone,
                             "output_tokens": output_tokens, "headline": headline})
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
