"""The roofline cost model against closed forms worked out by hand, and the hardware table's errors."""

from __future__ import annotations

import pytest

from coserve.costmodel import decode_seconds, get_hardware, prefill_seconds
from coserve.costmodel.roofline import decode_cost, prefill_cost, split_layers
from coserve.errors import ConfigError
from coserve.execution.models.spec import ModelSpec
from coserve.execution.weights.presets import PRESETS

LLAMA_7B = ModelSpec.from_hf_config(PRESETS["llama-7b"])
A100 = get_hardware("A100-80GB")
FP16 = 2  # bytes


def llama7b_weight_bytes_read(tokens: int) -> float:
    """All parameters except the (untied) embedding table, of which only `tokens` rows are read."""
    h, v = 4096, 32000
    return (LLAMA_7B.num_params() - v * h + tokens * h) * FP16


def llama7b_kv_bytes_per_token() -> float:
    return 2 * 32 * 4096 * FP16  # K and V, 32 layers, 32 heads x 128


def test_decode_batch_one_is_weight_bandwidth_bound():
    context = 500
    moved = llama7b_weight_bytes_read(1) + (context + 1) * llama7b_kv_bytes_per_token()
    assert decode_seconds(LLAMA_7B, "float16", A100, 1, context) == pytest.approx(moved / 2039e9, rel=1e-12)


def test_prefill_long_prompt_is_compute_bound():
    tokens, context = 2048, 1023.5
    h, layers, v, inter = 4096, 32, 32000, 11008
    linear = 2 * layers * (4 * h * h + 3 * h * inter) + 2 * v * h
    attention = 4 * layers * h * context
    flops = tokens * (linear + attention)
    assert prefill_seconds(LLAMA_7B, "float16", A100, tokens, context) == pytest.approx(flops / 312e12, rel=1e-12)


def test_flops_match_the_spec():
    cost = prefill_cost(LLAMA_7B, "float16", A100, 1, 300.0)
    assert cost.flops == pytest.approx(LLAMA_7B.flops_per_token(300))


def test_lane_share_scales_compute_and_saturates_bandwidth():
    full = prefill_seconds(LLAMA_7B, "float16", A100, 2048, 1000)
    assert prefill_seconds(LLAMA_7B, "float16", A100, 2048, 1000, share=0.5) == pytest.approx(2 * full)
    decode = decode_seconds(LLAMA_7B, "float16", A100, 1, 100)
    # 40% of the SMs already draw the whole bandwidth (A100's bandwidth_saturation_share)
    assert decode_seconds(LLAMA_7B, "float16", A100, 1, 100, share=0.4) == pytest.approx(decode)
    assert decode_seconds(LLAMA_7B, "float16", A100, 1, 100, share=0.2) == pytest.approx(2 * decode)


def test_tensor_parallel_halves_work_and_adds_two_all_reduces_per_layer():
    batch, context = 8, 200
    one = decode_cost(LLAMA_7B, "float16", A100, batch, context)
    two = decode_cost(LLAMA_7B, "float16", A100, batch, context, tp=2)
    assert two.flops == pytest.approx(one.flops / 2)
    message = batch * 4096 * FP16
    ring = 10e-6 + 2 * (2 - 1) / 2 * message / 300e9  # latency + ring transfer over NVLink
    assert two.comm_seconds == pytest.approx(2 * 32 * ring)
    expected = max(two.flops / 312e12, two.bytes / 2039e9) + two.comm_seconds
    assert decode_seconds(LLAMA_7B, "float16", A100, batch, context, tp=2) == pytest.approx(expected)


def test_pipeline_stages_run_in_sequence_with_one_send_between():
    assert split_layers(LLAMA_7B, None, 3) == [(0, 11), (11, 22), (22, 32)]
    batch = 4
    first = decode_seconds(LLAMA_7B, "float16", A100, batch, 100, layers=(0, 16))
    second = decode_seconds(LLAMA_7B, "float16", A100, batch, 100, layers=(16, 32))
    send = 10e-6 + batch * 4096 * FP16 / 300e9
    both = decode_seconds(LLAMA_7B, "float16", A100, batch, 100, pp=2)
    assert both == pytest.approx(first + second + send)


def test_pcie_interconnect_is_slower_for_tensor_parallelism():
    pcie = get_hardware("A100-80GB", interconnect="pcie")
    slow = decode_seconds(LLAMA_7B, "float16", pcie, 64, 100, tp=4)
    fast = decode_seconds(LLAMA_7B, "float16", A100, 64, 100, tp=4)
    assert slow > fast


def test_unknown_gpu_names_the_field():
    with pytest.raises(ConfigError, match=r"cluster\.gpu.*'B300'"):
        get_hardware("B300")


def test_unknown_override_names_the_field():
    with pytest.raises(ConfigError, match="cluster.hardware.*warp_size"):
        get_hardware("cpu-local", overrides={"warp_size": 32})


def test_cpu_local_takes_given_numbers():
    hw = get_hardware("cpu-local", overrides={"memory_bandwidth": 40e9, "peak_flops": {"float32": 1e12}})
    assert hw.memory_bandwidth == 40e9 and hw.flops("float32") == 1e12 and hw.flops("bfloat16") == 80e9
    with pytest.raises(ConfigError, match="NVLink"):
        get_hardware("cpu-local", interconnect="nvlink")


@pytest.mark.parametrize(("overrides", "field"), [
    ({"peak_flops": 5}, "peak_flops"),
    ({"peak_flops": {"float16": 0}}, "peak_flops"),
    ({"memory_bytes": {"a": 1}}, "memory_bytes"),
    ({"memory_bytes": float("nan")}, "memory_bytes"),
    ({"memory_bytes": True}, "memory_bytes"),
    ({"network_bandwidth": 0}, "network_bandwidth"),
    ({"collective_latency_s": -1}, "collective_latency_s"),
    ({"process_overhead_bytes": 1 << 50}, "process_overhead_bytes"),
])
def test_bad_hardware_overrides_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        get_hardware("A100-80GB", overrides=overrides)


def test_bad_job_shapes_are_config_errors():
    with pytest.raises(ConfigError, match="tensor degree 3"):
        decode_seconds(LLAMA_7B, "float16", A100, 1, 10, tp=3)
    with pytest.raises(ConfigError, match="share"):
        decode_seconds(LLAMA_7B, "float16", A100, 1, 10, share=0.0)
    with pytest.raises(ConfigError, match="layer range"):
        decode_seconds(LLAMA_7B, "float16", A100, 1, 10, layers=(10, 40))
