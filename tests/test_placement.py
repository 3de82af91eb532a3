"""`coserve plan`: feasibility on random instances, greedy vs exhaustive, bad input, the CLI's YAML."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from coserve.entrypoints.cli import main
from coserve.errors import ConfigError
from coserve.placement import build_problem, load_placement, parse_plan_config, plan, write_placement
from coserve.placement import memory as placement_memory
from coserve.placement.meshes import count_groups, node_partitions

ROOT = Path(__file__).resolve().parent.parent
SHAPES = ("llama-7b", "llama3-8b", "mistral-7b", "qwen2-7b", "qwen2-0.5b", "llama-13b", "llama-30b")


def random_config(seed: int, nodes: int = 1, gpus_per_node: int = 4, replicas: bool = True) -> dict:
    rng = random.Random(seed)
    models = [{"name": f"m{i}", "model": rng.choice(SHAPES), "rate": round(rng.uniform(0.5, 30.0), 2),
               "mean_prompt_len": rng.choice([64, 256, 1024]), "mean_output_len": rng.choice([32, 128, 512])}
              for i in range(rng.randint(2, 6))]
    return {"cluster": {"nodes": nodes, "gpus_per_node": gpus_per_node}, "models": models,
            "planner": {"replicas": replicas}}


def problem_of(raw: dict):
    return build_problem(parse_plan_config(raw))


def assert_memory_respected(problem, placement) -> None:
    by_name = {m.name: m for m in problem.models}
    usable = problem.cluster.usable_bytes_per_gpu
    s = problem.settings
    for mesh in placement.meshes:
        used = 0.0
        for p in mesh.models:
            m = by_name[p.name]
            used += placement_memory.weight_bytes(m.spec, m.dtype, p.tensor_parallel)
            used += placement_memory.reserve_bytes(m.spec, m.dtype, p.tensor_parallel, problem.cluster.hw,
                                                   s.max_num_batched_tokens, s.max_num_seqs)
            used += p.kv_quota_bytes
            assert p.kv_quota_tokens >= m.prompt_len + m.output_len - 1  # room for one whole request
        assert used <= usable * (1 + 1e-9), f"mesh {mesh.id} uses {used} of {usable} bytes"


def test_mesh_enumeration_matches_muxserve():
    assert len(node_partitions(8, [1, 2, 4, 8])) == 10
    cluster = problem_of({"cluster": {"nodes": 4, "gpus_per_node": 8},
                          "models": [{"name": "a", "model": "llama-7b", "rate": 1,
                                      "mean_prompt_len": 10, "mean_output_len": 10}]}).cluster
    assert count_groups(cluster) == 715


@pytest.mark.parametrize(("nodes", "gpus_per_node"), [(1, 8), (2, 4), (3, 8), (5, 2)])
def test_the_closed_form_group_count_equals_the_enumeration(nodes, gpus_per_node):
    from coserve.placement.meshes import mesh_groups

    cluster = problem_of(small([{"name": "a", "model": "llama-7b"}], nodes=nodes, gpus_per_node=gpus_per_node)).cluster
    assert count_groups(cluster) == sum(1 for _ in mesh_groups(cluster))


def test_a_cluster_too_large_to_search_is_refused_before_the_search():
    with pytest.raises(ConfigError, match="mesh groups to search"):
        plan(problem_of(small([{"name": "a", "model": "llama-7b"}], nodes=64, gpus_per_node=8)))


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("strategy", ["greedy", "spatial", "memory-greedy"])
def test_random_instances_are_feasible_or_name_a_model(seed, strategy):
    raw = random_config(seed, nodes=2, gpus_per_node=2)
    problem = problem_of(raw)
    try:
        placement = plan(problem, strategy)
    except ConfigError as exc:
        assert any(m.name in str(exc) for m in problem.models) or "GPUs" in str(exc)
        return
    assert_memory_respected(problem, placement)
    placed = {p.name for mesh in placement.meshes for p in mesh.models}
    assert placed == {m.name for m in problem.models}
    for mesh in placement.meshes:
        assert len({g // problem.cluster.gpus_per_node for g in mesh.gpus}) == 1  # meshes stay in a node
        if strategy == "spatial":
            assert len(mesh.models) == 1
    gpus = [g for mesh in placement.meshes for g in mesh.gpus]
    assert len(gpus) == len(set(gpus)) and max(gpus) < problem.cluster.num_gpus


@pytest.mark.parametrize("seed", range(10))
def test_greedy_within_five_percent_of_exhaustive(seed):
    problem = problem_of(random_config(100 + seed, replicas=False))
    try:
        optimum = plan(problem, "exhaustive").totals.est_throughput
    except ConfigError:
        with pytest.raises(ConfigError):
            plan(problem, "greedy")
        return
    greedy = plan(problem, "greedy").totals.est_throughput
    assert greedy >= 0.95 * optimum


def test_replicas_serve_a_rate_beyond_one_mesh():
    raw = {"cluster": {"nodes": 2, "gpus_per_node": 1},
           "models": [{"name": "hot", "model": "llama-7b", "rate": 60, "mean_prompt_len": 161,
                       "mean_output_len": 338}]}
    single = plan(problem_of({**raw, "planner": {"replicas": False}}))
    double = plan(problem_of(raw))
    assert len(double.models[0].replicas) == 2
    assert double.totals.est_throughput > single.totals.est_throughput


def test_spatial_never_splits_a_model_its_heads_cannot_divide():
    """LLaMA-30B has 52 heads: a mesh of 8 would need tensor degree 8. Under a rate that asks for
    more GPUs, spatial grows it to 4-GPU meshes and adds replicas instead of failing."""
    raw = {"cluster": {"nodes": 1, "gpus_per_node": 8},
           "models": [{"name": "big", "model": "llama-30b", "rate": 400, "mean_prompt_len": 100,
                       "mean_output_len": 261}], "planner": {"strategy": "spatial"}}
    placement = plan(problem_of(raw))
    sizes = [len(mesh.gpus) for mesh in placement.meshes if mesh.models]
    assert sum(sizes) > 4 and all(52 % size == 0 for size in sizes)


def test_popularity_and_lengths_from_the_workload():
    raw = {"cluster": {"nodes": 1, "gpus_per_node": 2},
           "workload": {"alpha": 1.0, "total_rate": 3.0, "dataset": "sharegpt-lengths"},
           "models": [{"name": "a", "model": "llama3-8b"}, {"name": "b", "model": "mistral-7b"}]}
    problem = problem_of(raw)
    assert [m.rate for m in problem.models] == pytest.approx([2.0, 1.0])
    assert problem.models[0].prompt_len > 100 and problem.models[0].output_len > 50


def test_hf_config_path(tmp_path):
    from coserve.execution.weights.presets import PRESETS

    (tmp_path / "config.json").write_text(json.dumps(PRESETS["llama-13b"]))
    raw = {"cluster": {"nodes": 1, "gpus_per_node": 1},
           "models": [{"name": "x", "model": str(tmp_path), "rate": 1, "mean_prompt_len": 100,
                       "mean_output_len": 100}]}
    assert problem_of(raw).models[0].spec.num_layers == 40


def small(models: list[dict], **cluster) -> dict:
    base = {"mean_prompt_len": 100, "mean_output_len": 100, "rate": 1}
    return {"cluster": {"nodes": 1, "gpus_per_node": 2, **cluster}, "models": [{**base, **m} for m in models]}


@pytest.mark.parametrize(("raw", "pattern"), [
    (small([{"name": f"big{i}", "model": "llama-30b"} for i in range(4)]), "cluster has"),
    (small([{"name": "huge", "model": "llama-65b"}], gpus_per_node=1), "'huge'.*does not fit the largest mesh"),
    (small([{"name": "idle", "model": "llama-7b", "rate": 0}]), "'idle'.*rate must be positive"),
    (small([{"name": "neg", "model": "llama-7b", "rate": -2}]), "'neg'.*rate must be positive"),
    (small([{"name": "a", "model": "llama-7b"}], gpu="TPU-v9"), r"cluster\.gpu.*'TPU-v9'"),
    (small([{"name": "a", "model": "llama-7b", "colour": "red"}]), r"models\.0\.colour"),
    (small([{"name": "a", "model": "llama-99b"}]), "'a'.*llama-99b"),
    (small([{"name": "long", "model": "llama-7b", "mean_prompt_len": 2000}]), "'long'.*context"),
    ({**small([{"name": "a", "model": "llama-7b"}]), "workload": {"total_rate": -1}}, "total_rate"),
    (small([{"name": "a", "model": "llama-7b"}, {"name": "a", "model": "llama-7b"}]), "repeated"),
    (small([{"name": "a", "model": "llama-7b", "rate": float("nan")}]), r"models\.0\.rate.*finite"),
    (small([{"name": "a", "model": "llama-7b", "rate": "5"}]), r"models\.0\.rate"),
    (small([{"name": "a", "model": "llama-7b", "count": True}]), r"models\.0\.count"),
    (small([{"name": "a", "model": "llama-7b"}], hardware={"peak_flops": 5}), r"hardware\.peak_flops"),
    (small([{"name": "a", "model": "llama-7b"}], hardware={"network_bandwidth": 0}), "network_bandwidth"),
    ({**small([{"name": "a", "model": "llama-7b"}, {"name": "b", "model": "llama-7b", "rate": None}]),
      "workload": {"total_rate": 5, "alpha": 5000}}, "'b'.*no requests"),
])
def test_bad_input_names_the_model_or_field(raw, pattern):
    if "workload" in raw:
        raw["models"][0].pop("rate")
    with pytest.raises(ConfigError, match=pattern):
        plan(problem_of(raw))


def test_cli_writes_a_placement_that_round_trips(tmp_path, capsys):
    out = tmp_path / "placement.yaml"
    assert main(["plan", str(ROOT / "examples" / "plan_small.yaml"), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "est. throughput" in printed and "analytic" in printed
    placement = load_placement(out)
    again = tmp_path / "again.yaml"
    write_placement(placement, again)
    assert load_placement(again) == placement
    assert {m.name for m in placement.models} == {"chat", "code", "big", "tiny"}


def test_a_placement_carries_the_plans_hardware_and_refuses_an_inconsistent_edit(tmp_path):
    from coserve.simulator.from_placement import placement_hardware

    raw = small([{"name": "a", "model": "llama-7b"}, {"name": "b", "model": "llama-7b"}],
                hardware={"memory_bandwidth": 1.5e12})
    problem = problem_of(raw)
    out = tmp_path / "placement.yaml"
    write_placement(plan(problem), out)
    placement = load_placement(out)
    assert placement_hardware(placement) == problem.cluster.hw
    assert placement_hardware(placement).memory_bandwidth == 1.5e12
    good = yaml.safe_load(out.read_text())
    mesh = good["meshes"][0]
    edits = {
        "mesh ids": lambda d: d["meshes"].append({**mesh, "gpus": [g + 10 for g in mesh["gpus"]]}),
        "GPU ids across meshes": lambda d: d["meshes"].append({**mesh, "id": 99}),
        "does not use": lambda d: d["meshes"][0]["models"][0].update(tensor_parallel=16),
        "outside": lambda d: d["meshes"][0].update(gpus=[g + 10 for g in mesh["gpus"]]),
    }
    for pattern, edit in edits.items():
        bad = yaml.safe_load(out.read_text())
        edit(bad)
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
        with pytest.raises(ConfigError, match=pattern):
            load_placement(tmp_path / "bad.yaml")


def test_a_config_file_that_is_not_utf8_or_not_a_mapping_is_a_config_error(tmp_path):
    from coserve.yaml_config import read_yaml

    (tmp_path / "latin1.yaml").write_bytes("cluster: {gpu: caf\xe9}".encode("latin-1"))
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match="UTF-8"):
        read_yaml(tmp_path / "latin1.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        read_yaml(tmp_path / "list.yaml")
    assert read_yaml(tmp_path / "empty.yaml") == {}
    (tmp_path / "numbers.yaml").write_text("a: 4e10\nb: -1E-3\nc: v1e5\n")  # YAML 1.1 reads 4e10 as text
    assert read_yaml(tmp_path / "numbers.yaml") == {"a": 4e10, "b": -1e-3, "c": "v1e5"}


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(small([{"name": "huge", "model": "llama-65b"}], gpus_per_node=1)))
    assert main(["plan", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "huge" in err and "Traceback" not in err
    assert main(["plan", str(tmp_path / "missing.yaml")]) == 2


def test_paper_setup_plans_quickly_and_places_every_model():
    problem = build_problem(parse_plan_config(yaml.safe_load((ROOT / "examples" / "plan_paper.yaml").read_text())))
    placement = plan(problem)
    assert placement.totals.plan_seconds < 10
    assert all(m.replicas for m in placement.models) and len(placement.models) == 19
    assert placement.totals.est_throughput >= plan(problem, "spatial").totals.est_throughput * (1 - 1e-9)
