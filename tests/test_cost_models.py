"""Model and GPU catalogues, Hugging Face config parsing, and their errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sim.catalogue.hardware import GPU_CATALOGUE, resolve_gpu
from sim.catalogue.models import MODEL_CATALOGUE, ModelSpec, dtype_bytes, model_spec_from_hf, resolve_model
from sim.errors import ConfigError

GROUND_TRUTH = Path(os.environ.get("SERVESIM_GROUND_TRUTH", Path(__file__).resolve().parents[1].parent / "shared" / "ground_truth"))

REQUIRED = ["llama-2-7b", "llama-2-13b", "llama-2-70b", "codellama-34b", "llama-3.1-8b", "llama-3.1-70b", "qwen2.5-7b", "qwen3-14b", "mixtral-8x7b"]


def test_catalogue_has_required_models_with_sources():
    """Every model the study uses is in the catalogue and names its source."""
    for name in REQUIRED:
        spec = resolve_model(name)
        assert spec.name == name
        assert "config.json" in spec.source


def test_llama2_7b_sizes_by_hand():
    """Weights and KV bytes of Llama-2-7B follow the reference formulas."""
    m = resolve_model("llama-2-7b")
    L, d, dff, b = 32, 4096, 11008, 2
    # W = L·b·(2d² + 2d·dkv + 3d·dff), dkv = d for MHA
    assert m.weights_bytes == L * b * (2 * d * d + 2 * d * d + 3 * d * dff)
    assert m.kv_bytes_per_token == 2 * 32 * 32 * 128 * 2  # 2·L·Hk·dh·b = 512 KiB


def test_aliases_and_case():
    """HF ids and odd casing map to catalogue entries."""
    assert resolve_model("meta-llama/Llama-2-7b-hf") is MODEL_CATALOGUE["llama-2-7b"]
    assert resolve_model("LLAMA-2-70B") is MODEL_CATALOGUE["llama-2-70b"]
    assert resolve_model("Qwen/Qwen3-14B") is MODEL_CATALOGUE["qwen3-14b"]


def test_unknown_model_lists_names():
    with pytest.raises(ConfigError) as e:
        resolve_model("gpt-17")
    assert "llama-2-7b" in str(e.value) and "qwen3-14b" in str(e.value)


def _base_cfg(**kw):
    cfg = {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 8, "torch_dtype": "bfloat16"}
    cfg.update(kw)
    return cfg


def test_hf_fallbacks():
    """intermediate_size → ffn_hidden_size → 4d; KV heads fallbacks → H; head_dim = d/H."""
    m = model_spec_from_hf(_base_cfg(), "x")
    assert (m.intermediate_size, m.num_kv_heads, m.head_dim, m.bytes_per_param) == (1024, 8, 32, 2)
    assert model_spec_from_hf(_base_cfg(ffn_hidden_size=700), "x").intermediate_size == 700
    assert model_spec_from_hf(_base_cfg(num_kv_heads=2), "x").num_kv_heads == 2
    assert model_spec_from_hf(_base_cfg(multi_query_group_num=4), "x").num_kv_heads == 4
    assert model_spec_from_hf(_base_cfg(num_key_value_heads=1, num_kv_heads=2), "x").num_kv_heads == 1


@pytest.mark.parametrize(
    "dtype,b", [("float32", 4), ("float16", 2), ("bfloat16", 2), ("int8", 1), ("uint8", 1), ("float8_e4m3fn", 1), ("fp8", 1), ("int4", 1), ("nf4", 1)]
)
def test_dtype_bytes(dtype, b):
    assert dtype_bytes(dtype) == b
    assert model_spec_from_hf(_base_cfg(torch_dtype=None, dtype=dtype), "x").bytes_per_param == b


def test_unknown_dtype_and_missing_fields_are_errors():
    with pytest.raises(ConfigError, match="unknown dtype"):
        model_spec_from_hf(_base_cfg(torch_dtype="complex64"), "x")
    with pytest.raises(ConfigError, match="hidden_size"):
        model_spec_from_hf({"num_hidden_layers": 2, "num_attention_heads": 2, "torch_dtype": "float16"}, "x")
    with pytest.raises(ConfigError, match="dtype"):
        model_spec_from_hf({"num_hidden_layers": 2, "hidden_size": 8, "num_attention_heads": 2}, "x")


def test_text_config_merged_over_top_level():
    """A multimodal config's text_config wins over top-level keys."""
    cfg = {
        "torch_dtype": "bfloat16",
        "hidden_size": 1,
        "text_config": {
            "num_hidden_layers": 6,
            "hidden_size": 512,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "intermediate_size": 1000,
            "head_dim": 64,
        },
    }
    m = model_spec_from_hf(cfg, "mm")
    assert (m.num_layers, m.hidden_size, m.num_kv_heads, m.head_dim, m.intermediate_size) == (6, 512, 2, 64, 1000)


def test_moe_weights_all_experts_compute_active():
    """MoE memory counts every expert (and the router); compute counts the active ones."""
    cfg = _base_cfg(num_local_experts=8, num_experts_per_tok=2, intermediate_size=512)
    m = model_spec_from_hf(cfg, "moe")
    assert (m.num_experts, m.num_experts_per_tok) == (8, 2)
    d, L, dff = 256, 4, 512
    attn = 4 * d * d  # Q, O, K, V with Hk = H
    router = d * 8
    assert m.weights_bytes == L * 2 * (attn + router + 8 * 3 * d * dff)
    assert m.active_params_per_token == L * (attn + router + 2 * 3 * d * dff)
    alt = model_spec_from_hf(_base_cfg(num_experts=4, num_experts_per_tok=1), "moe2")
    assert alt.num_experts == 4 and alt.active_experts == 1
    mix = resolve_model("mixtral-8x7b")
    assert mix.is_moe and mix.weights_bytes > 4 * resolve_model("llama-3.1-8b").weights_bytes


def test_spec_validation():
    with pytest.raises(ConfigError, match="multiple"):
        ModelSpec("bad", 2, 64, 4, 3, 16, 128, 0, 2)
    with pytest.raises(ConfigError, match="num_layers"):
        ModelSpec("bad", 0, 64, 4, 4, 16, 128, 0, 2)


def test_resolve_path_file_and_folder(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(_base_cfg()))
    by_dir = resolve_model(str(tmp_path / "m"))
    by_file = resolve_model(str(tmp_path / "m" / "config.json"))
    assert by_dir == by_file and by_dir.num_layers == 4 and by_dir.name == "m"


def test_resolve_path_errors(tmp_path):
    missing = tmp_path / "nope" / "config.json"
    with pytest.raises(ConfigError, match="not found") as e:
        resolve_model(str(missing))
    assert str(missing) in str(e.value)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON") as e:
        resolve_model(str(bad))
    assert str(bad) in str(e.value)


_GT_DIRS = {
    "llama-2-7b": "llama-2-7b-hf",
    "llama-2-70b": "llama-2-70b-hf",
    "codellama-34b": "codellama-34b-instruct-hf",
    "llama-3.1-8b": "llama-3.1-8b-instruct",
    "llama-3.1-70b": "llama-3.1-70b-instruct",
    "qwen2.5-7b": "qwen2.5-7b-instruct",
    "qwen3-14b": "qwen3-14b",
    "mixtral-8x7b": "mixtral-8x7b-v0.1",
}


@pytest.mark.parametrize("name", sorted(_GT_DIRS))
def test_catalogue_matches_ground_truth_configs(name):
    """The hand-written catalogue agrees with the published config.json files."""
    path = GROUND_TRUTH / "model_configs" / _GT_DIRS[name] / "config.json"
    if not path.is_file():
        pytest.skip(f"ground truth not found at {GROUND_TRUTH} (set SERVESIM_GROUND_TRUTH)")
    parsed = resolve_model(str(path))
    cat = resolve_model(name)
    fields = [
        "num_layers",
        "hidden_size",
        "num_heads",
        "num_kv_heads",
        "head_dim",
        "intermediate_size",
        "vocab_size",
        "bytes_per_param",
        "max_position_embeddings",
        "num_experts",
        "num_experts_per_tok",
    ]
    assert {f: getattr(parsed, f) for f in fields} == {f: getattr(cat, f) for f in fields}


def test_gpu_catalogue_values_and_aliases():
    h = resolve_gpu("H100")
    assert (h.peak_bf16_tflops, h.hbm_bw_tbs, h.bw_efficiency, h.per_layer_overhead_us, h.memory_gib) == (989.5, 3.35, 0.82, 100.0, 80.0)
    a = resolve_gpu("a100-80")
    assert (a.peak_bf16_tflops, a.hbm_bw_tbs, a.bw_efficiency) == (312.0, 2.039, 0.80)
    assert resolve_gpu("h100-sxm") is h and resolve_gpu("H200").hbm_bw_tbs == 4.8
    assert resolve_gpu("l40s").peak_bf16_tflops == 362.05
    for g in GPU_CATALOGUE.values():
        assert g.source


def test_unknown_gpu_lists_names():
    with pytest.raises(ConfigError) as e:
        resolve_gpu("B200")
    assert "H100" in str(e.value) and "A100" in str(e.value)
