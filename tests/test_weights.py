"""Weight loading, checked against references: gguf.quants, transformers' own GGUF loader, models saved
by transformers, published parameter counts and the GGUF file's own metadata."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers
from gguf import GGMLQuantizationType as T
from gguf import quants

from coserve.errors import ConfigError, ModelConfigError, UnknownModelError, WeightLoadError
from coserve.execution.models.spec import ModelSpec
from coserve.execution.weights import (
    PRESETS,
    expected_shapes,
    load_model,
    random_state_dict,
    resolve,
)
from coserve.execution.weights import gguf_file as gguf_module
from coserve.execution.weights.dequant import FORMATS, dequantize

SMOLLM = "smollm2-135m-instruct"
TINY = ModelSpec.from_hf_config(PRESETS["llama-tiny"])
TINY_QWEN2 = dataclasses.replace(TINY, architecture="Qwen2ForCausalLM", attention_bias=True,
                                 tie_word_embeddings=True)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch) -> Path:
    """Every test gets its own empty cache, chosen the way users choose it."""
    path = tmp_path / "cache"
    monkeypatch.setenv("COSERVE_CACHE_DIR", str(path))
    return path


# -- dequantisation vs gguf.quants ---------------------------------------------------------------

QUANTISABLE = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1]
SHAPES = [(32,), (4, 64), (3, 2, 96), (17, 256)]


@pytest.mark.parametrize("qtype", QUANTISABLE, ids=lambda t: t.name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_dequantize_matches_gguf_reference(qtype, shape):
    rng = np.random.default_rng([int(qtype), *shape])
    values = (rng.standard_normal(shape) * rng.uniform(0.01, 10)).astype(np.float32)
    values.reshape(-1)[:32] = 0.0  # an all-zero block has a zero scale
    raw = quants.quantize(values, qtype)
    ours = dequantize(raw.view(np.uint8), qtype, shape)
    assert ours.dtype == np.float32 and ours.shape == shape
    np.testing.assert_allclose(ours, quants.dequantize(raw, qtype), rtol=1e-6, atol=0)


@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q6_K], ids=lambda t: t.name)
@pytest.mark.parametrize("shape", [(256,), (3, 512), (2, 2, 768)], ids=str)
def test_k_quant_dequantize_matches_gguf_reference(qtype, shape):
    # gguf.quants cannot make K-quants, so the blocks are random bytes with finite fp16 scales
    block_values, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(block_bytes + len(shape))
    blocks = rng.integers(0, 256, size=(int(np.prod(shape)) // block_values, block_bytes), dtype=np.uint8)
    for offset in {T.Q4_K: (0, 2), T.Q6_K: (208,)}[qtype]:
        scales = rng.uniform(-2, 2, size=(len(blocks), 1)).astype(np.float16)
        blocks[:, offset:offset + 2] = scales.view(np.uint8)
    raw = blocks.reshape(*shape[:-1], -1)
    ours = dequantize(raw, qtype, shape)
    np.testing.assert_allclose(ours, quants.dequantize(raw, qtype), rtol=1e-6, atol=0)


def test_dequantize_rejects_bad_input():
    raw = quants.quantize(np.ones((2, 64), np.float32), T.Q8_0)
    with pytest.raises(ValueError, match="bytes"):
        dequantize(raw[:, :-1], T.Q8_0, (2, 64))
    with pytest.raises(ValueError, match="unsupported"):
        dequantize(raw, T.IQ2_XXS, (2, 64))
    assert set(QUANTISABLE) | {T.Q4_K, T.Q6_K} == set(FORMATS)


# -- the bundled SmolLM2 GGUF vs transformers' own GGUF loading ----------------------------------

@pytest.fixture(scope="module")
def smol_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("smol-cache")


@pytest.fixture(scope="module")
def smollm(smol_cache):
    return load_model(SMOLLM, cache_dir=smol_cache)


@pytest.fixture(scope="module")
def smollm_reference(hf_smollm2):
    """transformers' own GGUF loading of the same file (the session fixture in conftest.py)."""
    return hf_smollm2.config, hf_smollm2.state_dict()


def assert_same_tensors(ours: dict, reference: dict, atol: float = 1e-6):
    # torch.testing.assert_close is ~20x slower on the 135M-parameter comparison
    for name, tensor in ours.items():
        expected = reference[name]
        assert tensor.shape == expected.shape and tensor.dtype == expected.dtype, name
        if not torch.equal(tensor, expected):
            error = (tensor.float() - expected.float()).abs().max().item()
            assert error <= atol, f"{name}: max abs error {error} > {atol}"


def test_smollm_weights_equal_transformers(smollm, smollm_reference):
    _, reference = smollm_reference
    assert not smollm.from_cache
    # transformers lists the tied head as its own entry; we keep HF's on-disk naming without it
    assert set(reference) - set(smollm.state_dict) == {"lm_head.weight"}
    assert_same_tensors(smollm.state_dict, reference)
    assert all(t.dtype == torch.float32 for t in smollm.state_dict.values())


def test_smollm_spec_equals_transformers_config(smollm, smollm_reference):
    config, _ = smollm_reference
    reference = ModelSpec.from_hf_config(config.to_dict())
    # both read the file's float32 epsilon; we give back the decimal the original config held
    assert reference.rms_norm_eps == pytest.approx(1e-5, rel=1e-6) and smollm.spec.rms_norm_eps == 1e-5
    assert smollm.spec == dataclasses.replace(reference, rms_norm_eps=1e-5)
    assert (smollm.spec.num_layers, smollm.spec.num_heads, smollm.spec.num_kv_heads) == (30, 9, 3)
    assert smollm.spec.tie_word_embeddings and smollm.layer_range == (0, 30)


def test_smollm_tokenizer_and_template_come_from_the_file(smollm):
    reader = gguf.GGUFReader(resolve(SMOLLM).path)
    tokens = reader.get_field("tokenizer.ggml.tokens").contents()
    assert smollm.tokenizer.convert_ids_to_tokens(list(range(len(tokens)))) == tokens
    assert smollm.chat_template == reader.get_field("tokenizer.chat_template").contents()
    text = smollm.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "<|im_start|>user\nhi<|im_end|>" in text


def test_smollm_second_load_uses_cache(smollm, smollm_reference, smol_cache, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a cached load must not parse or dequantise the GGUF file")

    monkeypatch.setattr(gguf_module, "dequantize", forbidden)
    monkeypatch.setattr(gguf_module, "GGUFReader", forbidden)
    assert list(smol_cache.glob("gguf/*/*/weights.safetensors"))
    assert list(smol_cache.glob("gguf/*/*/tokenizer/tokenizer*.json"))
    again = load_model(SMOLLM, cache_dir=smol_cache)
    assert again.from_cache and again.spec == smollm.spec
    assert again.chat_template == smollm.chat_template
    assert_same_tensors(again.state_dict, smollm_reference[1])
    assert again.tokenizer.encode("Hello, world!") == smollm.tokenizer.encode("Hello, world!")


def test_smollm_layer_range_and_dtype(smollm, smollm_reference, smol_cache):
    stage = load_model(SMOLLM, dtype="bfloat16", layer_range=(20, 30), tokenizer=False,
                       cache_dir=smol_cache)
    assert set(stage.state_dict) == set(expected_shapes(smollm.spec, (20, 30)))
    # the tied head lives in the embedding, so the last stage keeps a copy
    assert "model.embed_tokens.weight" in stage.state_dict
    assert "model.layers.19.self_attn.q_proj.weight" not in stage.state_dict
    assert stage.tokenizer is None
    reference = {n: smollm_reference[1][n].to(torch.bfloat16) for n in stage.state_dict}
    assert_same_tensors(stage.state_dict, reference, atol=0)


# -- synthetic GGUF files, written the way llama.cpp's converter writes them ----------------------

GGUF_LAYER_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
GGUF_GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                     "lm_head.weight": "output.weight"}


def hf_model(spec: ModelSpec, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = spec.to_hf_config()
    model = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model(config.pop("model_type"), **config))
    with torch.no_grad():  # norms start at exactly 1; perturb them so a mix-up would show
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
    return model


def to_gguf_name(hf_name: str) -> str:
    if hf_name in GGUF_GLOBAL_NAMES:
        return GGUF_GLOBAL_NAMES[hf_name]
    _, _, index, rest = hf_name.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{index}.{GGUF_LAYER_NAMES[module]}.{kind}"


def llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    # as convert_hf_to_gguf.py's LlamaModel.permute
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def write_gguf(path: Path, spec: ModelSpec, state_dict: dict, qtype: T = T.F32,
               rope_freqs: np.ndarray | None = None) -> dict:
    """Write `state_dict` as llama.cpp would; returns the tensors a faithful loader must give back."""
    arch = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}[spec.architecture]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(spec.num_layers)
    writer.add_context_length(spec.max_position_embeddings)
    writer.add_embedding_length(spec.hidden_size)
    writer.add_feed_forward_length(spec.intermediate_size)
    writer.add_head_count(spec.num_heads)
    writer.add_head_count_kv(spec.num_kv_heads)
    writer.add_rope_dimension_count(spec.head_dim)
    writer.add_rope_freq_base(spec.rope_theta)
    writer.add_layer_norm_rms_eps(spec.rms_norm_eps)
    writer.add_vocab_size(spec.vocab_size)
    writer.add_bos_token_id(spec.bos_token_id)
    writer.add_eos_token_id(spec.eos_token_id)
    expected = {}
    for name, tensor in state_dict.items():
        if name == "lm_head.weight" and spec.tie_word_embeddings:
            continue  # llama.cpp drops the tied head; a file without output.weight means tied
        values = tensor.detach().float().numpy()
        quantised = values.ndim == 2 and qtype != T.F32
        if quantised:
            stored = quants.quantize(values, qtype)
            # blocks run along rows, so quantising commutes with llama.cpp's row permutation
            expected[name] = torch.from_numpy(quants.dequantize(stored, qtype))
        else:
            stored, expected[name] = values, tensor.detach().float()
        heads = {"q_proj": spec.num_heads, "k_proj": spec.num_kv_heads}.get(name.split(".")[-2])
        if arch == "llama" and heads:
            stored = llama_cpp_permute(stored, heads)
        writer.add_tensor(to_gguf_name(name), stored, raw_dtype=qtype if quantised else None)
    if rope_freqs is not None:
        writer.add_tensor("rope_freqs.weight", rope_freqs.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


@pytest.fixture
def tiny_gguf(tmp_path) -> tuple[Path, dict]:
    path = tmp_path / "tiny.gguf"
    return path, write_gguf(path, TINY, hf_model(TINY).state_dict(), T.Q8_0)


@pytest.mark.parametrize("spec", [TINY, TINY_QWEN2], ids=["llama-gqa", "qwen2-bias-tied"])
@pytest.mark.parametrize("qtype", [T.F32, T.Q8_0, T.Q4_1], ids=lambda t: t.name)
def test_synthetic_gguf_gives_back_hf_tensors(tmp_path, spec, qtype):
    model = hf_model(spec)
    expected = write_gguf(tmp_path / "m.gguf", spec, model.state_dict(), qtype)
    loaded = load_model(str(tmp_path / "m.gguf"))
    assert loaded.spec == spec
    assert loaded.tokenizer is None and loaded.chat_template is None
    assert set(loaded.state_dict) == set(expected_shapes(spec))
    assert_same_tensors(loaded.state_dict, expected, atol=0)


def test_synthetic_gguf_matches_transformers_loader(tmp_path):
    write_gguf(tmp_path / "m.gguf", TINY, hf_model(TINY).state_dict())
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file="m.gguf", dtype=torch.float32).state_dict()
    assert_same_tensors(load_model(str(tmp_path / "m.gguf")).state_dict, reference, atol=0)


# -- cache ---------------------------------------------------------------------------------------

def count_dequantize_calls(monkeypatch) -> list:
    calls = []
    real = gguf_module.dequantize

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(gguf_module, "dequantize", counting)
    return calls


def test_cache_is_written_then_used(tiny_gguf, cache_dir, monkeypatch):
    path, expected = tiny_gguf
    calls = count_dequantize_calls(monkeypatch)
    first = load_model(str(path))
    assert calls and not first.from_cache
    cached = list(cache_dir.glob("gguf/tiny-*/*/weights.safetensors"))
    assert len(cached) == 1

    calls.clear()
    second = load_model(str(path), layer_range=(1, 3))
    assert not calls and second.from_cache
    assert set(second.state_dict) == set(expected_shapes(TINY, (1, 3)))
    assert_same_tensors(second.state_dict, expected, atol=0)


def test_changed_mtime_invalidates_cache(tiny_gguf, cache_dir, monkeypatch):
    path, _ = tiny_gguf
    load_model(str(path))
    old = list(cache_dir.glob("gguf/tiny-*/*/weights.safetensors"))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    calls = count_dequantize_calls(monkeypatch)
    assert not load_model(str(path)).from_cache and calls
    new = list(cache_dir.glob("gguf/tiny-*/*/weights.safetensors"))
    assert len(new) == 1 and new != old  # the stale version is dropped


def test_corrupt_cache_file_is_rebuilt(tiny_gguf, cache_dir):
    path, expected = tiny_gguf
    load_model(str(path))
    [cached] = cache_dir.glob("gguf/tiny-*/*/weights.safetensors")
    cached.write_bytes(b"not a safetensors file")
    again = load_model(str(path))
    assert not again.from_cache
    assert_same_tensors(again.state_dict, expected, atol=0)
    assert load_model(str(path)).from_cache


def test_explicit_cache_dir_overrides_env(tiny_gguf, tmp_path, cache_dir):
    load_model(str(tiny_gguf[0]), cache_dir=tmp_path / "elsewhere")
    assert list((tmp_path / "elsewhere").glob("gguf/*/*/weights.safetensors"))
    assert not cache_dir.exists()


# -- Hugging Face directories --------------------------------------------------------------------

@pytest.mark.parametrize("spec", [TINY, TINY_QWEN2], ids=["llama", "qwen2"])
@pytest.mark.parametrize("shard_size", [None, "60KB"], ids=["single", "sharded"])
def test_hf_dir_loads_back(tmp_path, spec, shard_size):
    model = hf_model(spec)
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(tmp_path, **kwargs)
    assert (tmp_path / "model.safetensors.index.json").exists() == bool(shard_size)
    loaded = load_model(str(tmp_path))
    assert loaded.spec == spec and loaded.tokenizer is None
    assert set(loaded.state_dict) == set(expected_shapes(spec))
    assert_same_tensors(loaded.state_dict, model.state_dict(), atol=0)


def test_hf_dir_layer_range_and_dtype(tmp_path):
    model = hf_model(TINY)
    model.save_pretrained(tmp_path, max_shard_size="60KB")
    stage = load_model(str(tmp_path), dtype=torch.float16, layer_range=(0, 2))
    assert set(stage.state_dict) == set(expected_shapes(TINY, (0, 2)))
    assert "model.norm.weight" not in stage.state_dict and "lm_head.weight" not in stage.state_dict
    reference = {n: t.to(torch.float16) for n, t in model.state_dict().items()}
    assert_same_tensors(stage.state_dict, reference, atol=0)


def test_hf_dir_tokenizer(tmp_path, smollm):
    hf_model(TINY).save_pretrained(tmp_path)
    smollm.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.tokenizer.encode("Hello, world!") == smollm.tokenizer.encode("Hello, world!")
    assert loaded.chat_template == smollm.chat_template


def test_hf_dir_inconsistent_with_config(tmp_path):
    hf_model(TINY).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    with pytest.raises(WeightLoadError, match=str(tmp_path)):
        load_model(str(tmp_path))
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(WeightLoadError, match=str(tmp_path)):
        load_model(str(tmp_path))


# -- random weights ------------------------------------------------------------------------------

def test_random_weights_are_seeded():
    a, b = load_model("random:llama-tiny", seed=1), load_model("random:llama-tiny", seed=1)
    c = load_model("random:llama-tiny", seed=2)
    assert set(a.state_dict) == set(expected_shapes(TINY))
    assert_same_tensors(a.state_dict, b.state_dict, atol=0)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(a.state_dict[q], c.state_dict[q])
    assert torch.equal(a.state_dict["model.norm.weight"], torch.ones(TINY.hidden_size))
    assert 0.015 < a.state_dict[q].std().item() < 0.025
    assert a.tokenizer is None and a.source.kind == "random"


def test_random_weights_per_dtype_are_the_float32_draw_rounded():
    full = random_state_dict(TINY, seed=3)
    half = random_state_dict(TINY, seed=3, dtype=torch.bfloat16)
    assert all(t.dtype == torch.bfloat16 for t in half.values())
    assert_same_tensors(half, {n: t.to(torch.bfloat16) for n, t in full.items()}, atol=0)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("layer_range", [(0, 1), (1, 3), (2, 4), (0, 4)])
def test_random_layer_range(tmp_path, tied, layer_range):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**PRESETS["llama-tiny"], "tie_word_embeddings": tied}))
    spec = ModelSpec.from_hf_config(json.loads(config.read_text()))
    stage = load_model(f"random:{config}", layer_range=layer_range)
    full = random_state_dict(spec)
    start, end = layer_range
    layers = {int(n.split(".")[2]) for n in stage.state_dict if n.startswith("model.layers.")}
    assert layers == set(range(start, end))
    assert ("model.embed_tokens.weight" in stage.state_dict) == (start == 0 or (tied and end == 4))
    assert ("model.norm.weight" in stage.state_dict) == (end == 4)
    assert ("lm_head.weight" in stage.state_dict) == (end == 4 and not tied)
    # stage tensors are the whole model's, and the stage size is what ModelSpec says it is
    assert_same_tensors(stage.state_dict, full, atol=0)
    assert sum(t.numel() for t in stage.state_dict.values()) == spec.num_params(start, end)


@pytest.mark.parametrize("layer_range", [(2, 2), (-1, 2), (0, 5), (3, 1)])
def test_bad_layer_range(layer_range):
    with pytest.raises(ConfigError):
        load_model("random:llama-tiny", layer_range=layer_range)


PUBLISHED_PARAMS = {  # from the model cards / papers
    "smollm2-135m": 134.5e6, "llama-7b": 6.74e9, "llama-13b": 13.0e9, "llama-30b": 32.5e9,
    "llama-65b": 65.2e9, "llama2-7b": 6.74e9, "llama2-13b": 13.0e9, "llama2-70b": 69.0e9,
    "llama3-8b": 8.03e9, "mistral-7b": 7.24e9, "qwen2-0.5b": 0.494e9, "qwen2-7b": 7.62e9,
}


@pytest.mark.parametrize("preset", sorted(PUBLISHED_PARAMS))
def test_presets_have_published_sizes(preset):
    spec = ModelSpec.from_hf_config(resolve(f"random:{preset}").config)
    assert spec.num_params() == pytest.approx(PUBLISHED_PARAMS[preset], rel=0.02)


def test_smollm_preset_is_the_real_shape(smollm):
    preset = ModelSpec.from_hf_config(PRESETS["smollm2-135m"])
    fields = ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "intermediate_size",
              "vocab_size", "max_position_embeddings", "rope_theta", "tie_word_embeddings")
    assert {f: getattr(preset, f) for f in fields} == {f: getattr(smollm.spec, f) for f in fields}


# -- resolution and bad input --------------------------------------------------------------------

def test_resolve_kinds(tmp_path, tiny_gguf):
    assert resolve(SMOLLM).kind == "gguf" and resolve(SMOLLM).path.is_file()
    assert resolve(str(tiny_gguf[0])).kind == "gguf"
    hf_model(TINY).save_pretrained(tmp_path / "hf")
    assert resolve(str(tmp_path / "hf")).kind == "hf_dir"
    renamed = tmp_path / "weights.bin"
    renamed.write_bytes(tiny_gguf[0].read_bytes())
    assert resolve(str(renamed)).kind == "gguf"  # recognised by its magic, not its name
    assert resolve(str(resolve(SMOLLM).path.parent)).path == resolve(SMOLLM).path  # a dir with one .gguf


@pytest.mark.parametrize("name", ["no-such-model", "random:no-such-preset"])
def test_unknown_model_lists_known_ones(name):
    with pytest.raises(UnknownModelError) as info:
        load_model(name)
    assert "llama-tiny" in str(info.value)


def test_missing_paths_name_the_path(tmp_path):
    for missing in [tmp_path / "absent.gguf", tmp_path / "absent" / "dir", tmp_path / "nothing.json"]:
        with pytest.raises(WeightLoadError, match=str(missing)):
            load_model(str(missing) if missing.suffix != ".json" else f"random:{missing}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightLoadError, match="config.json"):
        load_model(str(tmp_path / "empty"))


def test_garbage_gguf_names_the_path(tmp_path):
    path = tmp_path / "garbage.gguf"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(WeightLoadError, match=str(path)):
        load_model(str(path))


@pytest.mark.parametrize("keep", [0.001, 0.02, 0.5, 0.999])
def test_truncated_gguf_names_the_path(tiny_gguf, tmp_path, keep):
    data = tiny_gguf[0].read_bytes()
    path = tmp_path / "truncated.gguf"
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(WeightLoadError, match=str(path)):
        load_model(str(path))


def test_unsupported_gguf_architecture(tmp_path):
    writer = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelConfigError, match="gpt2"):
        load_model(str(tmp_path / "gpt2.gguf"))


def test_gguf_rope_freq_factors_give_llama3_rope(tmp_path):
    """llama.cpp stores Llama 3.1 rope scaling as `rope_freqs.weight`; the model must match HF's llama3 rope."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from coserve import LLM

    from .test_model_vs_hf import full_logits, relative_error

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}
    spec = dataclasses.replace(TINY, rope_scaling=scaling)
    model = hf_model(spec)
    default, _ = ROPE_INIT_FUNCTIONS["linear"](model.config.__class__(
        **{**model.config.to_dict(), "rope_parameters": {"rope_type": "linear", "factor": 1.0,
                                                         "rope_theta": spec.rope_theta}}), "cpu")
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](model.config, "cpu")
    path = tmp_path / "llama31.gguf"
    write_gguf(path, dataclasses.replace(spec, rope_scaling=None), model.state_dict(),
               rope_freqs=(default / scaled).float().numpy())
    llm = LLM(str(path), num_kv_blocks=16, block_size=4)
    assert llm.engine.spec.rope_scaling["rope_type"] == "freq_factors"
    ids = list(range(3, 40))  # beyond the 16-token original context, where the scaling bites
    with torch.no_grad():
        reference = model(torch.tensor([ids])).logits[0]
    assert relative_error(full_logits(llm, ids), reference) < 1e-4
