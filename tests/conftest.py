"""Shared test helpers: config builders, an instrumented run that checks laws every step,
and the location of the shared ground-truth data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

from sim.config import merge, parse_run_config
from sim.core.simulation import SimResult, Simulation
from sim.entities import Batch, StepCost

# Property tests explore new random examples on every developer run; CI (CI=true) replays a
# fixed, derandomised set so that a submission's result does not depend on luck.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI", "").lower() == "true":
    settings.load_profile("ci")

GROUND_TRUTH = Path(os.environ.get("SERVESIM_GROUND_TRUTH", Path(__file__).resolve().parents[1].parent / "shared" / "ground_truth"))


def make_config(**overrides):
    """A small, fast config (fixed 10 ms steps, 20 requests, Poisson 5 req/s, prefix caching
    off: the engine's fast paths — decode windows, deferred decodes — apply without it, and
    the tests written for them must keep exercising them) with overrides."""
    base = {
        "seed": 1,
        "server": {"enable_prefix_caching": False},
        "cost": {"model": "fixed", "fixed_step_s": 0.01},
        "workload": {
            "num_requests": 20,
            "prompt_tokens": {"dist": "normal", "mean": 300, "stdev": 150, "min": 2, "max": 1500},
            "output_tokens": {"dist": "normal", "mean": 40, "stdev": 20, "min": 1, "max": 200},
        },
        "arrival": {"strategy": "poisson", "rate_rps": 5.0},
    }
    return parse_run_config(merge(base, overrides))


class LawChecker:
    """Wraps a cost model; checks the per-step laws on every batch it prices."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.inner = sim.cost_model
        self.name = self.inner.name
        self.batches: list[Batch] = []
        self.max_reqs = 0

    def full_kv_scan(self) -> bool:
        """Whether this step runs the O(num_blocks) KV invariant scan (always, here)."""
        return True

    def price(self, batch: Batch) -> StepCost:
        s = self.sim
        lim = s.scheduler.limits
        assert len(batch) > 0
        assert batch.num_tokens <= lim.max_num_batched_tokens, "token budget exceeded"
        assert len(batch) <= lim.max_num_seqs, "seat limit exceeded"
        assert s.scheduler.num_running <= lim.max_num_seqs
        ids = [it.request_id for it in batch.items]
        assert len(set(ids)) == len(ids), "a request scheduled twice in one step"
        for it in batch.items:
            assert it.new_tokens >= 1
        if self.full_kv_scan():
            s.kv.check()
        assert s.kv.num_used_blocks <= s.kv.num_blocks
        # every running request holds enough blocks for what it has computed or will compute
        for req in s.scheduler.running:
            assert s.kv.blocks_of(req.request_id) * s.kv.block_size >= req.num_computed_tokens
        self.batches.append(batch)
        self.max_reqs = max(self.max_reqs, len(batch))
        return self.inner.price(batch)


def run_checked(cfg) -> tuple[SimResult, Simulation, LawChecker]:
    """Run ``cfg`` with the per-step law checks; returns the result, the simulation and checker."""
    sim = Simulation(cfg)
    checker = LawChecker(sim)
    sim.engine.cost_model = checker
    res = sim.run()
    return res, sim, checker


@pytest.fixture
def ground_truth() -> Path:
    if not GROUND_TRUTH.is_dir():
        pytest.skip(f"ground-truth data not found at {GROUND_TRUTH} (set SERVESIM_GROUND_TRUTH)")
    return GROUND_TRUTH
