"""Physics that travels: the GPU hardware description and user GPU files, MFU curves carried to
other GPUs, quantised weights and KV caches, mixture-of-experts pricing, TP over PCIe, and a
calibration that runs on any GPU (the default run uses it)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from sim.catalogue.hardware import GPU_CATALOGUE, gpu_names, load_gpu_file, resolve_gpu
from sim.catalogue.models import model_spec_from_hf, parse_quantization, resolve_model, served_model
from sim.cli import main
from sim.config import parse_run_config
from sim.core.server import derive_num_gpu_blocks
from sim.core.simulation import simulate
from sim.cost import build_cost_model, resolve_cost_settings
from sim.cost.mfu import DECODE_MFU_PER_GROUP, GEMM_M0, BuiltinMfu, builtin_mfu_for
from sim.cost.roofline_build import build_roofline
from sim.entities import Batch, BatchItem
from sim.errors import ConfigError

GT = Path(__file__).resolve().parents[2] / "shared" / "ground_truth"
SCOUT = GT / "model_configs" / "llama-4-scout-17b-16e-instruct-fp8-dynamic"


def _decode_batch(n: int, kv: int = 1024) -> Batch:
    return Batch.of([BatchItem(i, 1, kv, True) for i in range(n)])


# ------------------------------------------------------------------ hardware description


def test_catalogue_gpus_describe_their_hardware_with_sources():
    for name in gpu_names():
        g = resolve_gpu(name)
        assert g.source and g.interconnect in ("nvlink", "pcie") and g.interconnect_bw_gbps > 0
        assert g.peak_fp8_tflops is None or g.peak_fp8_tflops >= g.peak_bf16_tflops
    a100 = resolve_gpu("A100")
    assert a100.peak_fp8_tflops is None and not a100.has_precision("fp8")
    assert a100.peak_flops_for("fp8") == a100.peak_flops  # weight-only FP8 computes in BF16
    h100 = resolve_gpu("h100-sxm")
    assert h100.peak_flops_for("fp8") == 2 * h100.peak_flops
    assert resolve_gpu("L40S").interconnect == "pcie" and resolve_gpu("H100").interconnect == "nvlink"


def _gpu_file(tmp_path, **fields):
    data = {
        "name": "TestGPU",
        "peak_bf16_tflops": 500.0,
        "hbm_bw_tbs": 2.5,
        "memory_gib": 96,
        "interconnect": "pcie",
        "interconnect_bw_gbps": 64,
        "source": "made up for a test",
        **fields,
    }
    data = {k: v for k, v in data.items() if v is not None}
    p = tmp_path / "gpu.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_user_gpu_file_loads_and_runs(tmp_path):
    p = _gpu_file(tmp_path, peak_fp8_tflops=1000.0)
    g = resolve_gpu(str(p))
    assert (g.name, g.peak_bf16_tflops, g.peak_fp8_tflops, g.memory_gib) == ("TestGPU", 500.0, 1000.0, 96)
    res = simulate(parse_run_config({"gpu": str(p), "workload": {"num_requests": 5}}))
    assert (res.requests["status"] == "finished").all()
    # the shipped examples load too
    root = Path(__file__).resolve().parents[1] / "configs" / "gpus"
    for f in sorted(root.glob("*.yaml")):
        assert load_gpu_file(f).source


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"warp_drive": 1}, "unknown key"),
        ({"source": None}, "missing field.*source"),
        ({"peak_bf16_tflops": True}, "peak_bf16_tflops must be a number"),
        ({"interconnect": "carrier-pigeon"}, "interconnect must be one of"),
        ({"name": "H100"}, "catalogue GPU"),
        ({"hbm_bw_tbs": -1}, "must be > 0"),
    ],
)
def test_bad_gpu_files_are_errors_naming_the_field(tmp_path, fields, match):
    with pytest.raises(ConfigError, match=match):
        resolve_gpu(str(_gpu_file(tmp_path, **fields)))


def test_gpu_file_errors_exit_2_from_the_cli(tmp_path):
    r = CliRunner().invoke(main, ["run", "--gpu", str(tmp_path / "missing.yaml"), "-q", "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "gpu: file not found" in r.output


# ------------------------------------------------------------------ MFU on other GPUs


def test_builtin_curves_reproduce_the_h100_fit_and_move_with_the_ridge():
    h = GPU_CATALOGUE["H100"]
    at_h100 = builtin_mfu_for(32, 8, h.peak_flops, h.peak_flops, h.peak_bw_bytes_s, 2.0, 2.0)
    assert at_h100 == BuiltinMfu(32, 8)  # exactly the fitted constants
    a = GPU_CATALOGUE["A100"]
    at_a100 = builtin_mfu_for(32, 8, a.peak_flops, a.peak_flops, a.peak_bw_bytes_s, 2.0, 2.0)
    assert at_a100.gemm_m0 == pytest.approx(GEMM_M0 * a.ridge_flop_per_byte / h.ridge_flop_per_byte)
    assert at_a100.decode_mfu_per_group == pytest.approx(DECODE_MFU_PER_GROUP * h.ridge_flop_per_byte / a.ridge_flop_per_byte)
    # FP8 weights at the FP8 peak: peak and bytes both halve the ratio → the same knee
    fp8 = builtin_mfu_for(32, 8, h.peak_flops_for("fp8"), h.peak_flops, h.peak_bw_bytes_s, 1.0, 2.0)
    assert fp8.gemm_m0 == pytest.approx(GEMM_M0)
    # an FP8 KV cache doubles decode attention's FLOPs per byte
    kv8 = builtin_mfu_for(32, 8, h.peak_flops, h.peak_flops, h.peak_bw_bytes_s, 2.0, 1.0)
    assert kv8.decode_mfu_per_group == pytest.approx(2 * DECODE_MFU_PER_GROUP)


def test_a_missing_table_shape_warns(tmp_path):
    bench = GT / "bench_data"
    if not bench.is_dir():
        pytest.skip("no shared bench_data")
    from sim.cost.mfu import MfuTableWarning

    with pytest.warns(MfuTableWarning, match="no head config 40-8-128"):
        build_roofline("qwen3-14b", "H100", 1, bench_data_dir=str(bench))


# ------------------------------------------------------------------ quantization


def _hf(**extra):
    base = {
        "num_hidden_layers": 4,
        "hidden_size": 1024,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
        "intermediate_size": 4096,
        "vocab_size": 32000,
        "torch_dtype": "bfloat16",
        "max_position_embeddings": 4096,
    }
    return {**base, **extra}


def test_quantization_configs_are_read():
    fp8 = model_spec_from_hf(_hf(quantization_config={"quant_method": "fp8", "activation_scheme": "dynamic"}), "m")
    assert (fp8.bytes_per_param, fp8.act_bytes, fp8.gemm_precision) == (1.0, 2.0, "fp8")
    awq = model_spec_from_hf(_hf(quantization_config={"quant_method": "awq", "bits": 4, "group_size": 128}), "m")
    assert awq.gemm_precision == "bf16" and awq.bytes_per_param == pytest.approx(0.5 + 2.5 / 128)
    w8a8 = {"config_groups": {"g": {"weights": {"num_bits": 8, "type": "int"}, "input_activations": {"num_bits": 8, "type": "int"}}}}
    ct = model_spec_from_hf(_hf(quantization_config={"quant_method": "compressed-tensors", **w8a8}), "m")
    assert (ct.bytes_per_param, ct.gemm_precision) == (1.0, "int8")
    w4a16 = {"config_groups": {"g": {"weights": {"num_bits": 4, "type": "int", "group_size": 128}, "input_activations": None}}}
    ct4 = model_spec_from_hf(_hf(quantization_config={"quant_method": "compressed-tensors", **w4a16}), "m")
    assert ct4.gemm_precision == "bf16" and ct4.bytes_per_param < 0.6
    # the KV cache and the activations keep the model's dtype
    assert fp8.kv_bytes_per_token == model_spec_from_hf(_hf(), "m").kv_bytes_per_token


@pytest.mark.parametrize("qcfg", [{"quant_method": "bitsandbytes"}, {"quant_method": "gguf"}, {}, {"quant_method": "modelopt", "quant_algo": "NVFP4"}])
def test_unknown_quantization_is_an_error_not_bf16(qcfg):
    with pytest.raises(ConfigError, match="quantization_config"):
        model_spec_from_hf(_hf(quantization_config=qcfg), "m")
    with pytest.raises(ConfigError):
        parse_quantization("fp8", "m")


def test_fp8_checkpoint_from_the_shared_data():
    if not SCOUT.is_dir():
        pytest.skip("no shared model configs")
    m = resolve_model(str(SCOUT))
    assert (m.gemm_precision, m.bytes_per_param, m.num_experts, m.num_experts_per_tok) == ("fp8", 1.0, 16, 1)
    # Llama 4 Scout: ~109 B parameters in all, ~17 B active (layers: a little less)
    assert 100e9 < m.weights_bytes < 112e9 and 14e9 < m.active_params_per_token < 17e9


def test_fp8_weights_halve_a_memory_bound_decode_and_use_the_fp8_peak():
    """Llama-3.1-8B, one decode: memory-bound, the weight bytes halve with FP8; a large prefill
    is compute-bound and runs at the FP8 peak on H100 but at the BF16 peak on A100."""
    base = resolve_model("llama-3.1-8b")
    fp8 = served_model(base, "fp8")
    assert fp8.bytes_per_param == 1.0 and fp8.gemm_precision == "fp8" and fp8.quantization == "fp8-online"
    for gpu in ("H100", "A100"):
        b16, f8 = build_roofline(base, gpu, 1), build_roofline(fp8, gpu, 1)
        one = _decode_batch(1, 128)
        mem16, mem8 = b16.price(one).memory_s, f8.price(one).memory_s
        weights_s = base.weights_bytes / 2 / (resolve_gpu(gpu).peak_bw_bytes_s * b16.bw_efficiency)
        assert mem16 - mem8 == pytest.approx(weights_s, rel=1e-9)
    h16, h8 = build_roofline(base, "H100", 1), build_roofline(fp8, "H100", 1)
    a16, a8 = build_roofline(base, "A100", 1), build_roofline(fp8, "A100", 1)
    assert h8.gemm_s(8192) < 0.6 * h16.gemm_s(8192)  # FP8 tensor cores
    assert a8.gemm_s(8192) == pytest.approx(a16.gemm_s(8192), rel=0.05)  # weight-only on A100: BF16 compute


def test_quantization_flag_errors():
    base = resolve_model("llama-3.1-8b")
    with pytest.raises(ConfigError, match="server.quantization.*needs a checkpoint"):
        served_model(base, "awq")
    with pytest.raises(ConfigError, match="server.quantization.*not supported"):
        served_model(base, "int3")
    if SCOUT.is_dir():
        with pytest.raises(ConfigError, match="does not match"):
            served_model(resolve_model(str(SCOUT)), "awq")
        assert served_model(resolve_model(str(SCOUT)), "compressed-tensors").gemm_precision == "fp8"


def test_fp8_kv_cache_doubles_the_blocks_and_halves_the_kv_reads():
    m = resolve_model("llama-2-7b")
    kv8 = served_model(m, None, "fp8")
    assert kv8.kv_bytes_per_token == m.kv_bytes_per_token / 2 and kv8.weights_bytes == m.weights_bytes
    h = resolve_gpu("H100")
    b16, b8 = derive_num_gpu_blocks(m, h, 1, 0.9, 16), derive_num_gpu_blocks(kv8, h, 1, 0.9, 16)
    assert b8 in (2 * b16, 2 * b16 + 1)
    r16, r8 = build_roofline(m, "H100", 1), build_roofline(kv8, "H100", 1)
    big = _decode_batch(64, 4000)
    # KV traffic of 64 decodes: each writes one token and reads κ × 4000
    kv_s = 64 * (1 + 4000 * r16.decode_kv_read_fraction) * m.kv_bytes_per_token / r16._bw_bytes_s
    assert r16.price(big).memory_s - r8.price(big).memory_s == pytest.approx(kv_s / 2, rel=1e-6)
    # and through a run config: the server's KV capacity doubles
    res16 = simulate(parse_run_config({"workload": {"num_requests": 3}}))
    res8 = simulate(parse_run_config({"workload": {"num_requests": 3}, "server": {"kv_cache_dtype": "fp8"}}))
    assert res8.derived["num_gpu_blocks"] in (2 * res16.derived["num_gpu_blocks"], 2 * res16.derived["num_gpu_blocks"] + 1)


# ------------------------------------------------------------------ MoE


def test_experts_touched_closed_forms():
    mix = resolve_model("mixtral-8x7b")
    assert mix.experts_touched(0) == 0 and mix.experts_touched(1) == pytest.approx(2.0)
    assert mix.experts_touched(2) == pytest.approx(8 * (1 - (6 / 8) ** 2))
    assert mix.experts_touched(10_000) == pytest.approx(8.0)
    per_expert = mix.expert_params * mix.bytes_per_param * mix.num_moe_layers
    assert mix.weights_bytes_touched(1) == pytest.approx(mix.non_expert_params * mix.bytes_per_param + 2 * per_expert)
    assert mix.weights_bytes_touched(100_000) == pytest.approx(mix.weights_bytes)


def test_moe_step_reads_only_the_experts_it_routes_to():
    """A one-token decode reads k experts' weights; a large batch reads all of them."""
    mix = resolve_model("mixtral-8x7b")
    r = build_roofline(mix, "H100", 2)
    bw = r._bw_bytes_s
    one = r.price(_decode_batch(1, 1))
    dyn_one = r.dynamic_bytes(1, 1)
    assert one.memory_s == pytest.approx((mix.weights_bytes_touched(1) + dyn_one) / 2 / bw, rel=1e-9)
    big = r.price(_decode_batch(256, 1))
    assert big.memory_s == pytest.approx((mix.weights_bytes_touched(256) + 256 * dyn_one) / 2 / bw, rel=1e-9)
    assert mix.weights_bytes_touched(256) == pytest.approx(mix.weights_bytes, rel=1e-12)
    assert one.memory_s < big.memory_s
    # expert GEMMs run at the per-expert row count: slower than one GEMM of M = tokens
    m = 64
    naive = replace(mix, num_experts=0, num_experts_per_tok=0, intermediate_size=mix.expert_width * mix.num_experts_per_tok)
    dense_equiv = build_roofline(naive, "H100", 2).gemm_s(m)
    assert r.gemm_s(m) > dense_equiv


def test_moe_parses_shared_experts_and_dense_layers():
    qwen_moe = _hf(num_experts=60, num_experts_per_tok=4, moe_intermediate_size=1408, shared_expert_intermediate_size=5632)
    m = model_spec_from_hf(qwen_moe, "q")
    assert (m.expert_width, m.shared_expert_intermediate_size, m.num_dense_layers) == (1408, 5632, 0)
    ds = _hf(n_routed_experts=64, num_experts_per_tok=6, moe_intermediate_size=1408, n_shared_experts=2, first_k_dense_replace=1)
    d = model_spec_from_hf(ds, "d")
    assert (d.num_experts, d.shared_expert_intermediate_size, d.num_dense_layers, d.num_moe_layers) == (64, 2816, 1, 3)


# ------------------------------------------------------------------ TP over PCIe


def test_tp_allreduce_over_pcie_is_an_order_of_magnitude_slower():
    kw = {"allreduce_efficiency": 1.0}
    nv = build_roofline("llama-2-7b", "H100", 2, **kw)
    pcie = build_roofline("llama-2-7b", "L40S", 2, **kw)
    assert nv.allreduce_bw_gbps == 450.0 and pcie.allreduce_bw_gbps == 32.0
    assert pcie._comm_s_per_token / nv._comm_s_per_token == pytest.approx(450 / 32)


# ------------------------------------------------------------------ one calibration, every GPU


def test_default_run_uses_the_shipped_calibration_and_none_is_the_seed():
    default = resolve_cost_settings(parse_run_config({}))
    assert default.calibration == "h100" and default.knobs["per_step_overhead_us"] is not None
    seed = resolve_cost_settings(parse_run_config({"cost": {"calibration": "none"}}))
    assert seed.calibration is None and all(v is None for v in seed.knobs.values())
    fixed = resolve_cost_settings(parse_run_config({"cost": {"model": "fixed"}}))
    assert fixed.calibration is None
    build_cost_model(parse_run_config({"cost": {"model": "fixed", "calibration": "none"}}))  # accepted: nothing to ignore


@pytest.mark.parametrize("gpu", ["A100", "L40S", "H100-PCIe", "H200"])
def test_calibration_transfers_to_every_gpu(gpu):
    cfg = parse_run_config({"gpu": gpu, "workload": {"num_requests": 5}})
    s = resolve_cost_settings(cfg)
    assert s.calibration == "h100" and s.transferred_from == "H100"
    assert resolve_cost_settings(parse_run_config({})).transferred_from is None
    res = simulate(cfg)
    assert (res.requests["status"] == "finished").all()


def test_transferred_intervals_are_wider(tmp_path):
    args = ["run", "--num-requests", "40", "--rate", "4", "-q", "--no-plots", "--intervals"]
    widths = {}
    for gpu in ("H100", "A100"):
        out = tmp_path / gpu
        r = CliRunner().invoke(main, [*args, "--gpu", gpu, "-o", str(out)])
        assert r.exit_code == 0, r.output
        doc = json.loads((out / "summary.json").read_text())
        assert doc["calibration"] == "h100" and doc["calibration_transferred_from"] == (None if gpu == "H100" else "H100")
        run = doc["runs"][0]
        lo, hi = run["intervals_90"]["e2e_mean_ms"]
        widths[gpu] = math.log(hi / lo)
        if gpu == "A100":
            assert "transferred" in r.output
    assert widths["A100"] > widths["H100"]


def test_a100_decode_is_faster_than_the_seed_model_says():
    """The seed's per-layer overhead (100 µs × 32 layers) made an A100 decode step 2-3x the
    measured one; the transferred calibration prices a lone Llama-2-7B decode near the
    weight-streaming floor: 13.5 GB / (2.039 TB/s) = 6.6 ms, plus host time."""
    cal = build_cost_model(parse_run_config({"gpu": "A100"}))
    seed = build_cost_model(parse_run_config({"gpu": "A100", "cost": {"calibration": "none"}}))
    t_cal, t_seed = cal.price(_decode_batch(1, 512)).total_s, seed.price(_decode_batch(1, 512)).total_s
    floor = resolve_model("llama-2-7b").weights_bytes / resolve_gpu("A100").peak_bw_bytes_s
    assert floor < t_cal < 1.6 * floor < t_seed


# ------------------------------------------------------------------ the API server under a burst


def test_a_burst_queues_for_tokenization_one_request_at_a_time():
    """Ten 1,000-token prompts sent at once, 10 µs per prompt token, 2 ms fixed latency: the
    k-th reaches the engine after 2 ms + k × 10 ms (FIFO, one API-server process); with two
    processes the queue drains twice as fast."""

    def run(count):
        cfg = parse_run_config(
            {
                # a near-instant engine, so that the waits are the API server's
                "cost": {"model": "fixed", "fixed_step_s": 1e-6, "frontend_latency_ms": 2.0, "frontend_us_per_prompt_token": 10.0},
                "server": {"api_server_count": count},
                "workload": {"num_requests": 10, "prompt_tokens": {"dist": "fixed", "value": 1000}, "output_tokens": {"dist": "fixed", "value": 2}},
                "arrival": {"strategy": "throughput", "rate_rps": None},
            }
        )
        return simulate(cfg).requests.sort_values("request_id")

    one, two = run(1), run(2)
    # queue delay = time from send to the engine's first step for it, at least the API server's
    waits_one = (one["first_scheduled_s"] - one["arrival_s"]).to_numpy()
    expected = [2e-3 + (k + 1) * 10e-3 for k in range(10)]
    assert waits_one == pytest.approx(expected, abs=1e-5)  # plus at most a few 1 µs steps
    waits_two = (two["first_scheduled_s"] - two["arrival_s"]).to_numpy()
    assert waits_two == pytest.approx([2e-3 + (k // 2 + 1) * 10e-3 for k in range(10)], abs=1e-5)


def test_gemm_knee_moves_with_the_weight_shape_and_time_still_grows_with_work():
    from sim.cost.mfu import GEMM_K_RANGE, GEMM_K_REF, GEMM_N_RANGE, GEMM_N_REF, gemm_knee_factor

    assert gemm_knee_factor(int(GEMM_K_REF), int(GEMM_N_REF)) == 1.0
    assert gemm_knee_factor(8192, 11008) < 1.0 < gemm_knee_factor(2048, 6144)
    # held at the measured range's edges, not extrapolated
    assert gemm_knee_factor(65536, 65536) == gemm_knee_factor(int(GEMM_K_RANGE[1]), int(GEMM_N_RANGE[1]))
    mfu = BuiltinMfu(32, 8)

    def t(m, k, n):  # GEMM time ∝ FLOPs / MFU
        return m * k * n / mfu.gemm(m, k, n)

    for m in (8, 64, 512, 4096):
        ks = [1024, 2048, 4096, 8192, 16384]
        assert all(t(m, a, 8192) < t(m, b, 8192) for a, b in zip(ks, ks[1:]))
        ns = [4096, 6144, 8192, 11008, 22016]
        assert all(t(m, 4096, a) < t(m, 4096, b) for a, b in zip(ns, ns[1:]))
    assert all(t(a, 4096, 8192) < t(b, 4096, 8192) for a, b in zip([8, 16, 64, 512], [16, 64, 512, 4096]))


def test_the_study_reproduction_keeps_the_seed_model_and_validate_the_calibration(tmp_path):
    if not (GT / "points.csv").is_file():
        pytest.skip("no shared ground truth")
    from sim.studies.groundtruth import load_points
    from sim.studies.point_configs import point_to_config

    point = load_points(GT).iloc[0]
    study = point_to_config(point, None, gt_dir=GT, mode="study", max_requests_per_point=3)
    assert resolve_cost_settings(study).calibration is None  # the seed study's harness: no calibration
    assert study.server.allow_long_max_model_len  # BLIS does not enforce max_model_len
    guidellm = point_to_config(point, None, gt_dir=GT, mode="guidellm", max_requests_per_point=3)
    assert resolve_cost_settings(guidellm).calibration == "h100"
    args = ["validate", "--ground-truth", str(GT), "--experiment", str(point["experiment"]), "--max-requests-per-point", "3", "-q", "--no-plots"]
    for mode, formula in (("study", "weighted-average"), ("guidellm", "smooth-wa")):
        out = tmp_path / mode
        r = CliRunner().invoke(main, [*args, "--mode", mode, "--executor", "serial", "-o", str(out)])
        assert r.exit_code == 0, r.output
        # without --formula: the seed's weighted average for the study, the calibration's primary otherwise
        assert set(pd.read_csv(out / "mape.csv")["formula"]) == {formula}


# Mistral-7B-v0.1's architecture (its model card's config.json: 32 layers, hidden 4096, 32 heads,
# 8 KV heads, intermediate 14336, vocabulary 32000, 32768 positions), written here for the test.
_MISTRAL_7B = {
    "architectures": ["MistralForCausalLM"],
    "model_type": "mistral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
    "max_position_embeddings": 32768,
    "torch_dtype": "bfloat16",
}


def test_model_by_hf_id_from_the_local_cache(tmp_path, monkeypatch):
    import json

    from sim.catalogue.models import resolve_model

    hub = tmp_path / "hf" / "hub"
    snap = hub / "models--mistralai--Mistral-7B-v0.1" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps(_MISTRAL_7B))
    (hub / "models--mistralai--Mistral-7B-v0.1" / "refs").mkdir()
    (hub / "models--mistralai--Mistral-7B-v0.1" / "refs" / "main").write_text("abc123\n")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    spec = resolve_model("mistralai/Mistral-7B-v0.1")
    assert (spec.num_layers, spec.hidden_size, spec.num_kv_heads, spec.max_position_embeddings) == (32, 4096, 8, 32768)
    # HF_HUB_CACHE wins over HF_HOME, as in huggingface_hub
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    with pytest.raises(ConfigError, match="not in servesim's catalogue.*elsewhere.*huggingface-cli download mistralai/Mistral-7B-v0.1"):
        resolve_model("mistralai/Mistral-7B-v0.1")
    # a catalogue model's HF id still resolves to the catalogue entry without any cache
    assert resolve_model("meta-llama/Llama-2-7b-hf").name == "llama-2-7b"
