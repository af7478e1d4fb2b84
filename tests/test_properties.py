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
* **determinism** — the same config gives byte-identical request and step tables, with the
  engine's decode fast-forward on and off.

Runs use the ``fixed`` or ``linear`` cost models and 5–40 requests so that a few hundred
generated runs take well under a minute.
"""

from __future__ import annotations

import math
import os
from unittest import mock

import numpy as np
import pandas as pd
import pytest
from conftest import LawChecker
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sim.config import parse_run_config
from sim.core.simulation import Simulation, simulate
from sim.entities import Request
from sim.errors import ConfigError
from sim.scheduler import SCHEDULERS
from sim.scheduler.base import SchedulerLimits
from sim.scheduler.kv import KVCacheManager

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
        "async_scheduling": draw(st.integers(0, 3)) == 0,
    }
    if draw(st.integers(0, 5)) == 0:
        server["max_model_len"] = draw(st.integers(1, 4096))
    if not chunked:  # vLLM (and servesim) require max_num_batched_tokens >= max_model_len then
        server["max_model_len"] = min(server.get("max_model_len", budget), budget)
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
    if draw(st.integers(0, 3)) == 0:  # prompts repeat from a pool (inference-perf), maybe cached at t=0
        cfg["workload"]["prompt_pool"] = draw(st.integers(1, 8))
        cfg["workload"]["prompt_pool_warm"] = draw(st.booleans())
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

    def full_kv_scan(self) -> bool:
        # the O(num_blocks) scan on every step when the cache is small, else every few steps
        return self.full_scan or len(self.batches) % FULL_SCAN_EVERY == 0

    def price(self, batch):
        s = self.sim
        kv = s.kv
        owned = kv._owned
        distinct = {b for blocks in owned.values() for b in blocks}
        assert len(distinct) == kv.num_used_blocks, "used blocks differ from blocks owned by requests"
        holders = set(owned)
        running_ids = {r.request_id for r in s.scheduler.running}
        assert holders <= running_ids, f"requests {sorted(holders - running_ids)} hold KV without running"
        assert all(r.num_computed_tokens == 0 for r in s.scheduler.waiting if r.num_preemptions), "a preempted request kept computed tokens"
        assert len(self.batches) < self.max_steps, f"more than {self.max_steps} steps: livelock?"
        return super().price(batch)


def run_strict(cfg):
    """Run ``cfg`` under :class:`StrictLawChecker` and check the KV invariants at the end."""
    sim = Simulation(cfg)
    work = int(sim.workload.prompt_tokens.sum() + sim.workload.output_tokens.sum())
    checker = StrictLawChecker(sim, max(LIVELOCK_FLOOR_STEPS, LIVELOCK_FACTOR * work))
    sim.engine.cost_model = checker
    res = sim.run()
    sim.kv.check()
    return res, sim, checker


def run_and_check(cfg) -> None:
    """Run ``cfg`` and check every law."""
    res, sim, _ = run_strict(cfg)
    check_all_laws(res, sim)


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
N_DETERMINISM = max(1, int(15 * SCALE))
N_REPLAY = max(1, int(30 * SCALE))


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=N_LAWS_PER_POLICY, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=run_configs())
def test_laws_hold_for_random_configs(policy, data):
    """GIVEN a random workload, server limits, policy, arrival strategy and maybe a horizon
    WHEN simulated THEN every law (conservation, causality, clock, budget, seats, KV, work
    conservation, completion, token accounting) holds."""
    run_and_check(parse_run_config(_with_policy(data, policy)))


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
    run_and_check(parse_run_config(_with_policy(data, policy)))


def _tables(res) -> tuple[str, str, bytes]:
    return res.requests.to_csv(index=False), res.steps.to_csv(index=False), res.itls_s.tobytes()


def _run_tables(cfg, fast_forward: bool):
    """(tables, result, simulation) of one run, counting fast-forward windows."""
    sim = Simulation(cfg, fast_forward=fast_forward)
    engine = sim.engine
    sim.ff_windows = 0
    if engine.fast_forward:
        apply = engine._fast_forward

        def counted(*window):
            sim.ff_windows += 1
            return apply(*window)

        engine._fast_forward = counted
    res = sim.run()
    return _tables(res), res, sim


# Fast-forward applies to the policies that plan with VllmV1Scheduler.schedule; the others
# run the step loop either way (still compared, once each).
FF_POLICIES = ["vllm-v1", "priority", "sjf"]


@pytest.mark.parametrize("policy", FF_POLICIES + ["other"])
@settings(max_examples=N_DETERMINISM, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=run_configs())
def test_same_config_gives_byte_identical_tables_with_and_without_fast_forward(policy, data):
    """GIVEN any config WHEN simulated twice with the engine's decode fast-forward and once
    without THEN the request and step tables and the ITLs are byte-identical, and the laws
    checkable from the tables hold for the fast-forwarded run (the per-step checker of the
    other tests prices every step, which turns fast-forward off)."""
    cfg = parse_run_config(data if policy == "other" else _with_policy(data, policy))
    a, res, sim = _run_tables(cfg, True)
    b, _, _ = _run_tables(cfg, True)
    c, _, _ = _run_tables(cfg, False)
    assert a == b, "same config, different tables"
    assert a == c, "fast-forward changed the tables"
    event("fast-forward windows applied" if sim.ff_windows else "no fast-forward window")
    check_all_laws(res, sim)


TRACE_ROWS = st.lists(st.tuples(st.floats(0.0, 5.0, allow_nan=False), st.integers(1, 600), st.integers(1, 40)), min_size=1, max_size=30)


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


# ---------------------------------------------------------------------------- atomic result files

FAIL_POINTS = ["none", "write", "fsync", "replace", "interrupt"]


@settings(max_examples=max(1, int(25 * SCALE)), deadline=None)
@given(old=st.one_of(st.none(), st.binary(max_size=64)), new=st.binary(max_size=4096), fail=st.sampled_from(FAIL_POINTS), name=st.uuids())
def test_result_files_are_replaced_atomically(atomic_dir, old, new, fail, name):
    """GIVEN a result file (or none) WHEN it is rewritten and the write fails at any point
    (I/O error or Ctrl-C) THEN the file holds either all the old bytes or all the new ones,
    and no temporary file is left behind."""
    from sim.cli import output as cli_output

    target = atomic_dir / f"{name}.bin"
    # the directory is shared by all examples and hypothesis repeats names: set up the GIVEN
    if old is None:
        target.unlink(missing_ok=True)
    else:
        target.write_bytes(old)
    exc = KeyboardInterrupt if fail == "interrupt" else OSError

    def boom(*_a, **_k):
        raise exc("injected")

    where = {
        "write": "sim.cli.output.os.fdopen",
        "fsync": "sim.cli.output.os.fsync",
        "replace": "sim.cli.output.os.replace",
        "interrupt": "sim.cli.output.os.fsync",
    }
    if fail == "none":
        cli_output.atomic_write_bytes(target, new)
        assert target.read_bytes() == new
    else:
        with mock.patch(where[fail], boom), pytest.raises(exc):
            cli_output.atomic_write_bytes(target, new)
        if old is None:
            assert not target.exists()
        else:
            assert target.read_bytes() == old
    assert not [p for p in atomic_dir.iterdir() if p.name.startswith(f".{name}")], "temporary file left behind"


@pytest.fixture(scope="module")
def atomic_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("atomic")


# ---------------------------------------------------------------------------- regressions
# Minimal reproductions of bugs the properties found, kept as regression tests.


def _drive(policy: str, limits: SchedulerLimits, num_blocks: int, arrivals: dict[int, list[Request]], steps: int = 50) -> None:
    """Plan and apply steps of ``policy`` directly (no engine): ``arrivals[k]`` join before
    step k. An empty plan is allowed only when it preempted (vLLM V1: the request that needed
    KV preempted itself); every request must finish."""
    sched = SCHEDULERS.get(policy)(limits, KVCacheManager(num_blocks, 1))
    for k in range(steps):
        for req in arrivals.get(k, []):
            sched.add_request(req)
        if not sched.has_work() and k > max(arrivals):
            return
        out = sched.schedule(float(k))
        state = [(r.request_id, r.num_computed_tokens) for r in sched.running], [r.request_id for r in sched.waiting]
        assert not out.is_empty or out.preempted, f"step {k}: empty plan; running (id, computed) {state[0]}, waiting {state[1]}"
        sched.update_from_output(out, float(k + 1))
    assert not sched.has_work(), "requests left unfinished"


LIMITS_2X8 = dict(max_num_seqs=2, max_num_batched_tokens=8, enable_chunked_prefill=True, max_model_len=100)


def test_priority_self_preemption_recovers():
    """GIVEN 4 one-token KV blocks, A (priority 1, prompt 1, output 3) admitted one step before
    B (priority 0, prompt 2, output 2) WHEN A needs a block at step 2 THEN A is the victim
    (least urgent) and preempts itself: vLLM V1 plans an empty step; the engine must carry on
    (it used to raise) and both finish."""
    a = Request(0, prompt_tokens=1, output_tokens=3, priority=1)
    b = Request(1, prompt_tokens=2, output_tokens=2, priority=0)
    _drive("priority", SchedulerLimits(long_prefill_token_threshold=0, **LIMITS_2X8), 4, {0: [a], 1: [b]})


@pytest.mark.parametrize("policy", ["decode-first", "sarathi"])
def test_decode_first_self_preemption_recovers(policy):
    """GIVEN 4 one-token KV blocks, long_prefill_token_threshold 1, A (prompt 3, output 1) and B
    (prompt 1, output 3) arriving together WHEN B's decode needs a block at step 2 THEN B (the
    latest admitted) preempts itself, and both requests still finish."""
    a = Request(0, prompt_tokens=3, output_tokens=1)
    b = Request(1, prompt_tokens=1, output_tokens=3)
    _drive(policy, SchedulerLimits(long_prefill_token_threshold=1, **LIMITS_2X8), 4, {0: [a, b]})


@pytest.mark.parametrize("policy", ["vllm-v1", "priority", "decode-first", "sarathi"])
def test_self_preemption_through_the_engine(policy):
    """The same situations end to end: every request finishes and the preemptions are counted
    in the step records."""
    cfg = parse_run_config(
        {
            "cost": {"model": "fixed"},
            "scheduler": {"policy": policy},
            "server": {"block_size": 1, "num_gpu_blocks": 6, "max_num_batched_tokens": 8, "long_prefill_token_threshold": 1},
            "workload": {
                "num_requests": 4,
                "prompt_tokens": {"dist": "uniform", "min": 1, "max": 3},
                "output_tokens": {"dist": "fixed", "value": 3},
                "priority_levels": 2,
            },
            "arrival": {"strategy": "throughput"},
        }
    )
    res = simulate(cfg)
    assert res.summary["num_finished"] == 4
    assert res.summary["num_preemptions"] > 0
    assert res.steps["num_preempted"].sum() == res.requests["num_preemptions"].sum()


def test_unchunked_budget_below_max_model_len_is_refused():
    """Without chunked prefill a preempted request recomputes prompt + generated tokens in one
    step, so vLLM requires max_num_batched_tokens >= max_model_len; servesim refuses the
    config the same way (it used to admit it and then stall)."""
    with pytest.raises(ConfigError, match="max_num_batched_tokens"):
        simulate(parse_run_config({"cost": {"model": "fixed"}, "server": {"max_num_batched_tokens": 2, "enable_chunked_prefill": False}}))
    cfg = parse_run_config(
        {
            "cost": {"model": "fixed"},
            "server": {"block_size": 1, "num_gpu_blocks": 4, "max_num_batched_tokens": 4, "max_model_len": 4, "enable_chunked_prefill": False},
            "workload": {"num_requests": 2, "prompt_tokens": {"dist": "fixed", "value": 1}, "output_tokens": {"dist": "fixed", "value": 3}},
            "arrival": {"strategy": "throughput"},
        }
    )
    res = simulate(cfg)
    assert res.summary["num_finished"] == 2
