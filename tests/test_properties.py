"""Property tests of the simulation core: random workloads, server limits, policies and
arrival strategies, each run checked step by step against the laws of the simulator.

Laws (each a named helper below, applied to every generated run):

* **conservation** — every request id appears exactly once, in one terminal state, and
  finished + rejected + in_flight + not_sent = n;
* **causality** — arrival <= first scheduled < first token <= finish (<= horizon);
* **clock** — step starts strictly increase, steps never overlap, every duration > 0;
* **budget and seats** — every step holds <= ``max_num_batched_tokens`` tokens and
  <= ``max_num_seqs`` requests (checked on each batch as the cost model prices it);
* **KV accounting** — block invariants every step; all KV freed when nothing is in flight;
* **work conservation** — the engine idles only when no admitted request is in the system;
* **completion** — without a horizon every request not rejected finishes; a request is
  rejected exactly when it can never fit (``max_model_len``, KV capacity, unchunked budget);
* **token accounting** — sampled tokens (ITL count + first tokens) equal the outputs of
  finished requests, and without preemption the computed tokens equal prompt + output − 1 −
  cached per request;
* **determinism** — the same config gives byte-identical request and step tables.

Runs use the ``fixed`` or ``linear`` cost models and 5–40 requests so that a few hundred
generated runs take well under a minute.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import LawChecker
from sim.config import parse_run_config
from sim.scheduler import SCHEDULERS
from sim.simulation import Simulation, simulate

POLICIES = SCHEDULERS.names()
OPEN_LOOP = ("constant", "poisson", "open-loop-at-measured-rate")
STATUSES = {"finished", "rejected", "in_flight", "not_sent"}
EPS_S = 1e-9
# Full KV consistency scans cost O(num_gpu_blocks) per step; above this size they run every
# FULL_SCAN_EVERY steps (the cheap per-request checks still run every step).
FULL_SCAN_MAX_BLOCKS = 1024
FULL_SCAN_EVERY = 16
# A run that needs more steps than this is treated as a livelock (each step computes >= 1
# token, so without preemption a run needs at most sum(prompt + output) steps).
LIVELOCK_FACTOR = 20
LIVELOCK_FLOOR_STEPS = 1000


# ---------------------------------------------------------------------------- strategies


@st.composite
def length_dists(draw, hi: int) -> dict:
    """A LengthDist mapping with every length in [1, hi]."""
    kind = draw(st.sampled_from(["fixed", "uniform", "normal"]))
    if kind == "fixed":
        return {"dist": "fixed", "value": draw(st.integers(1, hi))}
    lo = draw(st.integers(1, hi))
    top = draw(st.integers(lo, hi))
    if kind == "uniform":
        return {"dist": "uniform", "min": lo, "max": top}
    mean = draw(st.floats(0.5, float(hi), allow_nan=False))
    stdev = draw(st.floats(0.0, hi / 2, allow_nan=False))
    return {"dist": "normal", "mean": mean, "stdev": stdev, "min": lo, "max": top}


ARRIVALS = st.one_of(
    st.just({"strategy": "synchronous"}),
    st.builds(lambda s, r: {"strategy": s, "rate_rps": r}, st.sampled_from(OPEN_LOOP), st.floats(0.5, 200.0)),
    st.just({"strategy": "throughput"}),
    st.builds(lambda c: {"strategy": "throughput", "concurrency": c}, st.integers(1, 16)),
    st.builds(lambda c: {"strategy": "concurrent", "concurrency": c}, st.integers(1, 16)),
)

COSTS = st.one_of(
    st.builds(lambda s: {"model": "fixed", "fixed_step_s": s}, st.floats(1e-3, 0.05)),
    st.builds(
        lambda b, p, d: {"model": "linear", "linear_base_s": b, "linear_per_prefill_token_s": p, "linear_per_decode_token_s": d},
        st.floats(1e-3, 0.02),
        st.floats(0.0, 1e-4),
        st.floats(0.0, 1e-3),
    ),
)


KV_SIZES = st.one_of(
    st.floats(0.2, 1.0),  # smaller than the largest request: rejections
    st.floats(1.0, 4.0),  # a few requests at a time: KV pressure and preemption
    st.floats(4.0, 40.0),  # ample
)


@st.composite
def run_configs(draw, arrivals=ARRIVALS, horizon: bool = True, kv_sizes=KV_SIZES, min_seqs: int = 1) -> dict:
    """A random, valid, small run config mapping (parse with ``parse_run_config``).

    The KV cache is sized relative to the largest possible request (``KV_SIZES``), so tiny
    caches (rejections), tight ones (preemption) and ample ones all occur often.
    """
    block_size = draw(st.sampled_from([1, 8, 16, 32]))
    budget = draw(st.one_of(st.integers(block_size, 128), st.integers(block_size, 4096)))
    chunked = draw(st.sampled_from([True, True, True, False]))
    # keep the work of a run bounded: prompts of at most 25 budgets, short outputs
    prompt_hi = max(1, min(1500, 25 * budget))
    prefix = draw(st.one_of(st.just(0), st.integers(1, max(1, min(300, prompt_hi // 2)))))
    prompt = draw(length_dists(max(1, prompt_hi - prefix)))
    output = draw(length_dists(64))
    largest = prefix + _dist_max(prompt) + _dist_max(output)
    kv_tokens = draw(kv_sizes) * largest
    server = {
        "block_size": block_size,
        "max_num_seqs": draw(st.integers(min_seqs, 64)),
        "max_num_batched_tokens": budget,
        "enable_chunked_prefill": chunked,
        "enable_prefix_caching": draw(st.booleans()),
        "long_prefill_token_threshold": draw(st.one_of(st.just(0), st.integers(1, 2048))),
        "num_gpu_blocks": max(1, min(3000, math.ceil(kv_tokens / block_size))),
    }
    if draw(st.integers(0, 5)) == 0:
        server["max_model_len"] = draw(st.integers(1, 4096))
    cfg = {
        "seed": draw(st.integers(0, 2**32 - 1)),
        "server": server,
        "scheduler": {
            "policy": draw(st.sampled_from(POLICIES)),
            "chunk_size_tokens": draw(st.integers(1, 2048)),
            "starvation_age_s": draw(st.sampled_from([1e-3, 0.1, 10.0])),
        },
        "cost": draw(COSTS),
        "workload": {
            "num_requests": draw(st.integers(5, 40)),
            "prompt_tokens": prompt,
            "output_tokens": output,
            "prefix_tokens": prefix,
            "prefix_groups": draw(st.integers(1, 4)),
            "priority_levels": draw(st.integers(1, 4)),
        },
        "arrival": draw(arrivals),
        "record_itls": True,
    }
    if horizon and draw(st.integers(0, 4)) == 0:
        cfg["horizon_s"] = draw(st.floats(0.01, 3.0))
    return cfg


def _dist_max(d: dict) -> int:
    return d["value"] if d["dist"] == "fixed" else d["max"]


# ---------------------------------------------------------------------------- checked run


class StrictLawChecker(LawChecker):
    """conftest's per-step checker plus KV ownership checks and a livelock guard."""

    def __init__(self, sim: Simulation, max_steps: int) -> None:
        super().__init__(sim)
        self.max_steps = max_steps
        self.full_scan = sim.kv.num_blocks <= FULL_SCAN_MAX_BLOCKS

    def price(self, batch):
        s = self.sim
        kv = s.kv
        n = len(self.batches)
        if self.full_scan or n % FULL_SCAN_EVERY == 0:
            kv.check()  # LawChecker.price repeats it; cheap enough when the cache is small
        owned = kv._owned
        distinct = {b for blocks in owned.values() for b in blocks}
        assert len(distinct) == kv.num_used_blocks, "used blocks differ from blocks owned by requests"
        holders = set(owned)
        running_ids = {r.request_id for r in s.scheduler.running}
        assert holders <= running_ids, f"requests {sorted(holders - running_ids)} hold KV without running"
        assert all(r.num_computed_tokens == 0 for r in s.scheduler.waiting if r.num_preemptions), "a preempted request kept computed tokens"
        assert n < self.max_steps, f"more than {self.max_steps} steps: livelock?"
        if self.full_scan:
            return super().price(batch)
        # LawChecker minus the O(num_blocks) scan
        lim = s.scheduler.limits
        assert len(batch) > 0
        assert batch.num_tokens <= lim.max_num_batched_tokens, "token budget exceeded"
        assert len(batch) <= lim.max_num_seqs, "seat limit exceeded"
        assert s.scheduler.num_running <= lim.max_num_seqs
        ids = [it.request_id for it in batch.items]
        assert len(set(ids)) == len(ids), "a request scheduled twice in one step"
        assert all(it.new_tokens >= 1 for it in batch.items)
        for req in s.scheduler.running:
            assert kv.blocks_of(req.request_id) * kv.block_size >= req.num_computed_tokens
        self.batches.append(batch)
        self.max_reqs = max(self.max_reqs, len(batch))
        return self.inner.price(batch)


def run_strict(cfg):
    sim = Simulation(cfg)
    work = int(sim.workload.prompt_tokens.sum() + sim.workload.output_tokens.sum())
    checker = StrictLawChecker(sim, max(LIVELOCK_FLOOR_STEPS, LIVELOCK_FACTOR * work))
    sim.engine.cost_model = checker
    res = sim.run()
    sim.kv.check()
    return res, sim, checker


# ---------------------------------------------------------------------------- laws


def law_conservation(res) -> None:
    df = res.requests
    n = res.config.workload.num_requests
    assert df["request_id"].is_unique
    assert sorted(df["request_id"]) == list(range(n))
    assert set(df["status"]) <= STATUSES
    s = res.summary
    assert s["num_finished"] + s["num_rejected"] + s["num_in_flight"] + s["num_not_sent"] == n
    assert s["num_requests"] == n


def law_causality(res) -> None:
    df = res.requests
    horizon = res.config.horizon_s
    fin = df[df["status"] == "finished"]
    assert (fin["first_scheduled_s"] >= fin["arrival_s"]).all()
    assert (fin["first_token_s"] > fin["first_scheduled_s"]).all()
    assert (fin["finish_s"] >= fin["first_token_s"]).all()
    assert (fin["ttft_s"] > 0).all() and (fin["e2e_s"] >= fin["ttft_s"]).all()
    one = fin[fin["output_tokens"] == 1]
    assert (one["finish_s"] == one["first_token_s"]).all(), "a 1-token request finishes with its first token"
    multi = fin[fin["output_tokens"] > 1]
    assert (multi["finish_s"] > multi["first_token_s"]).all()
    np.testing.assert_allclose(multi["tpot_s"], (multi["e2e_s"] - multi["ttft_s"]) / (multi["output_tokens"] - 1))
    fly = df[df["status"] == "in_flight"]
    sched = fly[fly["first_scheduled_s"].notna()]
    assert (sched["first_scheduled_s"] >= sched["arrival_s"]).all()
    tok = fly[fly["first_token_s"].notna()]
    assert (tok["first_token_s"] > tok["first_scheduled_s"]).all()
    assert fly["finish_s"].isna().all()
    rej = df[df["status"] == "rejected"]
    assert rej["first_scheduled_s"].isna().all() and rej["first_token_s"].isna().all()
    assert (rej["reject_reason"].str.len() > 0).all()
    assert (df.loc[df["status"] != "rejected", "reject_reason"] == "").all()
    if horizon is not None:
        assert (fin["finish_s"] <= horizon + EPS_S).all()
        assert (df.loc[df["status"] != "not_sent", "arrival_s"] <= horizon + EPS_S).all()
        assert (tok["first_token_s"] <= horizon + EPS_S).all()


def law_clock(res) -> None:
    st_ = res.steps
    if st_.empty:
        return
    starts = st_["start_s"].to_numpy()
    durs = st_["duration_s"].to_numpy()
    assert (durs > 0).all()
    assert (np.diff(starts) > 0).all()
    assert (starts[1:] >= starts[:-1] + durs[:-1] - 1e-12).all()
    assert list(st_["step_index"]) == list(range(len(st_)))
    if res.config.horizon_s is not None:
        assert (starts + durs <= res.config.horizon_s + EPS_S).all()


def law_step_limits(res, sim) -> None:
    """Budget, seats and KV from the step table (independent of the per-step checker)."""
    st_ = res.steps
    lim = sim.scheduler.limits
    tokens = st_["num_prefill_tokens"] + st_["num_decode_reqs"]
    assert (tokens >= 1).all()
    assert (tokens <= lim.max_num_batched_tokens).all()
    assert (st_["num_decode_reqs"] + st_["num_prefill_reqs"] <= lim.max_num_seqs).all()
    assert (st_["num_running"] <= lim.max_num_seqs).all()
    assert (st_["kv_blocks_used"] <= sim.kv.num_blocks).all() and (st_["kv_blocks_used"] >= 0).all()
    assert (st_["is_mixed"] == ((st_["num_decode_reqs"] > 0) & (st_["num_prefill_reqs"] > 0))).all()


def law_kv_end(res, sim) -> None:
    s = res.summary
    held = {r.request_id for r in sim.scheduler.running}
    assert set(sim.kv._owned) <= held
    if s["num_in_flight"] == 0:
        assert sim.kv.num_used_blocks == 0, "KV blocks leaked after every request left"
    if not sim.cfg.server.enable_prefix_caching:
        assert (res.requests["cached_prompt_tokens"] == 0).all()
    assert (res.requests["cached_prompt_tokens"] < res.requests["prompt_tokens"]).all()


def law_work_conserving(res) -> None:
    """Between steps the engine idles only while no admitted request is unfinished, and it
    starts again exactly at an arrival."""
    st_ = res.steps
    df = res.requests
    admitted = df[df["status"].isin(["finished", "in_flight"])]
    arrivals = admitted["arrival_s"].to_numpy()
    leave = admitted["finish_s"].fillna(math.inf).to_numpy()
    if st_.empty:
        assert admitted.empty or res.config.horizon_s is not None
        return
    starts = st_["start_s"].to_numpy()
    ends = starts + st_["duration_s"].to_numpy()
    # before the first step: it starts at the first admitted arrival
    assert np.isclose(starts[0], arrivals.min())
    gaps = np.flatnonzero(starts[1:] - ends[:-1] > EPS_S)
    for k in gaps:
        end, nxt = ends[k], starts[k + 1]
        present = (arrivals <= end + EPS_S) & (leave > end + EPS_S)
        assert not present.any(), f"idle from {end} to {nxt} with requests {np.flatnonzero(present)} in the system"
        assert np.isclose(arrivals, nxt).any(), f"step at {nxt} after idling does not start at an arrival"
    if res.config.horizon_s is None and len(admitted):
        assert np.isclose(ends[-1], admitted["finish_s"].max()), "steps continued after the last request left"


def law_completion(res, sim) -> None:
    """Rejected exactly when it can never fit; without a horizon every other request finishes."""
    df = res.requests
    cfg = sim.cfg
    lim = sim.limits
    total = df["prompt_tokens"] + df["output_tokens"]
    never = (total > lim["max_model_len"]) | (total > lim["kv_capacity_tokens"])
    if not cfg.server.enable_chunked_prefill:
        never |= df["prompt_tokens"] > lim["max_num_batched_tokens"]
    sent = df["status"] != "not_sent"
    assert ((df["status"] == "rejected") == (never & sent)).all(), "rejections differ from requests that can never fit"
    if cfg.horizon_s is None:
        assert set(df["status"]) <= {"finished", "rejected"}
        assert res.summary["num_finished"] + res.summary["num_rejected"] == cfg.workload.num_requests


def law_tokens(res) -> None:
    """Sampled tokens equal outputs; without preemption computed tokens equal the work."""
    df = res.requests
    fin = df[df["status"] == "finished"]
    fly = df[df["status"] == "in_flight"]
    n_itls = len(res.itls_s)
    assert (res.itls_s > 0).all()
    if fly.empty:
        assert n_itls == int((fin["output_tokens"] - 1).sum())
    else:
        assert int((fin["output_tokens"] - 1).sum()) <= n_itls <= int((fin["output_tokens"] - 1).sum() + (fly["output_tokens"] - 1).sum())
    st_ = res.steps
    step_tokens = int((st_["num_prefill_tokens"] + st_["num_decode_reqs"]).sum())
    work = int((fin["prompt_tokens"] + fin["output_tokens"] - 1 - fin["cached_prompt_tokens"]).sum())
    if fly.empty:
        # preempted requests recompute, prefix hits after a preemption save work: only the
        # preemption-free case has an exact total
        if res.summary["num_preemptions"] == 0:
            assert step_tokens == work
        assert int(st_["num_preempted"].sum()) == res.summary["num_preemptions"]
    else:
        assert int(st_["num_preempted"].sum()) <= res.summary["num_preemptions"]


def _events(res) -> None:
    """Label the run for ``--hypothesis-show-statistics`` (coverage of the interesting cases)."""
    s = res.summary
    cfg = res.config
    event(f"policy={cfg.scheduler.policy}")
    event(f"arrival={cfg.arrival.strategy}")
    for name in ("preemptions", "rejected", "in_flight", "not_sent", "mixed_steps"):
        if s[f"num_{name}"] > 0:
            event(f"has {name}")
    if 0 < s["num_preemptions"] and s["num_in_flight"] == 0:
        event("preemptions and every request left")


def check_all_laws(res, sim) -> None:
    _events(res)
    law_conservation(res)
    law_causality(res)
    law_clock(res)
    law_step_limits(res, sim)
    law_kv_end(res, sim)
    law_work_conserving(res)
    law_completion(res, sim)
    law_tokens(res)


# ---------------------------------------------------------------------------- properties

def _with_policy(data: dict, policy: str) -> dict:
    return dict(data, scheduler=dict(data["scheduler"], policy=policy))


# Example counts: tuned so the file runs in well under a minute on 2 cores.
# Each of the first two runs once per policy. SERVESIM_HYPOTHESIS_SCALE multiplies every
# count (e.g. 20 for a long bug hunt).
SCALE = float(os.environ.get("SERVESIM_HYPOTHESIS_SCALE", "1"))
N_LAWS_PER_POLICY = max(1, int(40 * SCALE))
N_PRESSURE_PER_POLICY = max(1, int(20 * SCALE))
N_DETERMINISM = max(1, int(30 * SCALE))
N_REPLAY = max(1, int(30 * SCALE))


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=N_LAWS_PER_POLICY, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=run_configs())
def test_laws_hold_for_random_configs(policy, data):
    """GIVEN a random workload, server limits, policy, arrival strategy and maybe a horizon
    WHEN simulated THEN every law (conservation, causality, clock, budget, seats, KV, work
    conservation, completion, token accounting) holds."""
    cfg = parse_run_config(_with_policy(data, policy))
    res, sim, _ = run_strict(cfg)
    check_all_laws(res, sim)


PRESSURE_ARRIVALS = st.one_of(
    st.just({"strategy": "throughput"}),
    st.builds(lambda c: {"strategy": "concurrent", "concurrency": c}, st.integers(4, 32)),
    st.builds(lambda r: {"strategy": "poisson", "rate_rps": r}, st.floats(50.0, 500.0)),
)


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=N_PRESSURE_PER_POLICY, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=run_configs(arrivals=PRESSURE_ARRIVALS, horizon=False, kv_sizes=st.floats(1.0, 3.0), min_seqs=4))
def test_laws_hold_under_kv_pressure(policy, data):
    """GIVEN many requests at once, several seats and a KV cache of 1-3 of the largest
    requests WHEN simulated THEN requests are preempted and recomputed, yet every law holds
    and every request that fits finishes."""
    cfg = parse_run_config(_with_policy(data, policy))
    res, sim, _ = run_strict(cfg)
    check_all_laws(res, sim)


@settings(max_examples=N_DETERMINISM, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(run_configs())
def test_same_config_gives_byte_identical_tables(data):
    """GIVEN any config WHEN simulated twice THEN the request and step tables and the ITLs are
    byte-identical."""
    cfg = parse_run_config(data)
    a, b = simulate(cfg), simulate(cfg)
    assert a.requests.to_csv(index=False) == b.requests.to_csv(index=False)
    assert a.steps.to_csv(index=False) == b.steps.to_csv(index=False)
    assert a.itls_s.tobytes() == b.itls_s.tobytes()


TRACE_ROWS = st.lists(
    st.tuples(st.floats(0.0, 5.0, allow_nan=False), st.integers(1, 600), st.integers(1, 40)), min_size=1, max_size=30
)


@pytest.fixture(scope="module")
def trace_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("traces")


@settings(max_examples=N_REPLAY, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=TRACE_ROWS, data=run_configs(arrivals=st.just({"strategy": "replay"})), name=st.uuids())
def test_laws_hold_for_trace_replay(trace_dir, rows, data, name):
    """GIVEN a random trace replayed at its offsets WHEN simulated THEN the laws hold and each
    request arrives at its (shifted) trace offset."""
    path = trace_dir / f"{name}.csv"
    pd.DataFrame(rows, columns=["start_offset_s", "prompt_tokens", "output_tokens"]).to_csv(path, index=False)
    wl = {k: v for k, v in data["workload"].items() if k not in ("prompt_tokens", "output_tokens", "num_requests")}
    data = dict(data, workload={**wl, "num_requests": len(rows), "trace": {"path": str(path)}})
    cfg = parse_run_config(data)
    res, sim, _ = run_strict(cfg)
    check_all_laws(res, sim)
    offsets = np.sort(np.array([r[0] for r in rows]))
    sent = res.requests[res.requests["status"] != "not_sent"]
    np.testing.assert_allclose(sent["arrival_s"].to_numpy(), (offsets - offsets.min())[: len(sent)])
