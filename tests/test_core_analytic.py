"""Closed-form cases: with a fixed step cost the simulated latencies are exact."""

from __future__ import annotations

import math

import pytest
from conftest import make_config, run_checked

from sim.core.simulation import simulate

STEP_S = 0.025


def _fixed(prompt: int, output: int, n: int = 1, **over):
    base = dict(
        cost={"model": "fixed", "fixed_step_s": STEP_S},
        workload={"num_requests": n, "prompt_tokens": {"dist": "fixed", "value": prompt}, "output_tokens": {"dist": "fixed", "value": output}},
    )
    for k, v in over.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return make_config(**base)


@pytest.mark.parametrize("prompt,output,budget", [(100, 1, 2048), (100, 10, 2048), (3000, 5, 64), (513, 7, 512), (64, 3, 64)])
def test_single_request_ttft_and_e2e_are_closed_form(prompt, output, budget):
    """GIVEN one request, a fixed step cost Δ and budget B THEN TTFT = ⌈P/B⌉·Δ and
    E2E = (⌈P/B⌉ + O − 1)·Δ, TPOT = Δ, queue delay 0."""
    cfg = _fixed(prompt, output, arrival={"strategy": "synchronous"}, server={"max_num_batched_tokens": budget})
    res = simulate(cfg)
    r = res.requests.iloc[0]
    chunks = math.ceil(prompt / budget)
    assert r["ttft_s"] == pytest.approx(chunks * STEP_S, rel=1e-12)
    assert r["e2e_s"] == pytest.approx((chunks + output - 1) * STEP_S, rel=1e-12)
    assert r["queue_delay_s"] == 0.0
    if output > 1:
        assert r["tpot_s"] == pytest.approx(STEP_S, rel=1e-9)
    assert res.summary["num_steps"] == chunks + output - 1


def test_3000_token_prompt_with_budget_64_takes_47_prefill_steps():
    """Chunked prefill: with budget 64 a 3000-token prompt is prefilled over ⌈3000/64⌉ = 47 steps."""
    cfg = _fixed(3000, 2, arrival={"strategy": "synchronous"}, server={"max_num_batched_tokens": 64})
    res, _, chk = run_checked(cfg)
    prefill_steps = [b for b in chk.batches if b.num_prefill_tokens > 0]
    assert len(prefill_steps) == 47
    assert [b.num_prefill_tokens for b in prefill_steps] == [64] * 46 + [3000 - 46 * 64]
    assert res.requests.iloc[0]["ttft_s"] == pytest.approx(47 * STEP_S, rel=1e-12)


def test_long_prefill_token_threshold_caps_chunks():
    cfg = _fixed(1000, 2, arrival={"strategy": "synchronous"}, server={"max_num_batched_tokens": 2048, "long_prefill_token_threshold": 300})
    _, _, chk = run_checked(cfg)
    assert [b.num_prefill_tokens for b in chk.batches if b.num_prefill_tokens] == [300, 300, 300, 100]


def test_constant_rate_below_capacity_has_no_queueing():
    """GIVEN constant arrivals spaced wider than a request's whole service time THEN every
    request sees the single-request closed form (no interference)."""
    prompt, output = 200, 4  # service = (1 + 3)·Δ = 0.1 s
    cfg = _fixed(prompt, output, n=10, arrival={"strategy": "constant", "rate_rps": 5.0})
    res = simulate(cfg)
    df = res.requests
    assert df["arrival_s"].tolist() == pytest.approx([i / 5.0 for i in range(10)])
    assert df["ttft_s"].tolist() == pytest.approx([STEP_S] * 10, rel=1e-9)
    assert df["e2e_s"].tolist() == pytest.approx([4 * STEP_S] * 10, rel=1e-9)
    assert res.summary["num_mixed_steps"] == 0


def test_two_simultaneous_requests_share_steps():
    """GIVEN two requests at t=0 that fit one step THEN both prefill in step 1 and decode
    together: TTFT = Δ, E2E = O·Δ for both."""
    cfg = _fixed(100, 5, n=2, arrival={"strategy": "throughput"})
    res, _, chk = run_checked(cfg)
    assert len(chk.batches) == 5
    assert chk.batches[0].num_prefill_reqs == 2
    assert res.requests["ttft_s"].tolist() == pytest.approx([STEP_S] * 2)
    assert res.requests["e2e_s"].tolist() == pytest.approx([5 * STEP_S] * 2)


def test_budget_limits_second_prefill_to_leftover_then_mixes():
    """vLLM V1: running requests first; a new prompt gets the leftover budget (mixed batch)."""
    cfg = _fixed(100, 10, n=2, arrival={"strategy": "constant", "rate_rps": 1 / (2.5 * STEP_S)}, server={"max_num_batched_tokens": 64})
    _, _, chk = run_checked(cfg)
    mixed = [b for b in chk.batches if b.is_mixed]
    assert mixed, "the second request's prefill should share steps with the first one's decodes"
    for b in mixed:
        assert b.num_decode_reqs == 1 and b.num_prefill_tokens <= 63


def test_preemption_by_recompute_when_kv_is_scarce():
    """GIVEN KV for about two requests and eight at once THEN requests are preempted (the most
    recently admitted first), recompute, and all finish with the right token counts."""
    cfg = _fixed(120, 60, n=8, arrival={"strategy": "throughput"}, server={"num_gpu_blocks": 24, "max_num_batched_tokens": 512})
    res, sim, chk = run_checked(cfg)
    assert res.summary["num_preemptions"] > 0
    assert res.summary["num_finished"] == 8
    assert (res.requests["num_preemptions"] > 0).any()
    # recomputation shows up as prefill work after decodes began: more prefill tokens than prompts
    total_prefill = sum(b.num_prefill_tokens for b in chk.batches)
    assert total_prefill > 8 * 120
    # every produced token accounted: decodes + first tokens (one per prefill completion)
    assert sim.kv.num_used_blocks == 0


@pytest.mark.parametrize("strategy", ["synchronous", "constant"])
def test_frontend_latency_shifts_ttft_and_e2e_exactly(strategy):
    """GIVEN a frontend latency F THEN every request's TTFT, E2E and queue delay grow by
    exactly F and its TPOT is unchanged (the server sees the same requests F later)."""
    lat_ms = 7.0
    over = dict(arrival={"strategy": strategy, "rate_rps": 2.0 if strategy == "constant" else None})
    base = simulate(_fixed(200, 12, n=15, **over)).requests
    late = simulate(_fixed(200, 12, n=15, cost={"model": "fixed", "fixed_step_s": STEP_S, "frontend_latency_ms": lat_ms}, **over)).requests
    assert (late["status"] == "finished").all() and len(late) == 15
    for col in ("ttft_s", "e2e_s", "queue_delay_s"):
        assert (late[col] - base[col]).to_numpy() == pytest.approx([lat_ms * 1e-3] * 15, abs=1e-9), col
    assert late["tpot_s"].to_numpy() == pytest.approx(base["tpot_s"].to_numpy(), rel=1e-9)
    if strategy == "constant":  # open loop: the client sends at the same instants
        assert late["arrival_s"].to_numpy() == pytest.approx(base["arrival_s"].to_numpy())


@pytest.mark.parametrize("strategy", ["synchronous", "constant"])
def test_per_prompt_token_frontend_time_shifts_ttft_by_prompt_length(strategy):
    """GIVEN a frontend latency F + u per prompt token THEN a request of P prompt tokens has
    TTFT, E2E and queue delay longer by exactly F + u·P (prompts of different lengths, spaced
    so they never meet in the server), and TPOT unchanged."""
    lat_ms, per_us = 3.0, 20.0
    over = dict(
        arrival={"strategy": strategy, "rate_rps": 0.5 if strategy == "constant" else None},
        workload={"num_requests": 12, "prompt_tokens": {"dist": "uniform", "min": 50, "max": 900}, "output_tokens": {"dist": "fixed", "value": 12}},
    )
    cost = {"model": "fixed", "fixed_step_s": STEP_S}
    base = simulate(make_config(cost=cost, **over)).requests
    late = simulate(make_config(cost={**cost, "frontend_latency_ms": lat_ms, "frontend_us_per_prompt_token": per_us}, **over)).requests
    assert base["prompt_tokens"].nunique() > 5
    expect = (lat_ms * 1e-3 + per_us * 1e-6 * base["prompt_tokens"]).to_numpy()
    for col in ("ttft_s", "e2e_s", "queue_delay_s"):
        assert (late[col] - base[col]).to_numpy() == pytest.approx(expect, abs=1e-9), col
    assert late["tpot_s"].to_numpy() == pytest.approx(base["tpot_s"].to_numpy(), rel=1e-9)


def _replay(tmp_path, rows, **over):
    p = tmp_path / "trace.csv"
    p.write_text("start_offset_s,prompt_tokens,output_tokens\n" + "".join(f"{t},{pr},{o}\n" for t, pr, o in rows))
    return simulate(_fixed(1, 1, workload={"num_requests": None, "trace": {"path": str(p)}}, arrival={"strategy": "replay"}, **over))


@pytest.mark.parametrize("offset_steps,sync_steps,async_steps", [(0.2, 1.8, 2.8), (1.0, 1.0, 2.0), (2.5, 1.5, 2.5)])
def test_async_scheduling_admits_a_request_into_the_step_after_next(tmp_path, offset_steps, sync_steps, async_steps):
    """GIVEN request A at t=0 decoding for 4 steps of Δ and B arriving at offset·Δ WHEN the
    scheduler plans step k+1 at the launch of step k (async) THEN B, arriving during step k
    (or as it ends), first runs in step k+2: its TTFT grows by one step. Without async B runs
    in the next step. A's latencies do not change."""
    rows = [(0.0, 100, 5), (offset_steps * STEP_S, 50, 3)]
    plain = _replay(tmp_path, rows).requests.set_index("request_id")
    fast = _replay(tmp_path, rows, server={"async_scheduling": True}).requests.set_index("request_id")
    assert plain.loc[1, "ttft_s"] == pytest.approx(sync_steps * STEP_S, rel=1e-9)
    assert fast.loc[1, "ttft_s"] == pytest.approx(async_steps * STEP_S, rel=1e-9)
    assert fast.loc[0, "e2e_s"] == pytest.approx(plain.loc[0, "e2e_s"], rel=1e-12)


def test_async_scheduling_admits_at_once_on_an_idle_engine_or_an_empty_plan(tmp_path):
    """GIVEN an idle engine THEN a request runs at once (closed-loop runs are unchanged);
    GIVEN the only running request finishing in the step during which B arrives THEN the
    planned next step would be empty and B joins it (the real engine re-plans at once)."""
    sync = dict(arrival={"strategy": "synchronous"}, workload={"num_requests": 5})
    a = simulate(_fixed(300, 20, **sync)).requests
    b = simulate(_fixed(300, 20, server={"async_scheduling": True}, **sync)).requests
    assert a[["ttft_s", "e2e_s"]].to_numpy().tolist() == b[["ttft_s", "e2e_s"]].to_numpy().tolist()
    req = _replay(tmp_path, [(0.0, 100, 1), (0.4 * STEP_S, 50, 2)], server={"async_scheduling": True}).requests.set_index("request_id")
    assert req.loc[1, "ttft_s"] == pytest.approx(1.6 * STEP_S, rel=1e-9)


def test_async_staged_requests_count_as_in_flight_at_the_horizon(tmp_path):
    res = _replay(tmp_path, [(0.0, 100, 50), (0.5 * STEP_S, 50, 3)], server={"async_scheduling": True}, horizon_s=1.2 * STEP_S)
    st = res.requests.set_index("request_id")["status"]
    assert st.loc[0] == "in_flight" and st.loc[1] == "in_flight" and len(res.requests) == 2
