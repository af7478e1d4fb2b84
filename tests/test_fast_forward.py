"""The engine's decode fast-forward changes nothing: byte-identical records with it on and off."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_config
from sim.simulation import Simulation

CASES = [
    {"arrival": {"strategy": "synchronous"}},
    {"arrival": {"strategy": "poisson", "rate_rps": 10.0}},
    {"arrival": {"strategy": "throughput"}, "server": {"num_gpu_blocks": 150}},  # preemption
    {"arrival": {"strategy": "concurrent", "concurrency": 4}, "workload": {"prefix_tokens": 64, "prefix_groups": 2},
     "server": {"enable_prefix_caching": True, "num_gpu_blocks": 300}},
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
