"""Measured vs simulated: the real engine on this CPU, then the simulator with fitted costs.

    python benchmarks/sim_fidelity.py [--num-prompts 192] [--repeats 2] [--load 0.7 | --rate R]
                                      [--reprofile | --refit] [--calibrate]

Two set-ups, each run for real (lanes are worker processes, real clock) and then simulated
(the same DeviceEngine code over simulated lanes whose durations come from the cost files that
`coserve profile` fits to timed lane jobs of this machine; profiles are cached under costs/):
- single: SmolLM2-135M alone, one lane on both cores;
- mux: the three-model set-up of benchmarks/multiplexing.py under `mux` (two one-core lanes, and
  the wide lane over both cores for a batch nobody else waits for).
Requests arrive (Poisson) at `--load` times the rate the simulated set-up sustains when saturated,
so the same command loads a fast and a slow machine alike; `--rate` fixes the rate instead.
Prints measured (the mean of `--repeats` real runs of the same requests) and simulated throughput
and p50/p99 TTFT and TPOT with the relative error of each, and the real runs' spread ((max - min)
/ mean: what the machine itself varies), writes JSON, and ends with one line of JSON: {"max_relative_error": ..}.
With --calibrate, part of the profile runs again before and after each real run, and each run is
simulated at the mean of its two probes (the headline). Beside it are printed the simulation as
profiled and the simulation of each run at the speed its own lane jobs ran against the cost files
(costmodel/job_meter.py): that column holds the machine's drift out, so its error is the
simulator's own (scheduling, queueing, the fit's shape), not the VM's.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from multiplexing import MODELS, device_budget, lane_cores, make_device

from coserve.bench.in_process import replay
from coserve.bench.result import write_json
from coserve.costmodel.job_meter import JobMeter
from coserve.costmodel.profile import fit_profiles, profile_and_fit, regime_bounds, speed_probe
from coserve.engine.config import EngineConfig
from coserve.engine.device_engine import available_cores
from coserve.metrics import compute_metrics
from coserve.simulator import SimCluster, SimDeviceSpec, SimModel
from coserve.simulator.cost import FittedCost, FittedModel
from coserve.workload import LengthSpec, WorkloadSpec, generate_workload

COSTS = Path(__file__).resolve().parent.parent / "costs"
SETUPS = {"single": ["smollm2"], "mux": list(MODELS)}
LOAD = 0.7


def cost_file(name: str, cores: int, args) -> FittedModel:
    """The cached fit, a new fit of the cached samples (--refit), or a new profile (--reprofile)."""
    path = COSTS / f"{name}.cpu-{cores}core.json"
    config = engine_config(name)
    if path.exists() and not args.reprofile:
        fitted = FittedModel.load(path)
        if not args.refit:
            return fitted
        fitted, errors = fit_profiles(fitted.model, fitted.device, fitted.samples, regime_bounds(config))
    else:
        busiest = next(iter(MODELS))  # the device's most popular model keeps the other lane busy
        fitted, errors = profile_and_fit(config, [cores], "cpu-local", neighbour=engine_config(busiest))
    print(f"fitted {name} on {cores} core(s): {errors}")
    COSTS.mkdir(exist_ok=True)
    fitted.save(path)
    return fitted


def summary(records) -> dict:
    overall = compute_metrics(records).overall
    return {"throughput": overall.output_throughput, "ttft_p50": overall.ttft_ms.p50, "ttft_p99": overall.ttft_ms.p99,
            "tpot_p50": overall.tpot_ms.p50, "tpot_p99": overall.tpot_ms.p99}


def per_model(records) -> dict:
    """TPOT and TTFT p50 of each model (ms): which model a gap in the overall figures comes from."""
    return {model: {"ttft_p50": m.ttft_ms.p50, "tpot_p50": m.tpot_ms.p50, "requests": m.completed}
            for model, m in compute_metrics(records).per_model.items()}


def run_setup(setup: str, args) -> dict:
    """The device always holds the three models (same budget and pages); `single` sends requests
    to SmolLM2 only, on one lane of both cores."""
    names = SETUPS[setup]
    policy = "temporal" if setup == "single" else "mux"
    lanes = [len(cores) for cores in lane_cores(policy)]
    fitted = {n: merged(n, sorted(set(priced(lanes))), args) for n in names}  # only models that run
    capacity = simulated_capacity(setup, lanes, fitted, args)
    rate = args.rate if args.load is None else args.load * capacity
    requests, rates = workload(setup, rate, args)
    runs, probes, run_speeds = [], [], []
    for _ in range(args.repeats):  # the same requests again on a fresh device: the noise floor
        before = probe(fitted, lanes) if args.calibrate else {}  # never during a run: it would take its cores
        device = make_device(policy, args.kv_bytes, rates)
        meter = JobMeter(device, FittedCost(fitted, [str(size) for size in priced(lanes)]))
        try:
            records = replay(device, requests, setup)
        finally:
            device.close()
        runs.append(summary(records))
        models_measured = per_model(records)
        run_speeds.append(meter.speeds())
        if args.calibrate:
            after = probe(fitted, lanes)
            probes.append({"before": before, "after": after,
                           "speed": {size: (before[size] + after[size]) / 2 for size in before}})
    measured = mean(runs)
    spread = {k: (max(run[k] for run in runs) - min(run[k] for run in runs)) / measured[k]
              for k in measured if measured[k]}

    def simulated_runs(speeds: list[dict[str, float]]) -> tuple[dict, list]:
        """Each real run simulated at its own speed; the mean of their figures, the last run's records."""
        outcomes = [simulate(setup, requests, rates, lanes, fitted, speed, args) for speed in speeds]
        return mean([figures for figures, _ in outcomes]), outcomes[-1][1]

    def error(sim: dict) -> dict:
        return {k: abs(sim[k] - measured[k]) / measured[k] for k in measured if measured[k]}

    uncalibrated, uncalibrated_records = simulate(setup, requests, rates, lanes, fitted, {}, args)
    at_run_speed = simulated_runs(run_speeds)[0]
    simulated, simulated_records = (simulated_runs([p["speed"] for p in probes]) if probes
                                    else (uncalibrated, uncalibrated_records))
    by_model = {"measured_last_run": models_measured, "simulated_last_run": per_model(simulated_records)}
    return {"simulated_capacity_req_s": capacity, "rate": rate,
            "measured": measured, "simulated": simulated, "relative_error": error(simulated),
            "probes": probes, "simulated_uncalibrated": uncalibrated,
            "relative_error_uncalibrated": error(uncalibrated),
            "speed_of_the_runs_jobs": run_speeds, "simulated_at_run_speed": at_run_speed,
            "relative_error_at_run_speed": error(at_run_speed),
            "measured_runs": runs, "run_to_run_spread": spread, "per_model": by_model}


def priced(lanes: list[int]) -> list[int]:
    """Cores of every lane the cost model prices: the device's lanes, then (with more than one) the
    wide lane over all of them, which the `mux` device runs a batch on when nobody else waits."""
    return lanes + [sum(lanes)] if len(lanes) > 1 else lanes


def probe(fitted: dict[str, FittedModel], lanes: list[int]) -> dict[str, float]:
    """Lane size -> the machine's speed now against the cost files (SmolLM2's probe stands for every model)."""
    sizes = sorted(set(priced(lanes)))
    return {str(size): speed_probe(engine_config("smollm2"), available_cores()[:size],
                                   fitted["smollm2"].samples[str(size)]["alone"]) for size in sizes}


def mean(figures: list[dict]) -> dict:
    return {k: sum(f[k] for f in figures) / len(figures) for k in figures[0]}


def workload(setup: str, rate: float, args) -> tuple[list, dict[str, float]]:
    """The set-up's requests at `rate` (inf: all at t=0) and each model's rate for the device's
    quotas. The lengths and the order of arrivals do not depend on the rate, only their spacing."""
    names = SETUPS[setup]
    alpha = None if setup == "single" else args.alpha
    lengths = LengthSpec("sharegpt-lengths", max_input_len=args.max_input_len, max_output_len=args.max_output_len)
    spec = WorkloadSpec(tuple(names), args.num_prompts, rate, alpha=alpha, seed=args.seed, lengths=lengths)
    shares = dict(zip(names, spec.weights().tolist()))
    nominal = rate if math.isfinite(rate) else 1.0  # quotas follow the shares, whatever the total
    rates = {n: shares.get(n, 0.0) * nominal or 1e-9 for n in MODELS}  # only sizes spare pages
    return generate_workload(spec), rates


def simulated_capacity(setup: str, lanes: list[int], fitted: dict[str, FittedModel], args) -> float:
    """Requests per second the simulated set-up completes with all of them queued at t=0: what
    --load is a fraction of. A fixed rate would be a different load on a faster or slower machine;
    a fraction of what this machine's cost files can serve is the same load on every machine."""
    requests, rates = workload(setup, math.inf, args)
    records = simulate(setup, requests, rates, lanes, fitted, {}, args)[1]
    return len(records) / max(r.end_time for r in records)


def engine_config(name: str) -> EngineConfig:
    """A model of the set-up as it is profiled and served here."""
    return EngineConfig(name=name, max_num_seqs=32, max_num_batched_tokens=512, **MODELS[name])


def simulate(setup: str, requests, rates: dict, lanes: list[int], fitted: dict[str, FittedModel],
             speed: dict[str, float], args):
    """The set-up on simulated lanes; `speed` (lane size -> factor) scales every model's costs on
    lanes of that size to the machine's speed at measurement time (SmolLM2's probe stands for all)."""
    policy = "temporal" if setup == "single" else "mux"
    fitted = {n: m.scaled(speed) for n, m in fitted.items()}
    sim_models = [SimModel(n, MODELS[n]["model"], dtype="float32", rate=rates[n], max_num_seqs=32,
                           max_num_batched_tokens=512) for n in MODELS]
    total_cores = sum(len(cores) for cores in lane_cores("temporal"))
    spec = SimDeviceSpec("cpu", sim_models, device_budget(args.kv_bytes), policy,
                         [size / total_cores for size in lanes], device="cpu", wide_lane=True)
    cluster = SimCluster([spec], lambda device, specs: FittedCost(fitted, [str(size) for size in priced(lanes)]))
    simulated_records = cluster.run(requests)
    return summary(simulated_records), simulated_records


def merged(name: str, sizes: list[int], args) -> FittedModel:
    """One model's fits (and the timed jobs they came from) for several lane sizes, as one FittedModel."""
    coefficients, samples = {}, {}
    for size in sizes:
        fitted = cost_file(name, size, args)
        coefficients.update(fitted.coefficients)
        samples.update(fitted.samples)
    return FittedModel(name, "cpu-local", coefficients, samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=2, help="real runs per set-up (measured = their mean)")
    parser.add_argument("--load", type=float, default=LOAD,
                        help="request rate as a fraction of the set-up's simulated capacity (see simulated_capacity)")
    parser.add_argument("--rate", type=float, default=None, help="a fixed request rate (req/s) instead of --load")
    parser.add_argument("--alpha", type=float, default=1.3)
    parser.add_argument("--kv-bytes", type=int, default=256 << 20)
    parser.add_argument("--max-input-len", type=int, default=256)
    parser.add_argument("--max-output-len", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--setups", nargs="+", default=list(SETUPS))
    parser.add_argument("--calibrate", action="store_true",
                        help="before and after each real run, rerun part of the profile (speed_probe) and simulate "
                             "the run at the machine's speed then")
    parser.add_argument("--reprofile", action="store_true", help="profile again even if costs/ has the files")
    parser.add_argument("--refit", action="store_true", help="fit the samples saved in costs/ again (no profiling)")
    parser.add_argument("--output", default="results/sim_fidelity.json")
    args = parser.parse_args()
    if args.rate is not None:
        args.load = None
    if not (args.load is None or 0 < args.load < math.inf) or not (args.rate is None or 0 < args.rate < math.inf):
        parser.error("--load and --rate must be positive and finite")

    results = {setup: run_setup(setup, args) for setup in args.setups}
    for setup, r in results.items():  # lane size: how many times slower than profiled
        for k, jobs in enumerate(r["speed_of_the_runs_jobs"]):
            probes = r["probes"][k] if r["probes"] else None
            probed = ", ".join(f"{size}: {probes['before'][size]:.3f} -> {probes['after'][size]:.3f}"
                               for size in probes["before"]) if probes else "not run"
            print(f"{setup} run {k + 1}: speed against the cost files, probed before -> after ({probed}); "
                  f"of the run's own jobs ({', '.join(f'{size}: {v:.3f}' for size, v in jobs.items())})")
    headline = "simulated (probed speed)" if args.calibrate else "simulated"
    print(f"\n{'setup':<8}{'metric':<11}{'measured':>11}{'run spread':>11}{headline:>26}{'error':>8}"
          f"{'as profiled':>13}{'error':>8}{'at the runs speed':>19}{'error':>8}")
    for setup, r in results.items():
        for key, value in r["measured"].items():
            print(f"{setup:<8}{key:<11}{value:>11.2f}{r['run_to_run_spread'][key]:>11.1%}"
                  f"{r['simulated'][key]:>26.2f}{r['relative_error'][key]:>8.1%}"
                  f"{r['simulated_uncalibrated'][key]:>13.2f}{r['relative_error_uncalibrated'][key]:>8.1%}"
                  f"{r['simulated_at_run_speed'][key]:>19.2f}{r['relative_error_at_run_speed'][key]:>8.1%}")
    for setup, r in results.items():
        if len(r["per_model"]["simulated_last_run"]) > 1:
            for model, sim in r["per_model"]["simulated_last_run"].items():
                real = r["per_model"]["measured_last_run"].get(model, {})
                print(f"{setup:<8}{model:<10} TPOT p50 {real.get('tpot_p50') or 0:.1f} measured, "
                      f"{sim['tpot_p50'] or 0:.1f} simulated; TTFT p50 {real.get('ttft_p50') or 0:.0f} measured, "
                      f"{sim['ttft_p50'] or 0:.0f} simulated ({sim['requests']} requests)")
    worst = max(e for r in results.values() for e in r["relative_error"].values())
    write_json(args.output, {"config": vars(args), "results": results})
    print(json.dumps({"max_relative_error": round(worst, 4)}))


if __name__ == "__main__":
    main()
