"""KV block manager, prefix caching, workloads, traces, arrivals, RNG streams and config errors."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_config, run_checked
from sim.config import parse_run_config
from sim.entities import Request
from sim.errors import ConfigError
from sim.rng import RandomStreams, fnv1a64
from sim.scheduler.kv import KVCacheManager
from sim.simulation import simulate
from sim.workload import build_workload, load_trace


def _req(rid, prompt, group=-1, prefix=0):
    return Request(request_id=rid, prompt_tokens=prompt, output_tokens=5, prefix_group=group, prefix_tokens=prefix)


def test_kv_allocation_is_transactional_and_counts_blocks():
    kv = KVCacheManager(num_blocks=10, block_size=16)
    a = _req(0, 100)
    assert kv.allocate_slots(a, 100)  # 7 blocks
    assert kv.num_used_blocks == 7
    b = _req(1, 100)
    assert not kv.allocate_slots(b, 100)  # needs 7, only 3 free
    assert kv.num_used_blocks == 7 and kv.blocks_of(1) == 0
    a.num_computed_tokens = 100
    assert kv.allocate_slots(a, 12)  # 112 tokens still fit in 7 blocks
    assert kv.num_used_blocks == 7
    assert kv.allocate_slots(a, 13)  # 113 tokens -> 8 blocks
    assert kv.num_used_blocks == 8
    kv.free(a)
    assert kv.num_used_blocks == 0
    kv.check()


def test_prefix_cache_hits_only_full_shared_blocks_and_survives_free():
    kv = KVCacheManager(num_blocks=20, block_size=16, enable_prefix_caching=True)
    a = _req(0, 100, group=0, prefix=40)  # blocks 0,1 fully inside the 40-token prefix
    assert kv.get_computed_blocks(a) == []
    assert kv.allocate_slots(a, 100)
    kv.free(a)  # blocks stay cached while free
    b = _req(1, 90, group=0, prefix=40)
    hits = kv.get_computed_blocks(b)
    assert len(hits) == 2
    c = _req(2, 90, group=1, prefix=40)
    assert kv.get_computed_blocks(c) == []
    assert kv.allocate_slots(b, 90 - 32, hits)
    assert kv.blocks_of(1) == 6  # ceil(90/16)
    kv.check()


def test_prefix_cache_never_hits_the_whole_prompt():
    kv = KVCacheManager(num_blocks=20, block_size=16, enable_prefix_caching=True)
    a = _req(0, 64, group=0, prefix=64)
    assert kv.allocate_slots(a, 64)
    b = _req(1, 64, group=0, prefix=64)
    assert len(kv.get_computed_blocks(b)) == 3  # (64 - 1) // 16: the last token is computed


def test_prefix_caching_lowers_ttft_of_later_requests():
    """GIVEN a long shared prefix and caching THEN later requests hit the cache and their TTFT
    drops compared with the same run without caching (linear cost: fewer prefill tokens)."""
    over = dict(
        cost={"model": "linear"},
        workload={"num_requests": 30, "prefix_tokens": 1024, "prompt_tokens": {"dist": "fixed", "value": 100}},
        arrival={"strategy": "synchronous"},
    )
    on = simulate(make_config(server={"enable_prefix_caching": True}, **over))
    off = simulate(make_config(server={"enable_prefix_caching": False}, **over))
    assert (on.requests["cached_prompt_tokens"].iloc[1:] == 1024).all()
    assert (off.requests["cached_prompt_tokens"] == 0).all()
    assert on.summary["ttft_mean_ms"] < 0.5 * off.summary["ttft_mean_ms"]


def test_clipped_normal_lengths_respect_bounds():
    cfg = make_config(workload={"num_requests": 500, "prompt_tokens": {"dist": "normal", "mean": 100, "stdev": 200, "min": 10, "max": 150}})
    w = build_workload(cfg.workload, RandomStreams(3))
    p = np.array([r.prompt_tokens for r in w.requests])
    assert p.min() >= 10 and p.max() <= 150 and (p == 10).any() and (p == 150).any()


def test_rng_streams_are_named_and_independent():
    a, b = RandomStreams(5), RandomStreams(5)
    x = a.get("x").random(3)
    a.get("y").random(100)  # drawing from another stream does not disturb x's
    assert np.array_equal(x, b.get("x").random(3))
    assert not np.array_equal(RandomStreams(5).get("x").random(3), RandomStreams(6).get("x").random(3))
    assert fnv1a64("") == 0xCBF29CE484222325
    assert fnv1a64("a") == 0xAF63DC4C8601EC8C  # published FNV-1a test vector


def test_trace_replay_sends_at_offsets(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text(
        "benchmark_index,start_offset_s,prompt_tokens,output_tokens,ok\n"
        "0,10.5,100,3,1\n0,10.0,50,2,1\n0,11.0,70,2,0\n1,0.0,10,2,1\n"
    )
    df = load_trace(p, benchmark_index=0)
    assert df["prompt_tokens"].tolist() == [50, 100]
    cfg = make_config(workload={"trace": {"path": str(p), "benchmark_index": 0}}, arrival={"strategy": "replay"})
    res = simulate(cfg)
    assert res.requests["arrival_s"].tolist() == pytest.approx([0.0, 0.5])
    assert res.requests["prompt_tokens"].tolist() == [50, 100]


@pytest.mark.parametrize(
    "content,match",
    [
        ("start_offset_s,prompt_tokens\n0,10\n", "lacks column"),
        ("start_offset_s,prompt_tokens,output_tokens\n0,10,-1\n", "integers >= 1"),
        ("start_offset_s,prompt_tokens,output_tokens\n0,abc,3\n", "integers >= 1"),
        ("start_offset_s,prompt_tokens,output_tokens\n-1,10,3\n", "start_offset_s"),
        ("", "cannot read"),
    ],
)
def test_bad_trace_gives_clear_error(tmp_path, content, match):
    p = tmp_path / "bad.csv"
    p.write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_trace(p)


def test_missing_trace_file():
    with pytest.raises(ConfigError, match="file not found"):
        load_trace("/nonexistent/trace.csv")


def test_replay_without_offsets_is_an_error(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("prompt_tokens,output_tokens\n10,2\n")
    with pytest.raises(ConfigError, match="replay"):
        simulate(make_config(workload={"trace": {"path": str(p)}}, arrival={"strategy": "replay"}))


@pytest.mark.parametrize(
    "data,match",
    [
        ({"sever": {}}, "sever: unknown key"),
        ({"server": {"max_num_seq": 3}}, "server.max_num_seq: unknown key"),
        ({"arrival": {"strategy": "poisson", "rate_rps": -1}}, "arrival.rate_rps"),
        ({"arrival": {"strategy": "poisson"}}, "needs rate_rps"),
        ({"arrival": {"strategy": "warp"}}, "arrival.strategy"),
        ({"server": {"gpu_memory_utilization": 1.5}}, "gpu_memory_utilization"),
        ({"cost": {"fixed_step_s": float("nan")}}, "fixed_step_s"),
        ({"workload": {"prompt_tokens": {"dist": "normal", "mean": 10, "min": 50, "max": 5}}}, "min"),
        ({"tensor_parallel_size": 0}, "tensor_parallel_size"),
        ({"seed": "abc"}, "seed"),
    ],
)
def test_bad_config_names_the_field(data, match):
    with pytest.raises(ConfigError, match=match):
        parse_run_config(data)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ConfigError, match="scheduler.policy: unknown scheduler policy 'nope'; choose one of: .*vllm-v1"):
        simulate(make_config(scheduler={"policy": "nope"}))
    with pytest.raises(ConfigError, match="cost.model: unknown cost model"):
        simulate(make_config(cost={"model": "nope"}))


def test_tp_must_divide_heads():
    with pytest.raises(ConfigError, match="tensor_parallel_size: 3 does not divide"):
        simulate(make_config(tensor_parallel_size=3))


def test_budget_smaller_than_a_block_is_rejected():
    with pytest.raises(ConfigError, match="smaller than one KV block"):
        simulate(make_config(server={"max_num_batched_tokens": 8}))


def test_no_chunked_prefill_never_chunks():
    """Without chunked prefill (budget >= max_model_len, as vLLM requires) prompts are prefilled
    whole; requests longer than max_model_len are rejected."""
    cfg = make_config(
        server={"enable_chunked_prefill": False, "max_num_batched_tokens": 400, "max_model_len": 400},
        arrival={"strategy": "throughput"},
    )
    res, _, chk = run_checked(cfg)
    df = res.requests
    too_long = df["prompt_tokens"] + df["output_tokens"] > 400
    assert too_long.any()
    assert (df.loc[too_long, "status"] == "rejected").all()
    assert (df.loc[~too_long, "status"] == "finished").all()
    # every prompt is prefilled in one piece
    for b in chk.batches:
        for it in b.items:
            if not it.is_decode:
                assert it.context_tokens == 0
