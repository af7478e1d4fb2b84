"""Scheduling policies (sim/scheduler/policies.py): the core laws for every policy, and each
policy's defining behaviour — by unit steps on a hand-built scheduler state and by direction
tests on whole runs."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import make_config, run_checked
from test_core_laws import _check_request_laws, _check_step_laws, _check_work_conserving

from sim.core.simulation import Simulation, simulate
from sim.entities import Request, RequestStatus
from sim.scheduler import SCHEDULERS
from sim.scheduler.base import SchedulerLimits
from sim.scheduler.kv import KVCacheManager

POLICIES = ["vllm-v0", "decode-first", "sarathi", "priority", "sjf"]

ARRIVALS = [
    {"strategy": "synchronous"},
    {"strategy": "constant", "rate_rps": 8.0},
    {"strategy": "poisson", "rate_rps": 20.0},
    {"strategy": "throughput"},
    {"strategy": "concurrent", "concurrency": 3},
]


def _policy_config(policy: str, **overrides):
    sched = {"policy": policy, "chunk_size_tokens": 128, "starvation_age_s": 0.5}
    sched.update(overrides.pop("scheduler", {}))
    workload = {"priority_levels": 3}
    workload.update(overrides.pop("workload", {}))
    return make_config(scheduler=sched, workload=workload, **overrides)


# ------------------------------------------------------------------------- laws
def test_every_policy_is_registered():
    for name in POLICIES + ["vllm-v1"]:
        assert name in SCHEDULERS
        assert SCHEDULERS.describe()[name]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("arrival", ARRIVALS, ids=lambda a: "-".join(str(v) for v in a.values()))
@pytest.mark.parametrize("seed", [1, 7])
def test_laws_hold_for_every_policy(policy, arrival, seed):
    """GIVEN any policy and arrival strategy WHEN the run ends THEN every request finishes and
    conservation, causality, budget, seats, KV and work conservation hold on every step."""
    cfg = _policy_config(policy, seed=seed, arrival=arrival, server={"max_num_batched_tokens": 256, "max_num_seqs": 8})
    res, sim, _ = run_checked(cfg)
    assert res.summary["num_finished"] == 20
    _check_request_laws(res)
    _check_step_laws(res, sim)
    _check_work_conserving(res)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("seed", [3, 11])
@pytest.mark.parametrize("prefix_caching", [False, True])
def test_laws_hold_under_kv_pressure(policy, seed, prefix_caching):
    """GIVEN scarce KV blocks (preemptions) and prompts longer than the step budget WHEN loaded
    THEN preemptions happen, every request finishes and the per-step laws hold."""
    cfg = _policy_config(
        policy,
        seed=seed,
        workload={"num_requests": 40, "prefix_tokens": 64, "prefix_groups": 2},
        arrival={"strategy": "throughput"},
        server={"num_gpu_blocks": 120, "max_num_batched_tokens": 512, "enable_prefix_caching": prefix_caching},
    )
    res, sim, _ = run_checked(cfg)
    assert res.summary["num_finished"] == 40
    assert res.summary["num_preemptions"] > 0
    _check_request_laws(res)
    _check_step_laws(res, sim)
    _check_work_conserving(res)


@pytest.mark.parametrize("policy", POLICIES)
def test_policy_runs_are_deterministic(policy):
    cfg = _policy_config(policy, workload={"num_requests": 40}, arrival={"strategy": "poisson", "rate_rps": 30.0})
    assert simulate(cfg).requests.to_csv(index=False) == simulate(cfg).requests.to_csv(index=False)


# ------------------------------------------------------- hand-built scheduler state
def _scheduler(policy: str, budget: int, *, blocks: int = 1000, seqs: int = 16, chunked: bool = True, chunk: int = 512, age: float = 10.0):
    limits = SchedulerLimits(
        max_num_seqs=seqs,
        max_num_batched_tokens=budget,
        long_prefill_token_threshold=0,
        enable_chunked_prefill=chunked,
        max_model_len=100_000,
        chunk_size_tokens=chunk,
        starvation_age_s=age,
    )
    return SCHEDULERS.get(policy)(limits, KVCacheManager(blocks, 16))


def _add_running(sched, rid: int, prompt: int, computed: int, generated: int = 0) -> Request:
    """Put a request in the running list with ``computed`` tokens in KV and ``generated`` outputs."""
    req = Request(rid, prompt, 100, arrival_s=0.0)
    req.num_output_generated = generated
    assert sched.kv.allocate_slots(req, computed)
    req.num_computed_tokens = computed
    req.status = RequestStatus.RUNNING
    req.first_scheduled_s = 0.0
    sched.running.append(req)
    return req


def _waiting(sched, rid: int, prompt: int, arrival_s: float = 0.0, priority: int = 0) -> Request:
    req = Request(rid, prompt, 10, arrival_s=arrival_s, priority=priority)
    sched.add_request(req)
    return req


def _tokens(out) -> dict[int, int]:
    return {it.request_id: it.new_tokens for it in out.batch.items}


def test_vllm_v0_runs_admissible_prompt_alone_else_decodes():
    """GIVEN running decodes and a waiting prompt WHEN the prompt fits THEN the step is
    prefill-only; WHEN it no longer fits the KV THEN the step holds every decode and nothing else."""
    sched = _scheduler("vllm-v0", 512, blocks=40)
    _add_running(sched, 0, 100, 100, generated=1)
    _add_running(sched, 1, 100, 100, generated=1)
    _waiting(sched, 2, 100)
    _waiting(sched, 3, 100)
    out = sched.schedule(0.0)
    assert _tokens(out) == {2: 100, 3: 100}
    assert out.batch.num_decode_reqs == 0
    sched.update_from_output(out, 0.1)
    _waiting(sched, 4, 300)  # 19 blocks needed, 12 free
    out = sched.schedule(0.1)
    assert _tokens(out) == {0: 1, 1: 1, 2: 1, 3: 1}
    assert out.batch.num_prefill_reqs == 0


def test_vllm_v0_chunks_an_over_long_prompt_alone():
    """GIVEN a prompt longer than the budget (chunked prefill on, so not rejected) THEN it is
    prefilled alone in budget-sized prefill-only steps before anything else."""
    sched = _scheduler("vllm-v0", 256)
    _add_running(sched, 0, 100, 100, generated=1)
    _waiting(sched, 1, 600)
    _waiting(sched, 2, 50)
    sizes = []
    for t in range(3):
        out = sched.schedule(float(t))
        sizes.append(_tokens(out))
        sched.update_from_output(out, t + 0.5)
    assert sizes == [{1: 256}, {1: 256}, {1: 88}]
    out = sched.schedule(3.0)
    assert _tokens(out) == {2: 50}


def test_decode_first_schedules_decodes_before_an_older_prefill():
    """GIVEN an older request mid-prefill ahead of two decodes and a tight budget THEN
    decode-first serves both decodes and gives the prefill the rest; vllm-v1 (admission order)
    spends the whole budget on the prefill."""
    for policy, expected in (("decode-first", {1: 1, 2: 1, 0: 62}), ("vllm-v1", {0: 64})):
        sched = _scheduler(policy, 64)
        _add_running(sched, 0, 1000, 100)
        _add_running(sched, 1, 50, 50, generated=1)
        _add_running(sched, 2, 50, 50, generated=1)
        out = sched.schedule(0.0)
        assert _tokens(out) == expected, policy
    assert [it.request_id for it in out.batch.items] == [0]


def test_sarathi_budget_counts_decodes():
    """GIVEN 3 decodes, chunk 32 and a large budget THEN the prefill gets 32 − 3 tokens
    (the paper's τ bounds the whole step); decodes are never dropped for the chunk."""
    sched = _scheduler("sarathi", 2048, chunk=32)
    for i in range(3):
        _add_running(sched, i, 40, 40, generated=1)
    _waiting(sched, 3, 500)
    out = sched.schedule(0.0)
    assert _tokens(out) == {0: 1, 1: 1, 2: 1, 3: 29}
    sched = _scheduler("sarathi", 2048, chunk=2)
    for i in range(3):
        _add_running(sched, i, 40, 40, generated=1)
    _waiting(sched, 3, 500)
    assert _tokens(sched.schedule(0.0)) == {0: 1, 1: 1, 2: 1}


def test_priority_orders_by_priority_then_ages_protect_the_old():
    """GIVEN an old low-priority request and a newer urgent one, budget for one prompt THEN the
    urgent one goes first while the old one is younger than starvation_age_s, and the old one
    goes first once it is older."""
    for now, first in ((5.0, 1), (10.5, 0)):
        sched = _scheduler("priority", 100, age=10.0)
        _waiting(sched, 0, 100, arrival_s=0.0, priority=2)
        _waiting(sched, 1, 100, arrival_s=1.0, priority=0)
        assert list(_tokens(sched.schedule(now))) == [first], now


def test_priority_preempts_the_least_urgent_running_request():
    """GIVEN the KV full WHEN a decode needs a block THEN the victim is the running request with
    the highest priority number (then latest arrival), not the most recently admitted."""
    sched = _scheduler("priority", 512, blocks=6)
    urgent_late = _add_running(sched, 0, 32, 32, generated=1)  # 2 full blocks + needs one more
    lax = _add_running(sched, 1, 31, 31, generated=1)
    urgent_late.priority, lax.priority = 0, 2
    newest = _add_running(sched, 2, 31, 31, generated=1)
    newest.priority = 1
    newest.arrival_s = 5.0
    assert sched.kv.num_free_blocks == 0
    out = sched.schedule(0.0)
    assert out.preempted == [lax]
    assert set(_tokens(out)) == {0, 2}


def test_sjf_orders_by_prompt_length_then_ages_protect_the_old():
    for now, first in ((5.0, 1), (10.5, 0)):
        sched = _scheduler("sjf", 400, age=10.0)
        _waiting(sched, 0, 400, arrival_s=0.0)
        _waiting(sched, 1, 300, arrival_s=1.0)
        assert list(_tokens(sched.schedule(now)))[0] == first, now


# ------------------------------------------------------------------ whole runs
@pytest.mark.parametrize("seed", [1, 4])
@pytest.mark.parametrize("prefix_caching", [False, True])
def test_vllm_v0_never_mixes_under_load(seed, prefix_caching):
    """GIVEN overlapping requests, scarce KV and prompts over the budget WHEN vllm-v0 runs THEN
    no step mixes prefill and decode, while vllm-v1 on the same load does mix."""
    kw = dict(
        seed=seed,
        workload={"num_requests": 60, "prefix_tokens": 64, "prefix_groups": 2},
        arrival={"strategy": "constant", "rate_rps": 30.0},
        server={"num_gpu_blocks": 150, "max_num_batched_tokens": 512, "enable_prefix_caching": prefix_caching},
    )
    res, _, chk = run_checked(_policy_config("vllm-v0", **kw))
    assert res.summary["num_finished"] == 60
    assert res.summary["num_mixed_steps"] == 0
    assert not any(b.is_mixed for b in chk.batches)
    assert any(b.num_prefill_reqs > 1 for b in chk.batches)  # whole prompts batched together
    assert res.summary["num_preemptions"] > 0
    ref = simulate(_policy_config("vllm-v1", **kw))
    assert ref.summary["num_mixed_steps"] > 0


def _prefill_heavy(policy: str, seed: int):
    return make_config(
        seed=seed,
        scheduler={"policy": policy},
        cost={"model": "linear", "linear_base_s": 0.005, "linear_per_prefill_token_s": 2e-5, "linear_per_decode_token_s": 5e-4},
        workload={
            "num_requests": 200,
            "prompt_tokens": {"dist": "fixed", "value": 2000},
            "output_tokens": {"dist": "uniform", "min": 20, "max": 60},
        },
        arrival={"strategy": "constant", "rate_rps": 15.0},
        server={"max_num_batched_tokens": 2016},
    )


@pytest.mark.parametrize("seed", [1, 2])
def test_decode_first_trades_ttft_for_tpot_against_vllm_v0(seed):
    """GIVEN long prompts (2000 tokens, 45 ms of prefill each), short outputs, 15 req/s and a
    budget of 2016 tokens WHEN run under vllm-v0 and decode-first THEN decode-first has the
    lower mean TPOT and the higher mean TTFT.

    Why: vllm-v0 stalls every running decode for a whole prefill-only step whenever a prompt is
    admitted, so a request's decodes also pay the fixed overhead of steps that produce no token
    for it; decode-first never stalls a decode (every step advances all of them). In return a
    prompt under decode-first shares its step with all running decodes (each costs time) and only
    gets the budget they leave — beyond 16 decodes a 2000-token prompt needs two steps — whereas
    vllm-v0 runs it at the next step boundary, alone, with the full budget.
    """
    v0 = simulate(_prefill_heavy("vllm-v0", seed)).summary
    df = simulate(_prefill_heavy("decode-first", seed)).summary
    assert v0["num_finished"] == df["num_finished"] == 200
    assert df["tpot_mean_ms"] < 0.8 * v0["tpot_mean_ms"]
    assert df["ttft_mean_ms"] > 1.2 * v0["ttft_mean_ms"]


@pytest.mark.parametrize("seed", [1, 5])
def test_sarathi_never_exceeds_chunk_size_prefill_tokens(seed):
    """GIVEN chunk_size 128 under a 2048-token budget THEN no step holds more than 128 prefill
    tokens, nor more than 128 tokens in all when it holds prefill; vllm-v1 on the same load does
    exceed 128 (the check can fail)."""
    kw = dict(
        seed=seed,
        workload={"num_requests": 40},
        arrival={"strategy": "poisson", "rate_rps": 20.0},
        server={"max_num_batched_tokens": 2048},
    )
    res, _, chk = run_checked(_policy_config("sarathi", **kw))
    assert res.summary["num_finished"] == 40
    for b in chk.batches:
        assert b.num_prefill_tokens <= 128
        if b.num_prefill_tokens:
            assert b.num_tokens <= 128
    assert max(b.num_prefill_tokens for b in chk.batches) > 100
    _, _, ref = run_checked(_policy_config("vllm-v1", **kw))
    assert max(b.num_prefill_tokens for b in ref.batches) > 128


def _ttft_by_priority(policy: str, seed: int, age_s: float):
    cfg = make_config(
        seed=seed,
        scheduler={"policy": policy, "starvation_age_s": age_s},
        workload={"num_requests": 120, "priority_levels": 3},
        arrival={"strategy": "poisson", "rate_rps": 60.0},
        server={"max_num_batched_tokens": 512, "max_num_seqs": 8},
    )
    sim = Simulation(cfg)
    res = sim.run()
    assert res.summary["num_finished"] == 120
    prio = {r.request_id: r.priority for r in sim.workload.requests}
    df = res.requests.assign(priority=res.requests["request_id"].map(prio))
    return df.groupby("priority")["ttft_s"].mean()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_priority_serves_urgent_requests_first_under_overload(seed):
    """GIVEN 3 priority levels at 60 req/s (overload) THEN priority 0 has under half the mean
    TTFT of priority 2; with a short starvation age the least urgent wait less than without."""
    strict = _ttft_by_priority("priority", seed, 1e6)
    assert strict[0] < 0.5 * strict[2]
    aged = _ttft_by_priority("priority", seed, 0.2)
    assert aged[2] < strict[2]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sjf_lowers_mean_ttft_on_mixed_lengths(seed):
    """GIVEN prompts of 50..4000 tokens at 30 req/s (overload for a 512-token budget) THEN sjf's
    mean TTFT is below 85% of FCFS (vllm-v1)."""

    def run(policy):
        return simulate(
            make_config(
                seed=seed,
                scheduler={"policy": policy, "starvation_age_s": 1e6},
                workload={
                    "num_requests": 100,
                    "prompt_tokens": {"dist": "uniform", "min": 50, "max": 4000},
                    "output_tokens": {"dist": "fixed", "value": 10},
                },
                arrival={"strategy": "poisson", "rate_rps": 30.0},
                server={"max_num_batched_tokens": 512},
            )
        ).summary

    fcfs, sjf = run("vllm-v1"), run("sjf")
    assert sjf["num_finished"] == fcfs["num_finished"] == 100
    assert sjf["ttft_mean_ms"] < 0.85 * fcfs["ttft_mean_ms"]


class _ReferenceAgedOrder:
    """The aged order as first written: every step, sort the whole queue by a key computed
    for every waiting request (O(n) Python calls per step; kept here as the reference)."""

    def order_waiting(self, now_s):
        age = self.limits.starvation_age_s

        def key(r):
            if now_s - r.arrival_s > age:
                return (0, r.arrival_s, r.request_id)
            return (1, *self.wait_key(r), r.request_id)

        ordered = sorted(self.waiting, key=key)
        self.waiting.clear()
        self.waiting.extend(ordered)


@pytest.mark.parametrize("policy", ["priority", "sjf"])
@pytest.mark.parametrize("age_s", [0.05, 0.5, 1e9])
@pytest.mark.parametrize("extra", [{}, {"server": {"async_scheduling": True}}], ids=["sync", "async"])
def test_kept_order_equals_sorting_the_queue_every_step(policy, age_s, extra, monkeypatch):
    """Overloaded, with preemptions and aging: the incrementally kept queue order gives
    byte-identical request and step tables to re-sorting the whole queue every step."""
    import sim.scheduler.policies as pol
    from sim.core.simulation import simulate

    cfg = make_config(
        scheduler={"policy": policy, "starvation_age_s": age_s},
        server={"max_num_seqs": 8, "num_gpu_blocks": 60, **extra.get("server", {})},
        workload={"num_requests": 300, "priority_levels": 4},
        arrival={"strategy": "poisson", "rate_rps": 400.0},
    )
    fast = simulate(cfg)
    cls = {"priority": pol.PriorityScheduler, "sjf": pol.ShortestJobFirstScheduler}[policy]
    monkeypatch.setattr(cls, "order_waiting", _ReferenceAgedOrder.order_waiting)
    ref = simulate(cfg)
    assert fast.summary["num_preemptions"] > 0
    pd.testing.assert_frame_equal(fast.requests, ref.requests)
    pd.testing.assert_frame_equal(fast.steps, ref.steps)
