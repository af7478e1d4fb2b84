"""Laws of the simulation core: conservation, causality, clock, budgets, KV accounting,
work conservation, determinism — over strategies, seeds and limits."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from conftest import make_config, run_checked

from sim.core.simulation import simulate

STRATEGIES = [
    {"strategy": "synchronous"},
    {"strategy": "constant", "rate_rps": 8.0},
    {"strategy": "poisson", "rate_rps": 20.0},
    {"strategy": "throughput"},
    {"strategy": "throughput", "concurrency": 4},
    {"strategy": "concurrent", "concurrency": 3},
    {"strategy": "open-loop-at-measured-rate", "rate_rps": 8.0},
]


def _check_request_laws(res) -> None:
    df = res.requests
    n = res.config.workload.num_requests
    # conservation: every request appears exactly once, in exactly one terminal state
    assert df["request_id"].is_unique
    assert sorted(df["request_id"]) == list(range(n))
    s = res.summary
    assert s["num_finished"] + s["num_rejected"] + s["num_in_flight"] + s["num_not_sent"] == n
    fin = df[df["status"] == "finished"]
    # causality
    assert (fin["first_scheduled_s"] >= fin["arrival_s"]).all()
    assert (fin["first_token_s"] > fin["first_scheduled_s"]).all()
    assert (fin["finish_s"] >= fin["first_token_s"]).all()
    # TPOT definition
    multi = fin[fin["output_tokens"] > 1]
    np.testing.assert_allclose(multi["tpot_s"], (multi["e2e_s"] - multi["ttft_s"]) / (multi["output_tokens"] - 1))


def _check_step_laws(res, sim) -> None:
    st = res.steps
    # the clock never goes back and steps never overlap
    starts = st["start_s"].to_numpy()
    ends = starts + st["duration_s"].to_numpy()
    assert (np.diff(starts) > 0).all()
    assert (starts[1:] >= ends[:-1] - 1e-12).all()
    assert (st["duration_s"] > 0).all()
    # all KV freed at the end when every request left
    if res.summary["num_in_flight"] == 0:
        assert sim.kv.num_used_blocks == 0


def _check_work_conserving(res) -> None:
    """The engine idles only when no request is in the system."""
    st = res.steps
    df = res.requests
    fin = df[df["status"] == "finished"]
    ends = (st["start_s"] + st["duration_s"]).to_numpy()[:-1]
    nexts = st["start_s"].to_numpy()[1:]
    for end, nxt in zip(ends, nexts):
        if nxt - end > 1e-9:
            # during the gap no admitted request is unfinished
            present = fin[(fin["arrival_s"] <= end + 1e-12) & (fin["finish_s"] > end + 1e-12)]
            assert present.empty, f"idle from {end} to {nxt} with requests waiting"
            # the next step starts at an arrival
            assert np.isclose(df["arrival_s"], nxt).any()


@pytest.mark.parametrize("arrival", STRATEGIES, ids=lambda a: "-".join(str(v) for v in a.values()))
@pytest.mark.parametrize("seed", [1, 7])
def test_laws_hold_for_every_strategy(arrival, seed):
    """GIVEN any arrival strategy WHEN the run ends THEN conservation, causality, budgets, seats,
    KV accounting and work conservation all hold."""
    cfg = make_config(seed=seed, arrival=arrival, server={"max_num_batched_tokens": 256, "max_num_seqs": 8})
    res, sim, chk = run_checked(cfg)
    assert res.summary["num_finished"] == 20
    _check_request_laws(res)
    _check_step_laws(res, sim)
    _check_work_conserving(res)


@pytest.mark.parametrize("seed", [3, 11])
def test_laws_hold_under_kv_pressure_with_prefix_caching(seed):
    """GIVEN scarce KV blocks, prefix caching and a shared prefix WHEN loaded THEN preemptions
    happen, every request still finishes, and the KV and budget laws hold every step."""
    cfg = make_config(
        seed=seed,
        workload={"num_requests": 40, "prefix_tokens": 64, "prefix_groups": 2},
        arrival={"strategy": "throughput"},
        server={"num_gpu_blocks": 120, "max_num_batched_tokens": 512, "enable_prefix_caching": True},
    )
    res, sim, _ = run_checked(cfg)
    assert res.summary["num_finished"] == 40
    assert res.summary["num_preemptions"] > 0
    _check_request_laws(res)
    _check_step_laws(res, sim)


def test_horizon_leaves_requests_in_flight_and_counts_them():
    """GIVEN a horizon shorter than the run WHEN it stops THEN unfinished requests are counted
    as in flight or not sent, never lost."""
    cfg = make_config(horizon_s=1.0, arrival={"strategy": "constant", "rate_rps": 10.0}, workload={"num_requests": 30})
    res, _, _ = run_checked(cfg)
    s = res.summary
    assert s["num_not_sent"] > 0 and s["num_in_flight"] > 0
    _check_request_laws(res)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    "workload",
    [
        {"prompt_tokens": {"dist": "fixed", "value": 3000}, "output_tokens": {"dist": "fixed", "value": 20}},
        {"prompt_tokens": {"dist": "uniform", "min": 1, "max": 5000}, "output_tokens": {"dist": "uniform", "min": 1, "max": 100}},
        {"prefix_tokens": 300, "prefix_groups": 3},
    ],
)
def test_synchronous_never_mixes(seed, workload):
    """GIVEN synchronous load (one request in flight) WHEN simulated with chunked prefill THEN
    no step mixes prefill and decode — the property the seed study relied on."""
    cfg = make_config(
        seed=seed,
        workload=workload,
        arrival={"strategy": "synchronous"},
        server={"max_num_batched_tokens": 512, "enable_prefix_caching": True},
    )
    res, _, chk = run_checked(cfg)
    assert res.summary["num_mixed_steps"] == 0
    assert chk.max_reqs == 1


def test_loaded_constant_rate_forms_mixed_batches():
    """GIVEN a constant rate high enough that requests overlap THEN mixed steps occur."""
    cfg = make_config(arrival={"strategy": "constant", "rate_rps": 20.0}, workload={"num_requests": 50})
    res, _, chk = run_checked(cfg)
    assert res.summary["num_mixed_steps"] > 0
    assert any(b.is_mixed for b in chk.batches)


def test_same_seed_gives_byte_identical_tables_and_other_seeds_differ():
    """Determinism: same config and seed ⇒ byte-identical per-request and per-step tables."""
    cfg = make_config(workload={"num_requests": 60, "prefix_tokens": 32}, server={"enable_prefix_caching": True})
    a, b = simulate(cfg), simulate(cfg)
    assert a.requests.to_csv(index=False) == b.requests.to_csv(index=False)
    assert a.steps.to_csv(index=False) == b.steps.to_csv(index=False)
    assert np.array_equal(a.itls_s, b.itls_s)
    c = simulate(make_config(seed=2, workload={"num_requests": 60, "prefix_tokens": 32}, server={"enable_prefix_caching": True}))
    assert a.requests.to_csv(index=False) != c.requests.to_csv(index=False)


def test_rejects_request_that_can_never_fit_and_serves_the_rest():
    """GIVEN a prompt longer than the whole KV cache THEN it is rejected with a reason and
    the other requests finish."""
    cfg = make_config(
        server={"num_gpu_blocks": 40},  # 640 tokens of KV
        workload={"num_requests": 10, "prompt_tokens": {"dist": "uniform", "min": 100, "max": 1200}, "output_tokens": {"dist": "fixed", "value": 5}},
    )
    res, _, _ = run_checked(cfg)
    df = res.requests
    rej = df[df["status"] == "rejected"]
    assert len(rej) > 0
    assert (rej["prompt_tokens"] + rej["output_tokens"] > 640).all()
    assert rej["reject_reason"].str.contains("KV cache capacity").all()
    assert (df[df["status"] == "finished"]["prompt_tokens"] + 5 <= 640).all()
    assert res.summary["num_finished"] + res.summary["num_rejected"] == 10
    assert math.isnan(rej["ttft_s"].iloc[0])


def test_max_model_len_rejection():
    cfg = make_config(server={"max_model_len": 400})
    res = simulate(cfg)
    df = res.requests
    over = df["prompt_tokens"] + df["output_tokens"] > 400
    assert (df.loc[over, "status"] == "rejected").all()
    assert (df.loc[~over, "status"] == "finished").all()
    assert over.any()


def test_requests_frame_columns_have_units():
    res = simulate(make_config())
    for col in res.requests.columns:
        if col.endswith(("_s", "_tokens")) or col in ("request_id", "status", "reject_reason", "num_preemptions"):
            continue
        pytest.fail(f"column without a unit suffix: {col}")
    assert isinstance(res.requests, pd.DataFrame)


def test_horizon_bookkeeping_with_a_per_token_frontend_records_each_request_once():
    """GIVEN a per-prompt-token frontend delay (a later, shorter prompt can reach the engine
    before an earlier, longer one) and a horizon that cuts the run WHEN tabulated THEN every
    request appears exactly once: sent ones finished or in flight (in the API server too),
    the rest not sent — never a duplicate or a gap."""
    for horizon_s in (0.1, 0.2, 0.3, 0.5):
        cfg = make_config(
            cost={"model": "fixed", "fixed_step_s": 0.01, "frontend_us_per_prompt_token": 1000.0},
            workload={"num_requests": 50, "prompt_tokens": {"dist": "uniform", "min": 1, "max": 100}},
            arrival={"strategy": "poisson", "rate_rps": 100.0},
            server={"async_scheduling": horizon_s > 0.2},
            horizon_s=horizon_s,
        )
        req = simulate(cfg).requests
        assert sorted(req["request_id"]) == list(range(50))
        sent = req[req["status"] != "not_sent"]
        assert (sent["arrival_s"] <= horizon_s).all()
        assert (req[req["status"] == "not_sent"]["request_id"] > sent["request_id"].max()).all()


def test_a_trace_replayed_far_from_zero_keeps_microsecond_latencies(tmp_path):
    """GIVEN the same trace (20 requests, gaps of a few ms written to the microsecond) starting
    at offset 0, 1e6, 1e9, 1e12 or 1e15 s WHEN replayed THEN the request tables are identical
    and the arrivals are the exact gaps: offsets are taken relative to the first request in
    decimal arithmetic, so the clock runs near zero and TTFT / TPOT / E2E keep their
    microseconds (a float clock at 1e12 s resolves only 0.1 ms, at 1e15 s 0.1 s)."""
    from decimal import Decimal

    rng = np.random.default_rng(5)
    gaps_us = np.cumsum(rng.integers(1, 40_000, size=20))
    prompts, outputs = rng.integers(20, 400, 20), rng.integers(1, 60, 20)
    tables = {}
    for start_s in ("0", "1000000", "1000000000", "1000000000000", "1000000000000000"):
        offsets = [Decimal(start_s) + Decimal(int(g)) / Decimal(1_000_000) for g in gaps_us]
        rows = [f"{o:f},{int(p)},{int(q)}" for o, p, q in zip(offsets, prompts, outputs)]
        path = tmp_path / f"trace_{start_s}.csv"
        path.write_text("start_offset_s,prompt_tokens,output_tokens\n" + "\n".join(rows) + "\n")
        cfg = make_config(arrival={"strategy": "replay"}, workload={"num_requests": None, "trace": {"path": str(path)}}, cost={"model": "roofline"})
        got = simulate(cfg).requests
        np.testing.assert_array_equal(got["arrival_s"].to_numpy(), [float(o - offsets[0]) for o in offsets])
        tables[start_s] = got
    for start_s, got in tables.items():
        pd.testing.assert_frame_equal(got, tables["0"], obj=f"trace starting at {start_s} s")


@pytest.mark.parametrize(
    "over, field",
    [
        ({"arrival": {"strategy": "poisson", "rate_rps": 1e-13}}, "arrival.rate_rps"),
        ({"arrival": {"strategy": "constant", "rate_rps": 1e-9}}, "arrival.rate_rps"),
        ({"horizon_s": 1e10}, "horizon_s"),
    ],
)
def test_schedules_beyond_the_clocks_microsecond_range_are_refused(over, field):
    """A run whose sends (or horizon) lie past 2**32 s of simulated time, where float64 seconds
    no longer resolve a microsecond, is a ConfigError naming the field — never latencies
    rounded to milliseconds."""
    from sim.core.simulation import Simulation
    from sim.errors import ConfigError

    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        Simulation(make_config(**over, workload={"num_requests": 10}))


def test_a_trace_spanning_more_than_the_clocks_range_is_refused(tmp_path):
    from sim.core.simulation import Simulation
    from sim.errors import ConfigError

    path = tmp_path / "span.csv"
    path.write_text("start_offset_s,prompt_tokens,output_tokens\n5,10,10\n10000000005.5,10,10\n")
    cfg = make_config(arrival={"strategy": "replay"}, workload={"num_requests": None, "trace": {"path": str(path)}})
    with pytest.raises(ConfigError, match=r"workload\.trace\.path"):
        Simulation(cfg)


@pytest.mark.parametrize("strategy", ["constant", "poisson"])
def test_a_horizon_draws_only_the_requests_it_can_send(strategy):
    """GIVEN 3,000,000 requests at 20 req/s and a 2 s horizon WHEN simulated with records
    streamed THEN only the first chunk of the workload is drawn during the run, every request
    is accounted for exactly once (about 40 sent, the rest one not_sent row each, streamed in
    chunks in id order), and the not-sent rows carry their drawn lengths: the lengths of a
    smaller run of the same seed, request for request."""
    from sim.core.simulation import Simulation

    n = 3_000_000
    over = {"arrival": {"strategy": strategy, "rate_rps": 20.0}, "horizon_s": 2.0, "cost": {"model": "linear"}}
    chunks: list[pd.DataFrame] = []
    sim = Simulation(make_config(**over, workload={"num_requests": n}), spill=lambda kind, f: chunks.append(f) if kind == "requests" else None)
    drawn_during_run = []
    orig = sim.sink.add_not_sent

    def spy(pieces):
        drawn_during_run.append(sim.workload.columns.num_drawn)
        orig(pieces)

    sim.sink.add_not_sent = spy
    res = sim.run()
    assert drawn_during_run == [65536], "only the first chunk was drawn while the run went on"
    s = res.summary
    assert s["num_requests"] == n and 30 <= n - s["num_not_sent"] <= 50
    ids = np.concatenate([c["request_id"].to_numpy() for c in chunks])
    np.testing.assert_array_equal(ids, np.arange(n))
    assert max(len(c) for c in chunks) <= 65536
    # the same seed with fewer requests draws the same leading lengths
    small = simulate(make_config(**over, workload={"num_requests": 70_000}))
    head = pd.concat(chunks, ignore_index=True).iloc[:70_000]
    for col in ("prompt_tokens", "output_tokens", "status"):
        np.testing.assert_array_equal(head[col].to_numpy(), small.requests[col].to_numpy())


def test_a_workload_drawn_in_small_chunks_is_the_one_drawn_at_once():
    """Chunked drawing changes no request: the same lengths, groups and priorities with
    chunks of 7 as with one chunk of every request."""
    from sim.load.workload import build_workload
    from sim.rng import RandomStreams

    cfg = make_config(
        workload={
            "num_requests": 501,
            "prefix_tokens": 32,
            "prefix_groups": 3,
            "priority_levels": 4,
            "prompt_tokens": {"dist": "uniform", "min": 3, "max": 900},
        }
    )
    whole = build_workload(cfg.workload, RandomStreams(3), chunk=10_000)
    small = build_workload(cfg.workload, RandomStreams(3), chunk=7)
    for name in ("prompt_tokens", "output_tokens", "prefix_groups", "prefix_tokens", "priorities"):
        np.testing.assert_array_equal(np.asarray(getattr(whole, name)), np.asarray(getattr(small, name)), err_msg=name)
    for i in (0, 6, 7, 500):
        a, b = whole.make_request(i), small.make_request(i)
        assert (a.prompt_tokens, a.output_tokens, a.prefix_group, a.prefix_tokens, a.priority) == (
            b.prompt_tokens,
            b.output_tokens,
            b.prefix_group,
            b.prefix_tokens,
            b.priority,
        )
