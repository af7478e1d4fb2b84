"""The optimised pricing path equals the straightforward model on random batches."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.config import parse_run_config
from sim.cost import build_cost_model
from sim.cost.base import decode_step_fn
from sim.cost.roofline_build import price_reference
from sim.entities import Batch, BatchItem

MODELS = {
    (formula, gemm_m, model, tp): build_cost_model(
        parse_run_config({"model": model, "tensor_parallel_size": tp, "cost": {"formula": formula, "gemm_m": gemm_m}})
    )
    for formula in ("weighted-average", "smooth-wa", "additive", "max")
    for gemm_m in ("tokens", "requests")
    for model, tp in (("llama-2-7b", 1), ("llama-2-70b", 4))
} | {
    # the tensor-parallel all-reduce term (a calibration knob) on both paths
    ("weighted-average", "tokens", "llama-2-70b+allreduce", 4): build_cost_model(
        parse_run_config({"model": "llama-2-70b", "tensor_parallel_size": 4, "cost": {"allreduce_bw_gbps": 120.0, "allreduce_latency_us": 8.0}})
    ),
    # decode attention priced at the mean context
    ("weighted-average", "tokens", "llama-2-7b+mean-attention", 1): build_cost_model(
        parse_run_config({"model": "llama-2-7b", "cost": {"decode_attention_context": "mean", "decode_kv_read_fraction": 1.0}})
    ),
    ("smooth-wa", "tokens", "qwen2.5-7b+lm-head", 1): build_cost_model(
        parse_run_config({"model": "qwen2.5-7b", "cost": {"formula": "smooth-wa", "decode_attention_context": "mean", "lm_head_reads": True}})
    ),
    ("smooth-wa", "tokens", "llama-2-70b+mean-attention", 4): build_cost_model(
        parse_run_config({"model": "llama-2-70b", "tensor_parallel_size": 4, "cost": {"formula": "smooth-wa", "decode_attention_context": "mean"}})
    ),
}

items = st.lists(
    st.one_of(
        st.tuples(st.just(True), st.just(1), st.integers(0, 8000)),  # decode: 1 token at context p
        st.tuples(st.just(False), st.integers(1, 4096), st.integers(0, 8000)),  # prefill chunk
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(items=items, key=st.sampled_from(sorted(MODELS)))
def test_fast_price_equals_reference(items, key):
    model = MODELS[key]
    batch = Batch.of([BatchItem(i, n, ctx, dec) for i, (dec, n, ctx) in enumerate(items)])
    fast, ref = model.price(batch), price_reference(model, batch)
    for field in ("total_s", "compute_s", "memory_s", "overhead_s", "prefill_s", "decode_s"):
        assert getattr(fast, field) == pytest.approx(getattr(ref, field), rel=1e-12, abs=1e-15), field


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 300),
    contexts=st.lists(st.integers(0, 8000), min_size=1, max_size=4),
    key=st.sampled_from(sorted(MODELS)),
)
def test_decode_step_fn_is_price_decode(n, contexts, key):
    """The fast-forward's per-window step pricer gives exactly price_decode's float (the
    engine's windows must reproduce the step loop byte for byte)."""
    model = MODELS[key]
    step_s = decode_step_fn(model, n)
    for cmax in contexts:
        csum = n * cmax - (n - 1) * (cmax // 3)  # any sum consistent with the maximum
        assert step_s(csum, cmax) == model.price_decode(n, csum, cmax).total_s


def test_decode_step_fn_falls_back_to_price_decode():
    """Cost models without their own decode_step_fn are priced through price_decode."""
    model = build_cost_model(parse_run_config({"cost": {"model": "linear"}}))
    assert decode_step_fn(model, 7)(700, 120) == model.price_decode(7, 700, 120).total_s
