"""Roofline step cost: each term pinned by hand on a tiny model, formulas at their thresholds,
and laws (positivity, monotonicity, TP scaling) checked with hypothesis."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.catalogue.hardware import GpuSpec
from sim.catalogue.models import ModelSpec
from sim.config import parse_run_config
from sim.cost import build_cost_model
from sim.cost.combine import FORMULAS, PhaseTerms, combine
from sim.cost.mfu import BuiltinMfu, TableMfu
from sim.cost.roofline import RooflineCostModel, prefill_bucket
from sim.cost.roofline_build import build_roofline
from sim.entities import Batch, BatchItem
from sim.errors import ConfigError

GROUND_TRUTH = Path(os.environ.get("SERVESIM_GROUND_TRUTH", Path(__file__).resolve().parents[1].parent / "shared" / "ground_truth"))

# Tiny model: L=2, d=64, H=4, Hk=2, dh=16, dff=128, 2 bytes/param
TINY = ModelSpec("tiny", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=128, vocab_size=0, bytes_per_param=2.0)
# Toy GPU: P = 1e12 FLOP/s, BW = 0.5e12 B/s · η 0.5 = 2.5e11 B/s, 10 µs per layer
TOY = GpuSpec("toy", peak_bf16_tflops=1.0, hbm_bw_tbs=0.5, memory_gib=1.0, bw_efficiency=0.5, per_layer_overhead_us=10.0)
P, BW, OVERHEAD_S = 1e12, 0.5e12 * 0.5, 10e-6 * 2


def _seed_config(data: dict):
    """A RunConfig of the seed roofline (no calibration fills unset settings): these tests
    check the seed's terms one by one."""
    data = dict(data)
    data["cost"] = {"calibration": "none", **data.get("cost", {})}
    return parse_run_config(data)


class StubMfu:
    """Constant GEMM (0.5) and decode (0.1) MFU; prefill MFU depends on the bucket it is asked for."""

    PREFILL = {512: 0.1, 1024: 0.2}

    def __init__(self):
        self.prefill_calls: list[int] = []
        self.decode_calls: list[tuple[int, int]] = []

    def gemm(self, m, k, n):
        return 0.5

    def attn_decode(self, batch_size, kv_len):
        self.decode_calls.append((batch_size, kv_len))
        return 0.1

    def attn_prefill(self, seq_len):
        self.prefill_calls.append(seq_len)
        return self.PREFILL.get(seq_len, 0.4)


def tiny(formula="weighted-average", gemm_m="tokens", tp=1, mfu=None):
    return RooflineCostModel(TINY, TOY, tp, formula, gemm_m, mfu or StubMfu())


# --- hand-computed building blocks (tp = 1) ---------------------------------------------------
def G(m):  # all-layer GEMM seconds: per layer Q, K, V, O, gate, up, down FLOPs / (P·0.5)
    per_layer = 2 * m * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 2 * 64 * 128 + 128 * 64)
    return 2 * per_layer / (P * 0.5)


W = 2 * 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128)  # L·b·(2d·q + 2d·kv + 3d·dff) = 147456 B
KVB = 2 * 2 * 2 * 16 * 2  # 2·L·Hk·dh·b = 256 B per token
ACT = 2 * 64 * 2  # L·d·b = 256 B per token
ATTN_PAIR = 4 * 4 * 16 * 2  # 4·H·dh·L FLOPs per (query, key) pair


def D(s, t):
    kappa, a = (0.80, 0.75) if t == 1 else (0.92, 0.85)
    return KVB * (t + kappa * s) + ACT * t * a


def dec(i, ctx):
    return BatchItem(i, 1, ctx, True)


def pre(i, new, ctx=0):
    return BatchItem(i, new, ctx, False)


def test_model_sizes_match_hand_arithmetic():
    assert TINY.weights_bytes == W == 147456
    assert TINY.kv_bytes_per_token == KVB


def test_gemm_term():
    m = tiny()
    for rows in (1, 7, 150):
        assert m.gemm_s(rows) == pytest.approx(G(rows), rel=1e-12)
    assert m.gemm_s(0) == 0.0


def test_decode_terms_and_price():
    """Cd = G(N) + L·A(N, max p)/(P·mfu); Md = (W + ΣD(p, 1))/BW; total = max + overhead."""
    stub = StubMfu()
    m = tiny(mfu=stub)
    cd = G(2) + ATTN_PAIR * 2 * 30 / (P * 0.1)
    md = (W + D(10, 1) + D(30, 1)) / BW
    got = m.decode_terms([10, 30])
    assert got[0] == pytest.approx(cd, rel=1e-12)
    assert got[1] == pytest.approx(md, rel=1e-12)
    assert stub.decode_calls[-1] == (2, 30)  # one MFU lookup at (N, max p)
    c = m.price(Batch.of([dec(0, 10), dec(1, 30)]))
    assert c.total_s == pytest.approx(max(cd, md) + OVERHEAD_S, rel=1e-12)
    assert c.overhead_s == pytest.approx(OVERHEAD_S) and c.decode_s == pytest.approx(max(cd, md))
    assert c.prefill_s == 0.0


def test_prefill_terms_tokens():
    """tokens: one GEMM over all prefill tokens; per-bucket attention ΣA(c, seq)/1.8 at bucket MFU."""
    stub = StubMfu()
    m = tiny(mfu=stub)
    cp, mp, gp = m.prefill_terms([(0, 100), (600, 50)])  # seq 100 → bucket 512, seq 650 → 1024
    attn = ATTN_PAIR * 100 * 100 / 1.8 / (P * 0.1) + ATTN_PAIR * 50 * 650 / 1.8 / (P * 0.2)
    assert gp == pytest.approx(G(150), rel=1e-12)
    assert cp == pytest.approx(G(150) + attn, rel=1e-12)
    assert mp == pytest.approx((W + D(0, 100) + D(600, 50)) / BW, rel=1e-12)
    assert sorted(set(stub.prefill_calls)) == [512, 1024]


def test_prefill_terms_requests():
    """requests (v2-pre): per bucket G(#reqs) and A(#reqs, bucket)/1.8."""
    m = tiny(gemm_m="requests")
    cp, mp, gp = m.prefill_terms([(0, 100), (0, 300), (600, 50)])
    attn = ATTN_PAIR * 2 * 512 / 1.8 / (P * 0.1) + ATTN_PAIR * 1 * 1024 / 1.8 / (P * 0.2)
    assert gp == pytest.approx(G(2) + G(1), rel=1e-12)
    assert cp == pytest.approx(G(2) + G(1) + attn, rel=1e-12)
    assert mp == pytest.approx((W + D(0, 100) + D(0, 300) + D(600, 50)) / BW, rel=1e-12)


def test_prefill_bucket_edges():
    assert [prefill_bucket(s) for s in (1, 512, 513, 1024, 1025, 65536, 10**6)] == [512, 512, 1024, 1024, 2048, 65536, 65536]


def test_single_token_prefill_uses_decode_discounts():
    """A 1-token prefill chunk has t = 1, so κ = 0.80 and a = 0.75 (the reference's D)."""
    _, mp, _ = tiny().prefill_terms([(40, 1)])
    assert mp == pytest.approx((W + D(40, 1)) / BW, rel=1e-12)


def _mixed_batch():
    return Batch.of([pre(0, 100), pre(1, 50, 600)] + [dec(10 + i, 20 * (i + 1)) for i in range(3)])


def test_additive_tokens_by_hand():
    """max(G(Np+Nd) + attention_p + attention_d, (W + all D)/BW) + overhead."""
    m = tiny("additive")
    attn_p = ATTN_PAIR * 100 * 100 / 1.8 / (P * 0.1) + ATTN_PAIR * 50 * 650 / 1.8 / (P * 0.2)
    attn_d = ATTN_PAIR * 3 * 60 / (P * 0.1)
    cmix = G(150 + 3) + attn_p + attn_d
    mmix = (W + D(0, 100) + D(600, 50) + D(20, 1) + D(40, 1) + D(60, 1)) / BW
    c = m.price(_mixed_batch())
    assert c.total_s == pytest.approx(max(cmix, mmix) + OVERHEAD_S, rel=1e-12)
    assert c.compute_s == pytest.approx(cmix, rel=1e-12) and c.memory_s == pytest.approx(mmix, rel=1e-12)


def test_additive_requests_by_hand():
    """requests: fused G(#prefill reqs + Nd), minus G(#prefill reqs) from Cp (v2-pre)."""
    m = tiny("additive", "requests")
    cp = G(1) + G(1) + ATTN_PAIR * 512 / 1.8 / (P * 0.1) + ATTN_PAIR * 1024 / 1.8 / (P * 0.2)
    cd = G(3) + ATTN_PAIR * 3 * 60 / (P * 0.1)
    cmix = G(2 + 3) + max(0.0, cp - G(2)) + max(0.0, cd - G(3))
    mmix = (W + D(0, 100) + D(600, 50) + D(20, 1) + D(40, 1) + D(60, 1)) / BW
    assert m.price(_mixed_batch()).total_s == pytest.approx(max(cmix, mmix) + OVERHEAD_S, rel=1e-12)


def test_overhead_divided_by_tp():
    assert tiny(tp=2).price(Batch.of([dec(0, 5)])).overhead_s == pytest.approx(10e-6 * 2 / 2)


def test_tp_splits_gemm_shapes():
    """With constant MFU, TP2 halves every GEMM; at TP4 the 2 KV heads are replicated (1 per GPU)."""
    assert tiny(tp=2).gemm_s(10) == pytest.approx(G(10) / 2, rel=1e-12)
    kv_replicated = 2 * 10 * (64 * 16 + 2 * 64 * 16 + 16 * 64 + 2 * 64 * 32 + 32 * 64) * 2 / (P * 0.5)
    assert tiny(tp=4).gemm_s(10) == pytest.approx(kv_replicated, rel=1e-12)


def test_tp_must_divide_heads():
    with pytest.raises(ConfigError, match="num_heads"):
        tiny(tp=3)
    with pytest.raises(ConfigError, match="tensor_parallel_size 3"):
        build_roofline("llama-2-7b", tp=3)


def test_unknown_formula_rejected_at_build():
    with pytest.raises(ConfigError, match="weighted-average"):
        tiny("no-such-formula")


# --- formulas at their branch thresholds ------------------------------------------------------
TP_S, TD_S = 1.0, 3.0


def terms(np_, nd):
    return PhaseTerms(TP_S, 0.0, TD_S, 0.0, np_, nd)


def token_weighted(np_, nd):
    return (np_ * TP_S + nd * TD_S) / (np_ + nd)


PREFILL_BRANCH = 0.75 * TP_S + 0.25 * TD_S
DECODE_BRANCH = 0.35 * TP_S + 0.65 * TD_S


@pytest.mark.parametrize(
    "np_,nd,expected",
    [
        (101, 25, PREFILL_BRANCH),  # Np > 4Nd (100) and Np > 100
        (100, 24, None),  # Np > 4Nd but Np = 100 is not > 100 → token-weighted
        (101, 26, None),  # Np > 100 but Np < 4Nd = 104
        (120, 30, None),  # Np = 4Nd exactly → not prefill-dominated
        (121, 30, PREFILL_BRANCH),  # Np = 4Nd + 1
        (25, 51, DECODE_BRANCH),  # Nd > 2Np (50) and Nd > 50
        (20, 50, None),  # Nd = 50 is not > 50
        (30, 60, None),  # Nd = 2Np exactly
        (30, 61, DECODE_BRANCH),  # Nd = 2Np + 1, > 50
        (1, 1, None),
    ],
)
def test_weighted_average_branches(np_, nd, expected):
    want = token_weighted(np_, nd) if expected is None else expected
    assert combine("weighted-average", terms(np_, nd)) == pytest.approx(want)
    assert combine("smooth-wa", terms(np_, nd)) == pytest.approx(token_weighted(np_, nd))
    assert combine("max", terms(np_, nd)) == TD_S


def test_token_weighted_branch_differs_from_fixed_weights():
    """The thresholds matter: at (101, 25) and (100, 25) the two results differ."""
    assert combine("weighted-average", terms(101, 25)) != combine("weighted-average", terms(100, 25))


def test_phase_max_uses_compute_or_memory():
    t = PhaseTerms(1.0, 2.0, 0.5, 4.0, 10, 10)
    assert (t.prefill_s, t.decode_s) == (2.0, 4.0)
    assert combine("max", t) == 4.0


def test_formula_registry_is_extensible():
    assert set(FORMULAS.names()) >= {"weighted-average", "smooth-wa", "additive", "max"}
    with pytest.raises(ValueError):
        FORMULAS.add("max", lambda t: 0.0)


@pytest.mark.parametrize("gemm_m", ["tokens", "requests"])
def test_single_phase_identical_under_every_formula(gemm_m):
    for batch in (Batch.of([pre(0, 700, 30), pre(1, 5)]), Batch.of([dec(0, 100), dec(1, 7)])):
        totals = {f: tiny(f, gemm_m).price(batch).total_s for f in FORMULAS.names()}
        assert len(set(totals.values())) == 1, totals
        c = tiny("max", gemm_m)
        t = c.phase_terms(batch)
        phase = t.prefill_s if t.has_prefill else t.decode_s
        assert totals["max"] == pytest.approx(phase + OVERHEAD_S)


def test_pure_and_deterministic():
    m = build_roofline("llama-2-7b")
    b = _mixed_batch()
    assert m.price(b) == m.price(b) == build_roofline("llama-2-7b").price(b)


# --- laws on a real model with the built-in MFU ------------------------------------------------
L7 = {f: {g: build_roofline("llama-2-7b", "H100", 1, f, g) for g in ("tokens", "requests")} for f in FORMULAS.names()}

decode_items = st.lists(st.integers(0, 20_000), min_size=0, max_size=40)
prefill_items = st.lists(st.tuples(st.integers(1, 4096), st.integers(0, 8192)), min_size=0, max_size=6)


def make_batch(prefills, decodes):
    items = [pre(i, new, ctx) for i, (new, ctx) in enumerate(prefills)]
    items += [dec(1000 + i, ctx) for i, ctx in enumerate(decodes)]
    return Batch.of(items)


@settings(max_examples=150, deadline=None)
@given(prefill_items, decode_items, st.sampled_from(sorted(FORMULAS.names())), st.sampled_from(["tokens", "requests"]), st.sampled_from([1, 2, 4]))
def test_total_positive_for_any_nonempty_batch(prefills, decodes, formula, gemm_m, tp):
    if not prefills and not decodes:
        decodes = [0]
    c = build_roofline("llama-2-7b", "H100", tp, formula, gemm_m).price(make_batch(prefills, decodes))
    assert c.total_s > 0 and c.total_s >= c.overhead_s > 0


@settings(max_examples=150, deadline=None)
@given(prefill_items, decode_items, st.integers(0, 20_000), st.sampled_from(["max", "additive"]))
def test_adding_a_decode_never_costs_less(prefills, decodes, ctx, formula):
    m = L7[formula]["tokens"]
    if not prefills and not decodes:
        return
    before = m.price(make_batch(prefills, decodes)).total_s
    after = m.price(make_batch(prefills, decodes + [ctx])).total_s
    assert after >= before * (1 - 1e-12)


@settings(max_examples=150, deadline=None)
@given(prefill_items, decode_items, st.integers(1, 4096), st.integers(0, 8192), st.sampled_from(["max", "additive"]))
def test_adding_a_prefill_never_costs_less(prefills, decodes, new, ctx, formula):
    m = L7[formula]["tokens"]
    if not prefills and not decodes:
        return
    before = m.price(make_batch(prefills, decodes)).total_s
    after = m.price(make_batch(prefills + [(new, ctx)], decodes)).total_s
    assert after >= before * (1 - 1e-12)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 20_000), min_size=1, max_size=40), st.integers(0, 39), st.integers(1, 5000))
def test_longer_decode_context_never_costs_less(decodes, idx, extra):
    m = L7["max"]["tokens"]
    longer = list(decodes)
    longer[idx % len(longer)] += extra
    assert m.price(make_batch([], longer)).total_s >= m.price(make_batch([], decodes)).total_s * (1 - 1e-12)


@settings(max_examples=100, deadline=None)
@given(prefill_items, decode_items, st.sampled_from(sorted(FORMULAS.names())))
def test_higher_tp_never_more_compute_per_gpu(prefills, decodes, formula):
    if not prefills and not decodes:
        return
    b = make_batch(prefills, decodes)
    comp = [build_roofline("llama-2-7b", "H100", tp, formula).price(b).compute_s for tp in (1, 2, 4, 8)]
    assert all(a >= b_ * (1 - 1e-12) for a, b_ in zip(comp, comp[1:])), comp


# --- factory ---------------------------------------------------------------------------------
def test_factory_builds_from_run_config():
    cfg = _seed_config(
        {"model": "llama-2-7b", "gpu": "H100", "tensor_parallel_size": 2, "cost": {"model": "roofline", "formula": "additive", "gemm_m": "requests"}}
    )
    m = build_cost_model(cfg)
    assert isinstance(m, RooflineCostModel) and isinstance(m.mfu, BuiltinMfu)
    assert (m.tp, m.formula, m.gemm_m, m.bw_efficiency, m.per_layer_overhead_us) == (2, "additive", "requests", 0.82, 100.0)
    cfg2 = _seed_config({"cost": {"bw_efficiency": 0.5, "per_layer_overhead_us": 0}})
    m2 = build_cost_model(cfg2)
    assert (m2.bw_efficiency, m2.per_layer_overhead_us) == (0.5, 0)
    assert m2.price(Batch.of([dec(0, 1)])).total_s > 0  # weights keep it positive without overhead


def test_factory_with_real_tables():
    bench = GROUND_TRUTH / "bench_data"
    if not bench.is_dir():
        pytest.skip(f"ground truth bench_data not found at {bench} (set SERVESIM_GROUND_TRUTH)")
    cfg = _seed_config({"model": "qwen2.5-7b", "cost": {"bench_data_dir": str(bench), "mfu_lookup": "interpolate"}})
    m = build_cost_model(cfg)
    assert isinstance(m.mfu, TableMfu) and m.mfu.config == (28, 4, 128)
    assert m.price(_mixed_batch()).total_s > 0


# ------------------------------------------------------------------ tensor-parallel all-reduce


def test_allreduce_term_is_closed_form_and_absent_without_tp():
    """Cc = 2·L·T·d·b·2(tp−1)/tp / BW per step; tp = 1 or no knob: no term at all."""
    from sim.entities import Batch, BatchItem

    batch = Batch.of([BatchItem(0, 1, 700, True), BatchItem(1, 300, 0, False), BatchItem(2, 1, 90, True)])
    tokens = 302
    for model_name, tp in (("llama-2-70b", 4), ("llama-2-7b", 2)):
        off = build_cost_model(_seed_config({"model": model_name, "tensor_parallel_size": tp}))
        on = build_cost_model(_seed_config({"model": model_name, "tensor_parallel_size": tp, "cost": {"allreduce_bw_gbps": 100.0}}))
        spec = on.model
        expect_s = 2 * spec.num_layers * tokens * spec.hidden_size * spec.bytes_per_param * 2 * (tp - 1) / tp / 100e9
        assert on.price(batch).total_s - off.price(batch).total_s == pytest.approx(expect_s, rel=1e-9)
        assert on.price_decode(8, 4000, 900).total_s - off.price_decode(8, 4000, 900).total_s == pytest.approx(expect_s * 8 / tokens, rel=1e-9)
    one = build_cost_model(_seed_config({"cost": {"allreduce_bw_gbps": 100.0}}))
    base = build_cost_model(_seed_config({}))
    assert one.price(batch).total_s == base.price(batch).total_s


def test_allreduce_latency_is_two_per_layer_and_step_only_with_tp():
    """Each step pays 2·L·α with tp > 1 (two all-reduces per layer), whatever its size; tp = 1
    pays nothing; α = 0 is the model without the knob, bit for bit."""
    from sim.entities import Batch, BatchItem

    mixed = Batch.of([BatchItem(0, 1, 700, True), BatchItem(1, 300, 0, False)])
    for model_name, tp in (("llama-2-70b", 4), ("llama-2-7b", 2), ("llama-2-7b", 1)):
        base = {"model": model_name, "tensor_parallel_size": tp}
        off = build_cost_model(_seed_config(base))
        zero = build_cost_model(_seed_config({**base, "cost": {"allreduce_latency_us": 0.0}}))
        on = build_cost_model(_seed_config({**base, "cost": {"allreduce_latency_us": 7.5}}))
        expect_s = 2 * on.model.num_layers * 7.5e-6 if tp > 1 else 0.0
        for price in (lambda m: m.price(mixed).total_s, lambda m: m.price_decode(16, 9000, 800).total_s, lambda m: m.decode_step_fn(16)(9000, 800)):
            assert price(on) - price(off) == pytest.approx(expect_s, rel=1e-9, abs=1e-15)
            assert price(zero) == price(off)


def test_allreduce_latency_rejects_negative():
    from sim.errors import ConfigError

    with pytest.raises(ConfigError, match="allreduce_latency_us"):
        _seed_config({"cost": {"allreduce_latency_us": -1}})


def test_allreduce_rejects_non_positive_bandwidth():
    from sim.errors import ConfigError

    with pytest.raises(ConfigError, match="allreduce_bw_gbps"):
        _seed_config({"cost": {"allreduce_bw_gbps": 0}})


def test_decode_attention_at_mean_context():
    """'mean' prices a decode step's attention as the FLOPs of Σp at the table's MFU for the
    mean context; with equal contexts it is the seed's 'max'; with unequal ones it is cheaper
    than pricing every request at the longest context; the memory term is unchanged."""
    base = {"model": "llama-2-7b"}
    mx = build_cost_model(_seed_config(base))
    mean = build_cost_model(_seed_config({**base, "cost": {"decode_attention_context": "mean"}}))
    assert mx.decode_attention_context == "max" and mean.decode_attention_context == "mean"
    # equal contexts: the same step either way
    for n, p in ((1, 500), (32, 1000), (64, 3000)):
        assert mean.decode_terms([p] * n)[0] == pytest.approx(mx.decode_terms([p] * n)[0], rel=1e-12)
    # unequal contexts: attention at the mean, analytically
    contexts = [100] * 63 + [8000]
    n, total = len(contexts), sum(contexts)
    cd_mean, md_mean, g_mean = mean.decode_terms(contexts)
    cd_max, md_max, g_max = mx.decode_terms(contexts)
    expect_attn = mean._tau * mean._attn_flops_per_pair * total / (mean._peak_flops * mean.mfu.attn_decode(n, round(total / n)))
    assert cd_mean - g_mean == pytest.approx(expect_attn, rel=1e-12)
    assert cd_mean < cd_max and g_mean == g_max and md_mean == md_max
    assert mean.decode_terms_aggregate(n, total, max(contexts)) == pytest.approx(mean.decode_terms(contexts), rel=1e-12)


def test_decode_attention_context_rejects_unknown():
    from sim.cost.roofline_build import build_roofline
    from sim.errors import ConfigError

    with pytest.raises(ConfigError, match="decode_attention_context"):
        _seed_config({"cost": {"decode_attention_context": "median"}})
    with pytest.raises(ConfigError, match="decode_attention_context"):
        build_roofline("llama-2-7b", decode_attention_context="median")  # type: ignore[arg-type]


def test_decode_kv_read_fraction_prices_the_kv_a_decode_step_streams():
    """κ scales only the KV re-read of decode steps: the memory term grows by
    τ·kv_bytes_per_token·(κ₁ − κ₀)·Σp/BW; unset is the seed's 0.8, bit for bit."""
    base = {"model": "llama-2-7b"}
    seed = build_cost_model(_seed_config(base))
    k08 = build_cost_model(_seed_config({**base, "cost": {"decode_kv_read_fraction": 0.8}}))
    k1 = build_cost_model(_seed_config({**base, "cost": {"decode_kv_read_fraction": 1.0}}))
    assert seed.decode_kv_read_fraction == 0.8 and k1.decode_kv_read_fraction == 1.0
    n, csum, cmax = 64, 64 * 1500, 2500
    assert k08.price_decode(n, csum, cmax) == seed.price_decode(n, csum, cmax)
    extra_s = k1._tau * k1._kv_bytes_per_token * 0.2 * csum / k1._bw_bytes_s
    _, md1, _ = k1.decode_terms_aggregate(n, csum, cmax)
    _, md0, _ = seed.decode_terms_aggregate(n, csum, cmax)
    assert md1 - md0 == pytest.approx(extra_s, rel=1e-9)
    assert k1.decode_step_fn(n)(csum, cmax) == k1.price_decode(n, csum, cmax).total_s
    # prefill bytes keep their own κ
    assert k1.dynamic_bytes(1000, 500) == seed.dynamic_bytes(1000, 500)


def test_lm_head_reads_add_the_vocab_projection_to_every_steps_weight_bytes():
    """With ``lm_head_reads`` each step's memory term grows by τ·V·d·b/BW (the LM head, split by
    TP, streamed once per step), decode, prefill and mixed alike; compute is unchanged; unset is
    the seed's layers-only W, bit for bit. Qwen2.5-7B's 152k vocabulary makes it 8 % of W."""
    from sim.entities import Batch, BatchItem

    for model, tp in (("qwen2.5-7b", 1), ("llama-2-70b", 4)):
        base = {"model": model, "tensor_parallel_size": tp}
        seed = build_cost_model(_seed_config(base))
        off = build_cost_model(_seed_config({**base, "cost": {"lm_head_reads": False}}))
        on = build_cost_model(_seed_config({**base, "cost": {"lm_head_reads": True}}))
        spec = on.model
        assert spec.lm_head_bytes == spec.vocab_size * spec.hidden_size * spec.bytes_per_param
        extra_s = spec.lm_head_bytes / tp / on._bw_bytes_s
        n, csum, cmax = 32, 32 * 900, 1500
        assert off.price_decode(n, csum, cmax) == seed.price_decode(n, csum, cmax)
        cd1, md1, _ = on.decode_terms_aggregate(n, csum, cmax)
        cd0, md0, _ = seed.decode_terms_aggregate(n, csum, cmax)
        assert cd1 == cd0 and md1 - md0 == pytest.approx(extra_s, rel=1e-9)
        assert on.decode_step_fn(n)(csum, cmax) == on.price_decode(n, csum, cmax).total_s
        cp1, mp1, _ = on.prefill_terms([(0, 700)])
        cp0, mp0, _ = seed.prefill_terms([(0, 700)])
        assert cp1 == cp0 and mp1 - mp0 == pytest.approx(extra_s, rel=1e-9)
        mixed = Batch.of([BatchItem(0, 700, 0, False), BatchItem(1, 1, 900, True)])
        assert on.price(mixed).total_s > seed.price(mixed).total_s
    qwen = build_roofline("qwen2.5-7b")
    assert qwen.model.lm_head_bytes / qwen.model.weights_bytes > 0.08


@pytest.mark.parametrize("bad", [0, -0.5, 1.5])
def test_decode_kv_read_fraction_rejects_out_of_range(bad):
    from sim.errors import ConfigError

    with pytest.raises(ConfigError, match="decode_kv_read_fraction"):
        _seed_config({"cost": {"decode_kv_read_fraction": bad}})
