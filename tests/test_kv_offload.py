"""CPU KV offloading (vLLM's --kv-offloading-size): block laws, identity when off, an analytic
load, fast-forward exactness, and the effect on TTFT under preemption."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import LawChecker, make_config, run_checked

from sim.cli.config_input import FLAG_PATHS
from sim.core.server import GIB, HOST_LINK_GBPS_PCIE_GEN5, kv_block_bytes_per_gpu
from sim.core.simulation import Simulation, simulate
from sim.entities import Request
from sim.errors import ConfigError
from sim.records.metrics import KV_OFFLOAD_COLUMN, KV_OFFLOAD_PREFIX
from sim.scheduler.kv import KVCacheManager

FIXED_STEP_S = 0.01
PROMPT = 320  # 20 full blocks of 16
BW_GBPS = 32.0


def _pool_config(num_gpu_blocks: int, offload_gib: float | None, **server):
    """Synchronous requests cycling through 3 pool prompts of 320 tokens, 2 output tokens each:
    request 3 repeats request 0's prompt after two others went through the cache."""
    return make_config(
        cost={"model": "fixed", "fixed_step_s": FIXED_STEP_S},
        server={"enable_prefix_caching": True, "num_gpu_blocks": num_gpu_blocks, "kv_offloading_size_gib": offload_gib, **server},
        workload={
            "num_requests": 4,
            "prompt_pool": 3,
            "prompt_tokens": {"dist": "fixed", "value": PROMPT},
            "output_tokens": {"dist": "fixed", "value": 2},
        },
        arrival={"strategy": "synchronous"},
    )


def _gib_for_blocks(cfg, blocks: int) -> float:
    model = Simulation(cfg).model
    return blocks * kv_block_bytes_per_gpu(model, cfg.tensor_parallel_size, cfg.server.block_size) / GIB


class ConservationChecker(LawChecker):
    """The per-step laws plus GPU used + free = total and the CPU tier within its capacity."""

    def price(self, batch):
        kv = self.sim.kv
        assert kv.num_used_blocks + kv.num_free_blocks == kv.num_blocks
        assert kv.num_cpu_cached_blocks <= kv.num_cpu_blocks
        return super().price(batch)


# ------------------------------------------------------------------------------ KV manager
def _pool_req(rid: int, prompt_id: int, prompt: int = 68) -> Request:
    return Request(request_id=rid, prompt_tokens=prompt, output_tokens=2, prompt_id=prompt_id)


def test_evicted_cached_blocks_move_to_the_cpu_tier_lru():
    kv = KVCacheManager(num_blocks=8, block_size=16, enable_prefix_caching=True, num_cpu_blocks=3)
    a = _pool_req(0, 0)  # 68 tokens: 4 full (hashed) blocks + 1
    assert kv.allocate_slots(a, 68)
    kv.free(a)
    assert kv.num_cpu_cached_blocks == 0  # freed blocks keep their hash on the GPU
    b = _pool_req(1, -1, prompt=128)
    assert kv.allocate_slots(b, 128)  # all 8 blocks: evicts a's 4 cached blocks, tail first
    assert kv.num_offload_stored_blocks == 4 and kv.num_cpu_cached_blocks == 3
    kv.check()
    # a's tail block went in first and was pushed out: the tier holds blocks 0..2
    again = _pool_req(2, 0)
    assert kv.get_computed_blocks(again) == []
    assert kv.get_offloaded_run(again, 0) == 3
    kv.free(b)
    assert kv.allocate_slots(again, 68 - 48, [], 3)
    assert kv.num_offload_loaded_blocks == 3
    assert kv.blocks_of(2) == 5  # 3 loaded + 2 computed
    kv.check()
    assert kv.num_used_blocks + kv.num_free_blocks == kv.num_blocks


def test_a_store_never_evicts_a_block_being_loaded():
    kv = KVCacheManager(num_blocks=6, block_size=16, enable_prefix_caching=True, num_cpu_blocks=2)
    a = _pool_req(0, 0, prompt=33)  # 2 full blocks + 1
    assert kv.allocate_slots(a, 33)
    kv.free(a)
    filler = _pool_req(1, 1, prompt=96)  # 6 full blocks: evicts a's two (stored)
    assert kv.allocate_slots(filler, 96)
    kv.free(filler)  # its 6 blocks cached on the GPU
    again = _pool_req(2, 0, prompt=33)
    assert kv.get_offloaded_run(again, 0) == 2
    # loading a's 2 blocks + 1 new evicts 3 of filler's: each store would push a loaded block out
    assert kv.allocate_slots(again, 1, [], 2)
    assert kv.num_cpu_cached_blocks == 2 and kv.get_offloaded_run(_pool_req(3, 0, prompt=33), 0) == 2
    assert kv.num_offload_dropped_blocks == 3
    kv.check()


def test_offloading_needs_prefix_caching():
    with pytest.raises(ValueError):
        KVCacheManager(num_blocks=8, block_size=16, num_cpu_blocks=4)
    with pytest.raises(ConfigError, match="enable_prefix_caching"):
        Simulation(make_config(server={"kv_offloading_size_gib": 1.0}))
    with pytest.raises(ConfigError, match="does not load"):
        Simulation(make_config(server={"kv_offloading_size_gib": 1.0, "enable_prefix_caching": True}, scheduler={"policy": "vllm-v0"}))
    with pytest.raises(ConfigError, match="holds no KV block"):
        Simulation(make_config(server={"kv_offloading_size_gib": 1e-6, "enable_prefix_caching": True}))


def test_cli_flag_and_sizing():
    assert FLAG_PATHS["kv_offloading_size"] == "server.kv_offloading_size_gib"
    cfg = make_config(tensor_parallel_size=2, server={"kv_offloading_size_gib": 4.0, "enable_prefix_caching": True})
    sim = Simulation(cfg)
    block_bytes = kv_block_bytes_per_gpu(sim.model, 2, cfg.server.block_size)
    assert sim.kv.num_cpu_blocks == int(4.0 * GIB / 2 // block_bytes)  # vLLM: the size is summed over TP ranks
    assert sim.server.kv_load_s_per_block == block_bytes / (HOST_LINK_GBPS_PCIE_GEN5 * 1e9)  # H100: PCIe Gen5


# ------------------------------------------------------------------------------ laws
def test_block_conservation_under_preemption():
    cfg = _preemption_config(4.0)
    sim = Simulation(cfg)
    checker = ConservationChecker(sim)
    sim.engine.cost_model = checker
    res = sim.run()
    assert res.summary["num_preemptions"] > 0 and res.summary[KV_OFFLOAD_PREFIX + "loaded_blocks"] > 0
    assert sim.kv.num_used_blocks == 0 and sim.kv.num_cpu_cached_blocks <= sim.kv.num_cpu_blocks
    sim.kv.check()
    assert int(res.requests[KV_OFFLOAD_COLUMN].sum()) == res.summary[KV_OFFLOAD_PREFIX + "loaded_tokens"]


def test_off_is_byte_identical_to_no_field():
    over = {"server": {"enable_prefix_caching": True, "num_gpu_blocks": 150}, "workload": {"prefix_tokens": 64, "prefix_groups": 2}}
    base = simulate(make_config(**over))
    over["server"] = {**over["server"], "kv_offloading_size_gib": None, "kv_offloading_bw_gbps": 10.0}
    off = simulate(make_config(**over))
    assert base.requests.to_csv(index=False) == off.requests.to_csv(index=False)
    assert base.steps.to_csv(index=False) == off.steps.to_csv(index=False)
    assert str(base.summary) == str(off.summary)
    assert KV_OFFLOAD_COLUMN not in off.requests.columns
    assert not any(k.startswith(KV_OFFLOAD_PREFIX) for k in off.summary)


def test_a_tier_that_is_never_hit_changes_nothing_but_the_column():
    """A GPU cache that never evicts: offloading on = off, apart from its column and keys."""
    cfg_off = _pool_config(400, None)
    off = simulate(cfg_off)
    on = simulate(_pool_config(400, 1.0))
    assert on.summary[KV_OFFLOAD_PREFIX + "stored_blocks"] == 0
    assert (on.requests[KV_OFFLOAD_COLUMN] == 0).all()
    assert on.requests.drop(columns=[KV_OFFLOAD_COLUMN]).to_csv(index=False) == off.requests.to_csv(index=False)
    assert on.steps.to_csv(index=False) == off.steps.to_csv(index=False)


# ------------------------------------------------------------------------------ analytic
def test_evicted_prefix_is_loaded_at_link_speed():
    """25 GPU blocks: requests 1 and 2 (other prompts, 21 blocks each) evict all of request 0's
    prompt; request 3 repeats it. With the CPU tier its 19 hittable blocks (the last prompt token
    is always computed) are loaded, and its single prefill step lasts one fixed step plus the
    transfer; without the tier it recomputes; with a GPU big enough it is a pure prefix hit."""
    hittable = (PROMPT - 1) // 16 * 16  # 304 tokens, 19 blocks
    pure = run_checked(_pool_config(400, None))[0]
    recompute = run_checked(_pool_config(25, None))[0]
    gib = _gib_for_blocks(_pool_config(25, None), 64)
    loaded, sim, _ = run_checked(_pool_config(25, gib, kv_offloading_bw_gbps=BW_GBPS))

    def first_step_s(res) -> float:
        req = res.requests.set_index("request_id").loc[3]
        step = res.steps[res.steps["start_s"] == req["first_scheduled_s"]]
        assert len(step) == 1
        return float(step["duration_s"].iloc[0])

    pure_req = pure.requests.set_index("request_id").loc[3]
    assert pure_req["cached_prompt_tokens"] == hittable
    assert recompute.requests.set_index("request_id").loc[3, "cached_prompt_tokens"] == 0
    req = loaded.requests.set_index("request_id").loc[3]
    assert req["cached_prompt_tokens"] == hittable
    assert req[KV_OFFLOAD_COLUMN] == hittable
    assert sim.kv.num_cpu_blocks == 64
    block_bytes = kv_block_bytes_per_gpu(sim.model, 1, 16)
    transfer_s = 19 * block_bytes / (BW_GBPS * 1e9)
    assert first_step_s(pure) == FIXED_STEP_S
    assert first_step_s(recompute) == FIXED_STEP_S  # the fixed model prices recompute like a hit
    assert first_step_s(loaded) == pytest.approx(FIXED_STEP_S + transfer_s, rel=0, abs=1e-15)
    assert req["ttft_s"] - pure_req["ttft_s"] == pytest.approx(transfer_s, abs=1e-12)
    assert loaded.summary[KV_OFFLOAD_PREFIX + "loaded_tokens"] == hittable
    assert loaded.summary[KV_OFFLOAD_PREFIX + "load_s"] == pytest.approx(transfer_s, abs=1e-15)
    # requests 1 and 2 each evicted cached blocks of the prompts before them
    assert loaded.summary[KV_OFFLOAD_PREFIX + "stored_blocks"] >= 20


# ------------------------------------------------------------------------------ engine
def _preemption_config(offload_gib: float | None, **over):
    return make_config(
        cost={"model": over.pop("cost_model", "linear")},
        server={"enable_prefix_caching": True, "num_gpu_blocks": 300, "kv_offloading_size_gib": offload_gib},
        workload={
            "num_requests": 60,
            "prefix_tokens": 512,
            "prefix_groups": 4,
            "prompt_tokens": {"dist": "normal", "mean": 700, "stdev": 100, "min": 600, "max": 3000},
            "output_tokens": {"dist": "normal", "mean": 400, "stdev": 50, "min": 10, "max": 1000},
        },
        arrival={"strategy": "poisson", "rate_rps": 20.0},
        **over,
    )


@pytest.mark.parametrize("cost", ["fixed", "linear"])
def test_fast_forward_is_exact_with_offloading(cost):
    """Loads need a waiting request, which ends a decode window; the evictions a window's
    allocations cause store to the tier in step-loop order."""
    cfg = _preemption_config(0.5, cost_model=cost)
    on_sim = Simulation(cfg, fast_forward=True)
    on = on_sim.run()
    off = Simulation(cfg, fast_forward=False).run()
    assert on_sim.engine.fast_forward
    assert on.summary[KV_OFFLOAD_PREFIX + "loaded_blocks"] > 0 and on.summary[KV_OFFLOAD_PREFIX + "dropped_blocks"] > 0
    assert on.requests.to_csv(index=False) == off.requests.to_csv(index=False)
    assert on.steps.to_csv(index=False) == off.steps.to_csv(index=False)
    assert np.array_equal(on.itls_s, off.itls_s)
    assert str(on.summary) == str(off.summary)


def test_offloading_lowers_ttft_under_preemption():
    """Shared prefixes, a small GPU cache and heavy preemption: preempted requests and later
    members of a prefix group load their evicted blocks instead of recomputing them."""
    none = simulate(_preemption_config(None))
    tier = simulate(_preemption_config(4.0))
    assert none.summary["num_preemptions"] >= 10
    preempted = tier.requests[tier.requests["num_preemptions"] > 0]
    assert (preempted[KV_OFFLOAD_COLUMN] > 0).any()  # came back at link speed
    assert tier.summary["ttft_mean_ms"] < none.summary["ttft_mean_ms"]
    assert tier.summary["e2e_mean_ms"] < none.summary["e2e_mean_ms"]


def test_streamed_and_fleet_runs_keep_the_common_columns():
    cfg = _preemption_config(1.0)
    frames = []
    streamed = Simulation(cfg, spill=lambda kind, frame: frames.append((kind, frame)), chunk_rows=16).run()
    memory = simulate(cfg)
    assert all(KV_OFFLOAD_COLUMN not in f.columns for kind, f in frames if kind == "requests")
    assert streamed.summary[KV_OFFLOAD_PREFIX + "loaded_blocks"] == memory.summary[KV_OFFLOAD_PREFIX + "loaded_blocks"] > 0
    fleet = simulate(make_config(**{**_preemption_config(1.0).model_dump(exclude_unset=True), "cluster": {"groups": [{"replicas": 2}]}}))
    assert KV_OFFLOAD_COLUMN not in fleet.requests.columns and fleet.summary["num_finished"] > 0
