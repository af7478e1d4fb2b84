"""The engine's decode fast-forward changes nothing: byte-identical records with it on and off."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import make_config

from sim.config import parse_run_config
from sim.core.simulation import Simulation

CASES = [
    {"arrival": {"strategy": "synchronous"}},
    {"arrival": {"strategy": "poisson", "rate_rps": 10.0}},
    {"arrival": {"strategy": "throughput"}, "server": {"num_gpu_blocks": 150}},  # preemption
    {
        "arrival": {"strategy": "concurrent", "concurrency": 4},
        "workload": {"prefix_tokens": 64, "prefix_groups": 2},
        "server": {"enable_prefix_caching": True, "num_gpu_blocks": 300},
    },
    {"arrival": {"strategy": "constant", "rate_rps": 4.0}, "horizon_s": 3.0},
    {"arrival": {"strategy": "poisson", "rate_rps": 30.0}, "scheduler": {"policy": "priority"}, "workload": {"priority_levels": 3}},
]


def _run(cfg, ff):
    sim = Simulation(cfg, fast_forward=ff)
    res = sim.run()
    return res, sim


@pytest.mark.parametrize("cost", ["fixed", "linear", "roofline"])
@pytest.mark.parametrize("case", CASES, ids=range(len(CASES)))
def test_fast_forward_is_exact(case, cost):
    over = dict(case)
    over["cost"] = {"model": cost}
    over.setdefault("workload", {})
    over["workload"] = {**over["workload"], "num_requests": 40}
    cfg = make_config(**over)
    on, sim_on = _run(cfg, True)
    off, _ = _run(cfg, False)
    assert on.requests.to_csv(index=False) == off.requests.to_csv(index=False)
    assert on.steps.to_csv(index=False) == off.steps.to_csv(index=False)
    assert np.array_equal(on.itls_s, off.itls_s)
    assert on.summary == off.summary or str(on.summary) == str(off.summary)
    assert sim_on.engine.fast_forward


def test_fast_forward_actually_skips_work():
    """On a synchronous run most steps are applied in windows, without planning each one."""
    cfg = make_config(arrival={"strategy": "synchronous"}, workload={"num_requests": 5, "output_tokens": {"dist": "fixed", "value": 200}})
    sim = Simulation(cfg)
    planned = []
    orig = sim.scheduler.schedule

    def counting_schedule(now_s):
        planned.append(now_s)
        return orig(now_s)

    sim.scheduler.schedule = counting_schedule
    res = sim.run()
    assert res.summary["num_steps"] == 5 * 200
    assert len(planned) < res.summary["num_steps"] / 10


@pytest.mark.parametrize("arrival", [{"strategy": "synchronous"}, {"strategy": "concurrent", "concurrency": 3}])
def test_long_windows_stored_column_wise_are_exact(arrival):
    """Windows of many steps are kept as column chunks: same table, same dtypes, with the
    records in memory and streamed in small chunks."""
    cfg = make_config(arrival=arrival, cost={"model": "roofline"}, workload={"num_requests": 6, "output_tokens": {"dist": "fixed", "value": 300}})
    on, _ = _run(cfg, True)
    off, _ = _run(cfg, False)
    assert on.steps.to_csv(index=False) == off.steps.to_csv(index=False)
    assert list(on.steps.dtypes) == list(off.steps.dtypes)
    assert on.summary["mean_batch_tokens"] == off.summary["mean_batch_tokens"]
    windows = []
    streamed: list = []
    sim = Simulation(cfg, spill=lambda name, frame: streamed.append((name, frame)), chunk_rows=100)
    sink = sim.sink

    def spy(first, start_s, duration_s, *rest):
        windows.append(len(duration_s))
        return type(sink).on_decode_window(sink, first, start_s, duration_s, *rest)

    sink.on_decode_window = spy
    res = sim.run()
    assert max(windows) >= sink.MIN_COLUMN_WINDOW  # the column path ran
    steps = pd.concat([f for name, f in streamed if name == "steps"], ignore_index=True)
    assert steps.to_csv(index=False) == off.steps.to_csv(index=False)
    assert all(len(f) < 100 + max(windows) for name, f in streamed if name == "steps")  # bounded chunks
    assert res.summary["num_steps"] == off.summary["num_steps"]


@pytest.mark.parametrize("cost", ["linear", "roofline"])
def test_windows_run_through_finishes(cost):
    """Open-loop requests finish inside windows (the batch shrinks there): still the same
    records as the step loop, and it does happen."""
    cfg = make_config(
        arrival={"strategy": "constant", "rate_rps": 3.0},
        cost={"model": cost},
        workload={"num_requests": 40, "output_tokens": {"dist": "normal", "mean": 120, "stdev": 60, "min": 2, "max": 400}},
    )
    sim = Simulation(cfg)
    engine = sim.engine
    finished_inside: list[int] = []
    orig = engine._fast_forward

    def spy(times, costs, decodes, computed, held, left):
        finished_inside.append(int((left <= len(costs)).sum()))
        return orig(times, costs, decodes, computed, held, left)

    engine._fast_forward = spy
    on = sim.run()
    off = Simulation(cfg, fast_forward=False).run()
    assert sum(finished_inside) >= 5
    assert on.requests.to_csv(index=False) == off.requests.to_csv(index=False)
    assert on.steps.to_csv(index=False) == off.steps.to_csv(index=False)
    assert np.array_equal(on.itls_s, off.itls_s)
    assert str(on.summary) == str(off.summary)


def test_preemption_right_after_a_window_frees_the_blocks_it_filled_as_cached():
    """Regression (found by the hypothesis property test): with prefix caching the step loop
    hashes a decode's block on the step that fills it; a window that ended after a block
    filled but before the request's next block left that block unhashed, so a preemption
    just after freed it uncached and the re-prefill hit fewer blocks than without
    fast-forward. Two seats, 15 blocks, a 16-token budget: requests preempt each other."""
    from sim.config import parse_run_config

    cfg = parse_run_config(
        {
            "seed": 0,
            "server": {
                "block_size": 16,
                "max_num_seqs": 2,
                "max_num_batched_tokens": 16,
                "enable_chunked_prefill": True,
                "enable_prefix_caching": True,
                "long_prefill_token_threshold": 0,
                "num_gpu_blocks": 15,
            },
            "scheduler": {"policy": "priority", "starvation_age_s": 0.001},
            "cost": {"model": "linear", "linear_base_s": 0.015625, "linear_per_prefill_token_s": 0.0, "linear_per_decode_token_s": 0.0},
            "workload": {"num_requests": 5, "prompt_tokens": {"dist": "fixed", "value": 95}, "output_tokens": {"dist": "uniform", "min": 1, "max": 47}},
            "arrival": {"strategy": "constant", "rate_rps": 5.0},
        }
    )
    on, sim_on = _run(cfg, True)
    off, _ = _run(cfg, False)
    assert on.steps["num_preempted"].sum() > 0  # the case needs a preemption
    assert on.steps.to_csv(index=False) == off.steps.to_csv(index=False)
    assert on.requests.to_csv(index=False) == off.requests.to_csv(index=False)


def test_fast_forward_follows_the_declared_scheduler_capabilities():
    """The engine reads what a scheduler declares (SchedulerCapabilities), never its class:
    vLLM V1 declares plain decodes; a policy with its own chunking (sarathi) does not; a
    scheduler that declares nothing gets the plain step loop."""
    from sim.core.engine import Engine
    from sim.core.simulation import Simulation
    from sim.scheduler.base import NO_CAPABILITIES

    v1 = Simulation(parse_run_config({"workload": {"num_requests": 4}}))
    assert v1.scheduler.capabilities.plain_decodes and v1.engine.fast_forward
    sarathi = Simulation(parse_run_config({"workload": {"num_requests": 4}, "scheduler": {"policy": "sarathi"}}))
    assert not sarathi.scheduler.capabilities.plain_decodes and not sarathi.engine.fast_forward

    class Undeclared:  # the base contract only
        def __init__(self, inner):
            self._inner = inner

        def __getattr__(self, name):
            if name == "capabilities":
                raise AttributeError(name)
            return getattr(self._inner, name)

    bare = Simulation(parse_run_config({"workload": {"num_requests": 4}}))
    engine = Engine(bare.env, Undeclared(bare.scheduler), bare.cost_model, bare.sink, max_model_len=4096, kv_capacity_tokens=1 << 20)
    assert not engine.fast_forward and not engine.deferred
    assert NO_CAPABILITIES.plain_decodes is False and NO_CAPABILITIES.deferred_decodes is False


@pytest.mark.parametrize("cpu_gib", [None, 0.05])
def test_deferred_decodes_with_prefix_caching_leave_the_same_cache(cpu_gib):
    """GIVEN an overloaded server with prefix caching (shared prefixes, pool prompts sent
    again, KV short enough to preempt, optionally a CPU offloading tier) WHEN simulated with
    deferred decodes and fast-forward on and off THEN the tables are byte-identical and the KV
    cache ends in the same state: the same block hashes, the same cached set and the same free
    queue order (deferred requests hash the block their token fills on the step it fills)."""
    cfg = make_config(
        arrival={"strategy": "poisson", "rate_rps": 60.0},
        workload={"num_requests": 160, "prefix_tokens": 48, "prefix_groups": 3, "prompt_pool": 20},
        server={"enable_prefix_caching": True, "num_gpu_blocks": 260, "max_num_seqs": 32, "kv_offloading_size_gib": cpu_gib},
        cost={"model": "roofline"},
    )
    on, sim_on = _run(cfg, True)
    off, sim_off = _run(cfg, False)
    assert sim_on.scheduler._deferred and not sim_off.scheduler._deferred
    # and step by step: deferred decodes without windows plan every step, so the cache can be
    # compared after each plan (hashes are set when a step is planned)
    snaps = []
    for deferred in (True, False):
        sim = Simulation(cfg, fast_forward=deferred)
        sim.engine.MIN_WINDOW_STEPS = 10**9  # no window: every step planned
        kv, orig, seen = sim.scheduler.kv, sim.scheduler.schedule, []

        def planned(now_s, orig=orig, kv=kv, seen=seen):
            out = orig(now_s)
            seen.append((list(kv._hash), dict(kv._cached), len(kv._free)))
            return out

        sim.scheduler.schedule = planned
        sim.run()
        snaps.append(seen)
    assert len(snaps[0]) == len(snaps[1]) == on.summary["num_steps"]
    assert snaps[0] == snaps[1], "the cache differs after some step"
    assert on.steps["num_preempted"].sum() > 0, "the case needs preemptions"
    assert on.requests["cached_prompt_tokens"].sum() > 0, "the case needs prefix-cache hits"
    assert on.requests.to_csv(index=False) == off.requests.to_csv(index=False)
    assert on.steps.to_csv(index=False) == off.steps.to_csv(index=False)
    assert np.array_equal(on.itls_s, off.itls_s)
    kv_on, kv_off = sim_on.scheduler.kv, sim_off.scheduler.kv
    assert kv_on._hash == kv_off._hash
    assert kv_on._cached == kv_off._cached
    assert list(kv_on._free) == list(kv_off._free)
    assert list(kv_on._cpu) == list(kv_off._cpu)
    kv_on.check()
