"""KV block manager, prefix caching, workloads, traces, arrivals, RNG streams and config errors."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_config, run_checked

from sim.config import parse_run_config
from sim.core.simulation import simulate
from sim.entities import Request
from sim.errors import ConfigError
from sim.load.workload import build_workload, load_trace
from sim.rng import RandomStreams, fnv1a64
from sim.scheduler.kv import KVCacheManager


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
    p.write_text("benchmark_index,start_offset_s,prompt_tokens,output_tokens,ok\n0,10.5,100,3,1\n0,10.0,50,2,1\n0,11.0,70,2,0\n1,0.0,10,2,1\n")
    df = load_trace(p, benchmark_index=0)
    assert df["prompt_tokens"].tolist() == [50, 100]
    cfg = make_config(workload={"trace": {"path": str(p), "benchmark_index": 0}}, arrival={"strategy": "replay"})
    res = simulate(cfg)
    assert res.requests["arrival_s"].tolist() == pytest.approx([0.0, 0.5])
    assert res.requests["prompt_tokens"].tolist() == [50, 100]


# ------------------------------------------------------------------ prompt pool (inference-perf)


def test_pool_prompt_blocks_are_shared_only_with_the_same_prompt():
    kv = KVCacheManager(num_blocks=40, block_size=16, enable_prefix_caching=True)
    a = Request(request_id=0, prompt_tokens=100, output_tokens=5, prefix_group=0, prefix_tokens=40, prompt_id=3)
    assert kv.allocate_slots(a, 100)
    a.num_computed_tokens = 100
    kv.free(a)
    same = Request(request_id=1, prompt_tokens=100, output_tokens=5, prefix_group=0, prefix_tokens=40, prompt_id=3)
    assert len(kv.get_computed_blocks(same)) == 99 // 16  # every full block but the one with the last token
    other = Request(request_id=2, prompt_tokens=100, output_tokens=5, prefix_group=0, prefix_tokens=40, prompt_id=4)
    assert len(kv.get_computed_blocks(other)) == 2  # the group's prefix only
    unique = _req(3, 100, group=0, prefix=40)
    assert len(kv.get_computed_blocks(unique)) == 2
    kv.check()


def test_prewarm_caches_the_prompt_unowned_and_uncounted():
    kv = KVCacheManager(num_blocks=20, block_size=16, enable_prefix_caching=True)
    r = Request(request_id=7, prompt_tokens=70, output_tokens=5, prompt_id=0)
    assert kv.prewarm(r) == 64  # the four full blocks
    assert kv.num_used_blocks == 0 and kv.num_cache_hit_tokens == 0 and kv.num_cache_query_tokens == 0
    assert kv.prewarm(r) == 64 and kv.num_used_blocks == 0  # idempotent
    again = Request(request_id=8, prompt_tokens=70, output_tokens=5, prompt_id=0)
    assert len(kv.get_computed_blocks(again)) == 4
    kv.check()
    off = KVCacheManager(num_blocks=20, block_size=16, enable_prefix_caching=False)
    assert off.prewarm(r) == 0
    tiny = KVCacheManager(num_blocks=2, block_size=16, enable_prefix_caching=True)
    assert tiny.prewarm(r) == 0 and tiny.num_used_blocks == 0  # does not fit: nothing cached, nothing held


def test_synthetic_pool_cycles_prompts_with_fixed_lengths_and_groups():
    cfg = make_config(workload={"num_requests": 200, "prompt_pool": 12, "prefix_tokens": 32, "prefix_groups": 4})
    wl = build_workload(cfg.workload, RandomStreams(cfg.seed))
    assert wl.prompt_ids.tolist() == [i % 12 for i in range(200)]
    for q in range(12):
        m = wl.prompt_ids == q
        assert len(set(wl.prompt_tokens[m])) == 1 and len(set(wl.output_tokens[m])) == 1
        assert len(set(wl.prefix_groups[m])) == 1
    per_group = np.bincount(wl.prefix_groups[:12], minlength=4)
    assert per_group.tolist() == [3, 3, 3, 3]  # dealt out evenly
    assert len(set(wl.prompt_tokens[:12])) > 1  # lengths still drawn from the distribution
    plain = build_workload(make_config().workload, RandomStreams(1))
    assert plain.prompt_ids is None and plain.make_request(0).prompt_id == -1


def test_trace_pool_ids_follow_request_index(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("request_index,start_offset_s,prompt_tokens,output_tokens\n" + "".join(f"{100 + i},{i / 10},50,3\n" for i in range(8)))
    cfg = make_config(workload={"trace": {"path": str(p)}, "prompt_pool": 3}, arrival={"strategy": "replay"})
    wl = build_workload(cfg.workload, RandomStreams(1))
    assert wl.prompt_ids.tolist() == [(100 + i) % 3 for i in range(8)]
    q = tmp_path / "q.csv"
    q.write_text("start_offset_s,prompt_tokens,output_tokens\n" + "".join(f"{i / 10},50,3\n" for i in range(5)))
    wl2 = build_workload(make_config(workload={"trace": {"path": str(q)}, "prompt_pool": 2}).workload, RandomStreams(1))
    assert wl2.prompt_ids.tolist() == [0, 1, 0, 1, 0]  # no request_index: row order
    bad = tmp_path / "b.csv"
    bad.write_text("request_index,start_offset_s,prompt_tokens,output_tokens\n-1,0,50,3\n")
    with pytest.raises(ConfigError, match="request_index"):
        build_workload(make_config(workload={"trace": {"path": str(bad)}, "prompt_pool": 2}).workload, RandomStreams(1))


def test_repeated_prompts_hit_the_cache_after_one_cycle_or_at_once_when_warm():
    """GIVEN a synchronous run over a pool of 5 prompts WHEN cold THEN each prompt's first
    request computes it all and every repeat hits all its full blocks but the last token's;
    WHEN warm THEN the first requests hit as well and TTFT drops."""
    over = dict(
        cost={"model": "linear"},
        server={"enable_prefix_caching": True},
        workload={"num_requests": 15, "prompt_pool": 5, "prompt_tokens": {"dist": "uniform", "min": 200, "max": 400}},
        arrival={"strategy": "synchronous"},
    )
    cold = simulate(make_config(**over)).requests.sort_values("request_id")
    warm = simulate(make_config(**{**over, "workload": {**over["workload"], "prompt_pool_warm": True}})).requests.sort_values("request_id")
    full_hit = ((cold["prompt_tokens"] - 1) // 16) * 16
    assert (cold["cached_prompt_tokens"].iloc[:5] == 0).all()
    assert (cold["cached_prompt_tokens"].iloc[5:] == full_hit.iloc[5:]).all()
    assert (warm["cached_prompt_tokens"] == full_hit).all()
    assert warm["ttft_s"].iloc[:5].mean() < 0.5 * cold["ttft_s"].iloc[:5].mean()
    assert warm["ttft_s"].iloc[5:].tolist() == pytest.approx(cold["ttft_s"].iloc[5:].tolist())


@pytest.mark.parametrize(
    "content,match",
    [
        ("start_offset_s,prompt_tokens\n0,10\n", "lacks column"),
        ("start_offset_s,prompt_tokens,output_tokens\n0,10,-1\n", "integers >= 1"),
        ("start_offset_s,prompt_tokens,output_tokens\n0,abc,3\n", "integers >= 1"),
        ("start_offset_s,prompt_tokens,output_tokens\n-1,10,3\n", "start_offset_s"),
        ("", "is empty"),
        # read strictly: a row is never shifted, a word never becomes a number, a column never doubles
        ("prompt_tokens,output_tokens\n10,20,30\n11,21\n", "line 2 has 3 fields, the header has 2"),
        ("prompt_tokens,output_tokens\n11,21\n10,20,30\n", "line 3 has 3 fields"),
        ("prompt_tokens,output_tokens\ntrue,20\n", "column prompt_tokens must hold integers"),
        ("prompt_tokens,output_tokens,prompt_tokens\n10,20,30\n", "'prompt_tokens' appears twice"),
        ("prompt_tokens,output_tokens,ok\n10,20,yes\n", "column ok must hold integers"),
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
        ({"workload": {"prompt_pool": 0}}, "workload.prompt_pool"),
        ({"workload": {"prompt_pool_warm": True}}, "prompt_pool_warm needs prompt_pool"),
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


def test_trace_keeps_other_columns_numeric(tmp_path):
    from sim.load.workload import load_trace

    f = tmp_path / "t.csv"
    f.write_text("prompt_tokens,output_tokens,start_offset_s,ttft_ms,ok\n10,20,0.5,12.5,1\n11,21,0.1,3,1\n12,22,0.2,4,0\n")
    df = load_trace(f)
    assert df["prompt_tokens"].tolist() == [11, 10] and df["ttft_ms"].dtype.kind == "f"


def test_block_keys_by_range_equal_the_per_block_keys():
    """The prefix cache hashes runs of blocks with ``_block_keys`` (built by range); it must
    give exactly ``prompt_block_key`` of each block, for every mix of shared prefix, pool
    prompt and the request's own blocks."""
    import random
    from types import SimpleNamespace

    from sim.entities import prompt_block_key
    from sim.scheduler.kv import _block_keys

    rng = random.Random(7)
    for _ in range(5000):
        req = SimpleNamespace(
            prefix_group=rng.choice([-1, 0, 3]),
            prefix_tokens=rng.randint(0, 200),
            prompt_id=rng.choice([-1, 2]),
            prompt_tokens=rng.randint(1, 300),
            request_id=rng.randint(0, 99),
        )
        bs, lo = rng.choice([1, 4, 16]), rng.randint(0, 30)
        hi = rng.randint(lo, 60)
        assert _block_keys(req, lo, hi, bs) == [prompt_block_key(req, j, bs) for j in range(lo, hi)]
