"""Fleets: replicas behind a router, admission, prefill/decode disaggregation (laws, not numbers)."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from sim.cli import main
from sim.config import parse_run_config
from sim.core.simulation import simulate
from sim.errors import ConfigError

FIXED = {"prompt_tokens": {"dist": "fixed", "value": 400}, "output_tokens": {"dist": "fixed", "value": 60}}
STATUSES = {"finished", "rejected", "in_flight", "not_sent"}


def cfg(n=200, rate=20.0, strategy="poisson", cluster=None, workload=None, **top):
    d = {"seed": 7, "workload": {"num_requests": n, **(workload or {})}, "arrival": {"strategy": strategy, "rate_rps": rate}, **top}
    if strategy in ("synchronous", "throughput"):
        d["arrival"]["rate_rps"] = None
    if cluster is not None:
        d["cluster"] = cluster
    return parse_run_config(d)


def groups(n, **extra):
    return {"groups": [{"replicas": n}], **extra}


def assert_conserved(res, n):
    df = res.requests
    assert sorted(df["request_id"]) == list(range(n)), "every request exactly once"
    assert set(df["status"]) <= STATUSES
    fin = df[df["status"] == "finished"]
    assert (fin["first_token_s"] >= fin["arrival_s"]).all() and (fin["finish_s"] >= fin["first_token_s"]).all()
    assert ((df["replica"] >= -1) & (df["replica"] < len(res.replicas))).all()
    assert (df.loc[df["status"] == "not_sent", "replica"] == -1).all()


@pytest.mark.parametrize(
    "top",
    [
        {},
        {"arrival": {"strategy": "synchronous", "rate_rps": None}},
        {"arrival": {"strategy": "concurrent", "rate_rps": None, "concurrency": 8}},
        {"server": {"async_scheduling": True, "enable_prefix_caching": True}, "workload": {"num_requests": 150, "prefix_tokens": 128}},
        {"cost": {"calibration": "h100"}},  # API-server delay per request and per prompt token
        {"horizon_s": 3.0},
    ],
    ids=["poisson", "synchronous", "concurrent", "async+prefix", "calibrated-frontend", "horizon"],
)
def test_one_replica_cluster_equals_the_single_server(top):
    base = {"seed": 3, "workload": {"num_requests": 150}, "arrival": {"strategy": "poisson", "rate_rps": 15}}
    for k, v in top.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    single = simulate(parse_run_config(base))
    fleet = simulate(parse_run_config({**base, "cluster": {"groups": [{"replicas": 1}]}}))
    assert single.requests.equals(fleet.requests.drop(columns="replica"))
    assert single.steps.equals(fleet.steps.drop(columns="replica"))
    assert np.array_equal(single.itls_s, fleet.itls_s)
    for k, v in single.summary.items():
        assert fleet.summary[k] == v or (math.isnan(v) and math.isnan(fleet.summary[k])), k


@pytest.mark.parametrize("router", ["round-robin", "random", "least-outstanding", "least-kv", "prefix-affinity", "weighted"])
def test_every_router_conserves_requests_and_is_deterministic(router):
    c = cfg(n=240, rate=50, cluster=groups(3, router={"policy": router}), workload={"prefix_tokens": 64, "prefix_groups": 4})
    a, b = simulate(c), simulate(c)
    assert_conserved(a, 240)
    assert a.requests.equals(b.requests) and a.steps.equals(b.steps) and a.replicas.equals(b.replicas)
    assert a.replicas["requests_routed"].sum() == 240
    assert (a.requests["status"] == "finished").all()


def test_round_robin_with_constant_arrivals_gives_each_replica_the_single_server_at_its_share():
    """N identical replicas, round-robin, constant arrivals at N·λ: each replica gets every N-th
    request — arrivals 1/λ apart — and, with equal lengths, the latencies of one server at λ."""
    n_rep, lam, per = 4, 6.0, 60
    fleet = simulate(cfg(n=n_rep * per, rate=n_rep * lam, strategy="constant", cluster=groups(n_rep), workload=FIXED))
    one = simulate(cfg(n=per, rate=lam, strategy="constant", workload=FIXED))
    df = fleet.requests
    assert df["replica"].tolist() == [i % n_rep for i in range(n_rep * per)]
    for k in range(n_rep):
        mine = df[df["replica"] == k].sort_values("request_id")
        assert np.allclose(np.diff(mine["arrival_s"]), 1 / lam, rtol=1e-9)
        for col in ("ttft_s", "tpot_s", "e2e_s"):
            assert np.allclose(mine[col].to_numpy(), one.requests[col].to_numpy(), rtol=1e-9, atol=1e-12), (k, col)


def _paired_p99_ttft_diffs(rate, seeds, n, routers, refresh_ms=0.0):
    diffs = []
    for seed in seeds:
        vals = []
        for r in routers:
            c = parse_run_config(
                {
                    "seed": seed,
                    "workload": {"num_requests": n},
                    "arrival": {"strategy": "poisson", "rate_rps": rate},
                    # the rates are chosen against the seed roofline's capacity (4 replicas)
                    "cost": {"calibration": "none"},
                    "cluster": {"groups": [{"replicas": 4}], "router": {"policy": r, "refresh_interval_ms": refresh_ms}},
                }
            )
            vals.append(simulate(c).summary["ttft_p99_ms"])
        diffs.append(vals[0] - vals[1])
    return np.array(diffs)


def test_least_outstanding_beats_round_robin_near_saturation():
    """Poisson arrivals near the fleet's capacity: joining the shortest queue lowers p99 TTFT
    (paired seeds; the 95 % t-interval of the difference excludes zero)."""
    d = _paired_p99_ttft_diffs(rate=76.0, seeds=range(10), n=500, routers=["round-robin", "least-outstanding"])
    half = 2.262 * d.std(ddof=1) / math.sqrt(len(d))  # t(0.975, 9 dof)
    assert d.mean() - half > 0, (d.mean(), half, d)


def test_stale_snapshots_make_least_outstanding_herd():
    """With a snapshot every 500 ms and no own-send counting, every request of a refresh
    interval goes to the replica that looked least loaded: long runs of one replica and a worse
    tail than the oracle router."""

    def run(refresh_ms, own):
        c = cfg(n=400, rate=60, cluster=groups(4, router={"policy": "least-outstanding", "refresh_interval_ms": refresh_ms, "count_own_sends": own}))
        return simulate(c)

    oracle, stale, counted = run(0.0, True), run(500.0, False), run(500.0, True)
    for res in (oracle, stale, counted):
        assert_conserved(res, 400)

    def same_as_previous(res):
        rep = res.requests.sort_values("arrival_s")["replica"].to_numpy()
        return float((rep[1:] == rep[:-1]).mean())

    assert same_as_previous(stale) > 0.8 > same_as_previous(oracle) + 0.3
    assert stale.summary["ttft_p99_ms"] > 1.5 * oracle.summary["ttft_p99_ms"]
    # counting its own sends (vLLM's DP client) undoes most of the herding
    assert same_as_previous(counted) < 0.5


def test_prefix_affinity_raises_the_fleets_prefix_hit_rate():
    wl = {"num_requests": 400, "prefix_tokens": 1024, "prefix_groups": 48}
    server = {"enable_prefix_caching": True, "num_gpu_blocks": 1500}

    def hit_rate(router):
        c = parse_run_config(
            {
                "seed": 1,
                "server": server,
                "workload": wl,
                "arrival": {"strategy": "poisson", "rate_rps": 30},
                "cluster": {"groups": [{"replicas": 4}], "router": {"policy": router}},
            }
        )
        res = simulate(c)
        assert_conserved(res, 400)
        df = res.requests
        return df["cached_prompt_tokens"].sum() / df["prompt_tokens"].sum()

    rr, pa, wt = hit_rate("round-robin"), hit_rate("prefix-affinity"), hit_rate("weighted")
    assert pa > 1.2 * rr, (rr, pa)
    assert wt > rr, (rr, wt)


PD = {
    "groups": [{"name": "prefill", "role": "prefill", "replicas": 2}, {"name": "decode", "role": "decode", "replicas": 2}],
    "router": {"policy": "least-outstanding"},
}


def test_disaggregated_decode_replicas_never_mix_and_requests_are_conserved():
    res = simulate(cfg(n=300, rate=25, cluster=PD))
    assert_conserved(res, 300)
    st, reps = res.steps, res.replicas
    decode_ids = reps.loc[reps["role"] == "decode", "replica"]
    prefill_ids = reps.loc[reps["role"] == "prefill", "replica"]
    assert not st[st["replica"].isin(decode_ids)]["is_mixed"].any()
    assert (st[st["replica"].isin(prefill_ids)]["num_decode_reqs"] == 0).all()  # a prefill phase produces one token and leaves
    assert res.requests["replica"].isin(decode_ids).all()  # a request finishes where it decoded
    assert reps.loc[reps["role"] == "prefill", "requests_routed"].sum() == 300


def test_disaggregated_ttft_is_a_prefill_only_step_with_an_instant_link():
    """One request in flight, an instant link: TTFT is the prefill step (as on one server
    without contention) and the client sees the first token from the prefill replica."""
    instant = {**PD, "kv_transfer": {"link": "rdma", "bandwidth_gb_per_s": 1e12, "latency_ms": 0.0}}
    pd_ = simulate(cfg(n=30, strategy="synchronous", cluster=instant))
    one = simulate(cfg(n=30, strategy="synchronous"))
    assert np.allclose(pd_.requests["ttft_s"], one.requests["ttft_s"], rtol=1e-12)
    # the decode replica's steps are pure decodes: the request's TPOT is at most the single server's
    assert (pd_.requests["tpot_s"] <= one.requests["tpot_s"] * (1 + 1e-9)).all()


def test_kv_transfer_time_adds_to_the_second_token_not_the_first():
    slow = {**PD, "kv_transfer": {"link": "tcp", "bandwidth_gb_per_s": 0.5, "latency_ms": 20.0}}
    fast = {**PD, "kv_transfer": {"link": "rdma", "bandwidth_gb_per_s": 1e12, "latency_ms": 0.0}}
    a = simulate(cfg(n=20, strategy="synchronous", cluster=slow, workload=FIXED)).requests
    b = simulate(cfg(n=20, strategy="synchronous", cluster=fast, workload=FIXED)).requests
    assert np.allclose(a["ttft_s"], b["ttft_s"])
    # llama-2-7b KV: 2 × 32 layers × 32 heads × 128 × 2 bytes = 512 KiB per token
    transfer_s = 20e-3 + 400 * 524288 / 0.5e9
    assert np.allclose(a["e2e_s"] - b["e2e_s"], transfer_s, rtol=1e-6)


def test_disaggregation_with_one_token_requests_and_a_horizon_conserves():
    wl = {"output_tokens": {"dist": "uniform", "min": 1, "max": 3}}
    res = simulate(cfg(n=200, rate=80, cluster=PD, workload=wl, horizon_s=1.5))
    assert_conserved(res, 200)
    assert {"finished", "in_flight"} <= set(res.requests["status"])


def test_max_in_flight_admission_bounds_the_fleet_and_records_refusals():
    c = cfg(n=300, rate=200, cluster=groups(2, admission={"policy": "max-in-flight", "max_in_flight": 20}))
    res = simulate(c)
    assert_conserved(res, 300)
    df = res.requests
    rej = df[df["status"] == "rejected"]
    assert len(rej) > 0 and rej["reject_reason"].str.startswith("admission:").all() and (rej["replica"] == -1).all()
    fin = df[df["status"] == "finished"]
    events = sorted([(t, 1) for t in fin["arrival_s"]] + [(t, -1) for t in fin["finish_s"]], key=lambda e: (e[0], e[1]))
    assert max(np.cumsum([e[1] for e in events])) <= 20


def test_token_bucket_admits_at_most_burst_plus_rate_times_window():
    rate, burst = 10.0, 5
    res = simulate(cfg(n=300, rate=60, cluster=groups(2, admission={"policy": "token-bucket", "rate_rps": rate, "burst": burst})))
    assert_conserved(res, 300)
    t = np.sort(res.requests.loc[res.requests["status"] != "rejected", "arrival_s"].to_numpy())
    for i in range(len(t)):
        j = np.searchsorted(t, t[i] + 1.0, side="right")
        assert j - i <= burst + rate * 1.0 + 1e-9
    assert (res.requests["status"] == "rejected").sum() > 0


def test_heterogeneous_fleet_routes_by_capacity():
    """H100 and L40S replicas behind least-outstanding: scores per seat and a faster GPU send
    the H100s more requests; each group keeps its own KV size and budget."""
    cl = {
        "groups": [{"name": "h100", "gpu": "H100", "replicas": 2}, {"name": "l40s", "gpu": "L40S", "replicas": 2, "server": {"max_num_seqs": 64}}],
        "router": {"policy": "least-outstanding"},
    }
    res = simulate(cfg(n=400, rate=40, cluster=cl))
    assert_conserved(res, 400)
    reps = res.replicas.set_index("replica")
    assert reps.loc[reps["group"] == "h100", "requests_routed"].sum() > reps.loc[reps["group"] == "l40s", "requests_routed"].sum()
    assert reps.loc[0, "num_gpu_blocks"] > reps.loc[2, "num_gpu_blocks"]
    assert set(res.derived["groups"]) == {"h100", "l40s"}


@pytest.mark.parametrize(
    "cluster, field",
    [
        ({"groups": [{"replicas": 2}], "router": {"policy": "nope"}}, "cluster.router.policy"),
        ({"groups": [{"replicas": 2}], "admission": {"policy": "unlimited", "max_in_flight": 3}}, "cluster.admission.max_in_flight"),
        ({"groups": [{"replicas": 2}], "admission": {"policy": "max-in-flight"}}, "cluster.admission.max_in_flight"),
        ({"groups": [{"replicas": 2}], "router": {"policy": "weighted", "weights": {"queue": 1, "magic": 2}}}, "cluster.router.weights"),
        ({"groups": [{"role": "prefill"}, {"role": "decode"}], "kv_transfer": {"link": "pigeon"}}, "cluster.kv_transfer.link"),
        ({"groups": [{"replicas": 2, "server": {"max_num_seqz": 3}}]}, "cluster.groups.0.server.max_num_seqz"),
        ({"groups": [{"replicas": 2, "gpu": "H999"}]}, "cluster.groups.0 (g0): unknown GPU"),
        # settings the run would ignore are refused, not dropped
        ({"groups": [{"replicas": 2}], "kv_transfer": {"link": "tcp"}}, "cluster.kv_transfer"),
        ({"groups": [{"replicas": 2}], "router": {"policy": "least-outstanding", "weights": {"queue": 1}}}, "cluster.router.weights"),
        ({"groups": [{"replicas": 2}], "router": {"policy": "round-robin", "prefix_index_blocks": 100}}, "cluster.router.prefix_index_blocks"),
        ({"groups": [{"replicas": 2}], "router": {"count_own_sends": False}}, "cluster.router.count_own_sends"),
        ({"groups": [{"replicas": 2}], "router": {"refresh_interval_ms": 0.001}}, "cluster.router.refresh_interval_ms"),
        ({"groups": [{"replicas": 2}], "router": {"policy": "weighted", "weights": {"prefix-cache": 0, "queue": 0, "kv": 0}}}, "cluster.router.weights"),
    ],
)
def test_bad_cluster_settings_name_their_field(cluster, field):
    with pytest.raises(ConfigError, match=re.escape(field)):
        simulate(cfg(n=10, cluster=cluster))


def test_cli_replicas_and_router_flags(tmp_path):
    out = tmp_path / "r"
    res = CliRunner().invoke(
        main, ["run", "--replicas", "3", "--router", "least-outstanding", "--num-requests", "60", "--rate", "30", "-q", "--no-plots", "-o", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "replicas — router least-outstanding" in res.output and "3× H100 TP1" in res.output
    reps = pd.read_parquet(out / "runs/run/replicas.parquet")
    assert reps["requests_routed"].sum() == 60
    assert "replica" in pd.read_parquet(out / "runs/run/requests.parquet").columns
    bad = CliRunner().invoke(main, ["run", "--router", "least-outstanding", "--num-requests", "5", "-q", "-o", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "--router" in bad.output
    stream = CliRunner().invoke(main, ["run", "--replicas", "2", "--stream", "--num-requests", "30", "-q", "-o", str(tmp_path / "s")])
    assert stream.exit_code == 0, stream.output
    streamed = pd.read_parquet(tmp_path / "s/runs/run/requests.parquet")
    assert sorted(streamed["request_id"]) == list(range(30)) and set(streamed["replica"]) == {0, 1}
    assert pd.read_parquet(tmp_path / "s/runs/run/replicas.parquet")["requests_routed"].sum() == 30


# ------------------------------------------------------------ P/D metric definitions (golden)


def test_disaggregated_metric_definitions_count_each_stage_once():
    """One request, fixed step time d, a link of latency L and bandwidth B, nothing else in
    the fleet: the prefill replica's one step gives the first token (TTFT = d), the KV crosses
    the link (T = L + bytes / B), and the decode replica's O − 1 steps give the rest, so
    E2E = d + T + (O − 1)·d and TPOT = (E2E − TTFT) / (O − 1). Each stage appears once."""
    d, latency_s, bw = 0.02, 0.004, 2e9
    prompt, output = 300, 11
    pd_cluster = {**PD, "kv_transfer": {"link": "rdma", "bandwidth_gb_per_s": bw / 1e9, "latency_ms": latency_s * 1e3}}
    wl = {"prompt_tokens": {"dist": "fixed", "value": prompt}, "output_tokens": {"dist": "fixed", "value": output}}
    res = simulate(cfg(n=1, strategy="synchronous", cluster=pd_cluster, workload=wl, cost={"model": "fixed", "fixed_step_s": d}))
    r = res.requests.iloc[0]
    transfer_s = latency_s + prompt * 524288 / bw  # llama-2-7b: 512 KiB of KV per token
    assert r["status"] == "finished" and r["arrival_s"] == 0.0
    assert r["queue_delay_s"] == pytest.approx(0.0, abs=1e-12)
    assert r["ttft_s"] == pytest.approx(d, rel=1e-12)
    assert r["e2e_s"] == pytest.approx(d + transfer_s + (output - 1) * d, rel=1e-12)
    assert r["tpot_s"] == pytest.approx((r["e2e_s"] - r["ttft_s"]) / (output - 1), rel=1e-12)
    reps = res.replicas.set_index("replica")
    assert r["prefill_replica"] in reps.index[reps["role"] == "prefill"] and r["replica"] in reps.index[reps["role"] == "decode"]
    # the steps: one prefill step on the prefill replica, O − 1 decode steps on the decode replica
    st = res.steps
    assert (st["replica"] == r["prefill_replica"]).sum() == 1
    assert (st["replica"] == r["replica"]).sum() == output - 1
    assert res.summary["num_finished"] == 1
    # inter-token gaps: the transfer sits in the first one only
    itls = np.sort(np.asarray(res.itls_s))
    assert len(itls) == output - 1
    assert np.allclose(itls[:-1], d, rtol=1e-9) and itls[-1] == pytest.approx(transfer_s + d, rel=1e-9)


# ------------------------------------------------------------------- fewest replicas


def _run_serial(cfgs):
    return [simulate(c) for c in cfgs]


SLO = {"ttft_p99_ms": 300.0, "tpot_p99_ms": 40.0}


def test_fewest_replicas_is_minimal_and_monotone():
    from sim.studies.replicas import fewest_replicas
    from sim.studies.sweep import slo_violations

    tight = {"ttft_p99_ms": 100.0, "tpot_p99_ms": 20.0}
    router = {"policy": "least-outstanding"}
    base = cfg(n=600, rate=150.0, cluster=groups(1, router=router), workload=FIXED, slo=tight)
    (shape,) = fewest_replicas(base, _run_serial)
    n = shape.counts[shape.shape]
    assert n > 1, "the example needs more than one replica"
    assert not slo_violations(shape.result.summary, base.slo)
    assert shape.result.summary["num_replicas"] == n
    # minimal: one fewer replica misses the SLOs in the cluster simulation
    fewer = cfg(n=600, rate=150.0, cluster=groups(n - 1, router=router), workload=FIXED, slo=tight)
    assert slo_violations(simulate(fewer).summary, base.slo)
    # a looser SLO never needs more replicas; a higher rate never fewer
    loose = cfg(n=600, rate=150.0, cluster=groups(1, router=router), workload=FIXED, slo={"ttft_p99_ms": 1000.0, "tpot_p99_ms": 40.0})
    assert fewest_replicas(loose, _run_serial)[0].counts[shape.shape] <= n
    busier = cfg(n=600, rate=300.0, cluster=groups(1, router=router), workload=FIXED, slo=tight)
    assert fewest_replicas(busier, _run_serial)[0].counts[shape.shape] >= n


def test_fewest_replicas_searches_each_group_shape_and_both_pd_pools():
    from sim.studies.replicas import fewest_replicas

    hetero = {"groups": [{"name": "h100", "replicas": 2}, {"name": "l40s", "replicas": 2, "gpu": "L40S"}], "router": {"policy": "least-outstanding"}}
    shapes = fewest_replicas(cfg(n=200, rate=30.0, cluster=hetero, workload=FIXED, slo=SLO), _run_serial)
    assert [s.shape for s in shapes] == ["h100", "l40s"]
    assert shapes[0].counts["h100"] <= shapes[1].counts["l40s"], "an L40S replica sustains less than an H100 one"
    (pd_shape,) = fewest_replicas(cfg(n=200, rate=30.0, cluster=PD, workload=FIXED, slo=SLO), _run_serial)
    assert set(pd_shape.counts) == {"prefill", "decode"}
    assert pd_shape.result.summary["num_finished"] == 200
    for pool in ("prefill", "decode"):  # one fewer in either pool (the other held) fails
        if pd_shape.counts[pool] > 1:
            fewer = {**pd_shape.counts, pool: pd_shape.counts[pool] - 1}
            assert any(c == fewer and not ok for c, ok, _ in pd_shape.tried)


def test_fewest_replicas_needs_a_rate_and_an_slo():
    from sim.studies.replicas import fewest_replicas

    with pytest.raises(ConfigError, match="provisions for a request rate"):
        fewest_replicas(cfg(n=50, strategy="synchronous", slo=SLO), _run_serial)
    with pytest.raises(ConfigError, match="give at least one aggregate SLO"):
        fewest_replicas(cfg(n=50), _run_serial)


def test_cli_capacity_find_replicas(tmp_path):
    out = tmp_path / "cap"
    res = CliRunner().invoke(
        main,
        ["capacity", "--find", "replicas", "--rate", "45", "--num-requests", "900", "--replicas", "1", "--router", "least-outstanding",
         "--slo", "ttft_p99=300,tpot_p99=40", "-o", str(out), "-q"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "fewest replicas for 45 req/s" in res.output
    import json

    summary = json.loads((out / "summary.json").read_text())
    (shape,) = summary["shapes"]
    n = next(iter(shape["replicas"].values()))
    assert shape["num_gpus"] == n and shape["tried"][-1]["meets_slo"] in (True, False)
    assert (out / "runs" / f"fewest-{shape['shape']}" / "replicas.parquet").exists()
    bad = CliRunner().invoke(main, ["capacity", "--max-replicas", "4", "--slo", "ttft_p99=300", "-o", str(tmp_path / "x"), "-q"])
    assert bad.exit_code == 2 and "--max-replicas" in bad.output


# ------------------------------------------------------------- compare and sweep on fleets


def test_compare_routers_pairs_seeds_and_labels_arms():
    from sim.studies.compare import compare

    base = cfg(n=150, rate=40.0, cluster=groups(3), workload=FIXED)
    runs, stats = compare(base, _run_serial, ["vllm-v1"], ["weighted-average"], 3, routers=["round-robin", "least-outstanding"])
    assert set(runs["arm"]) == {"round-robin", "least-outstanding"}
    assert sorted(runs.groupby("arm")["seed"].apply(list).iloc[0]) == [7, 8, 9]
    # paired: the same seed gives each arm the same workload, so identical routers would give Δ = 0
    same, _ = compare(base, _run_serial, ["vllm-v1"], ["weighted-average", "smooth-wa"], 2, routers=["round-robin"])
    assert len(set(same["arm"])) == 2
    with pytest.raises(ConfigError, match="no cluster"):
        compare(cfg(n=20), _run_serial, ["vllm-v1"], ["weighted-average"], 2, routers=["round-robin", "random"])
    with pytest.raises(ConfigError, match="listed twice"):
        compare(base, _run_serial, ["vllm-v1"], ["weighted-average"], 2, routers=["random", "random"])


def test_sweep_on_a_fleet_finds_saturation_beyond_one_replica():
    """A fleet's queue is the sum of its replicas' queues: overload on a 3-replica fleet is
    detected, and the fleet's saturation rate exceeds one replica's."""
    from sim.studies.sweep import run_sweep

    sweep = {"rates_rps": [30.0, 60.0, 120.0, 240.0, 480.0]}
    one = run_sweep(cfg(n=1500, workload=FIXED, sweep=sweep), _run_serial)
    three = run_sweep(cfg(n=1500, workload=FIXED, sweep=sweep, cluster=groups(3, router={"policy": "least-outstanding"})), _run_serial)
    assert one.saturation_rps is not None and three.saturation_rps is not None
    assert three.saturation_rps >= 2 * one.saturation_rps
    assert not three.points[-1].stable, "480 req/s overloads three replicas"


def test_cli_fleet_run_plots_replica_load_and_compare_routers(tmp_path):
    out = tmp_path / "r"
    res = CliRunner().invoke(main, ["run", "--replicas", "2", "--num-requests", "40", "--rate", "20", "-q", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "plots" / "replica_load.png").stat().st_size > 0 and not (out / "plots" / "batch_composition.png").exists()
    cmp_out = tmp_path / "c"
    res = CliRunner().invoke(
        main,
        ["compare", "--replicas", "2", "--routers", "round-robin,least-outstanding", "--seeds", "2", "--num-requests", "40", "--rate", "30",
         "-q", "--no-plots", "-o", str(cmp_out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "least-outstanding" in res.output and "round-robin" in res.output
    runs = pd.read_parquet(next(cmp_out.glob("*runs*.parquet")))
    assert set(runs["arm"]) == {"round-robin", "least-outstanding"} and len(runs) == 4


def test_capacity_of_the_fewest_fleet_brackets_the_target_rate():
    """The two capacity questions agree: the fleet ``capacity --find replicas`` returns for rate
    R sustains about R under the rate search, and one replica fewer sustains less."""
    from sim.studies.replicas import fewest_replicas
    from sim.studies.sweep import find_capacity

    tight = {"ttft_p99_ms": 100.0, "tpot_p99_ms": 20.0}
    router = {"policy": "least-outstanding"}
    rate = 150.0
    (shape,) = fewest_replicas(cfg(n=900, rate=rate, cluster=groups(1, router=router), workload=FIXED, slo=tight), _run_serial)
    n = shape.counts[shape.shape]
    for count, expect_above in ((n, True), (n - 1, False)):
        c = cfg(n=900, rate=rate, cluster=groups(count, router=router), workload=FIXED, slo=tight, sweep={"rate_strategy": "poisson"})
        cap = find_capacity(c, _run_serial).capacity_rps or 0.0
        if expect_above:
            assert cap >= 0.97 * rate, (count, cap)
        else:
            assert cap <= 1.03 * rate, (count, cap)


def test_capacity_refuses_to_judge_runs_shorter_than_a_few_latencies():
    from sim.studies.sweep import TOO_SHORT, capacity_violations

    slo = parse_run_config({"slo": {"ttft_p99_ms": 1e6}}).slo
    short = simulate(cfg(n=60, rate=2000.0, cluster=groups(2), workload=FIXED))  # 30 ms of arrivals, seconds of decoding
    assert any(v.startswith(TOO_SHORT) for v in capacity_violations(short, slo))
    long = simulate(cfg(n=300, rate=5.0, workload=FIXED))
    assert capacity_violations(long, slo) == []


def test_cli_set_indexes_lists_and_combines_with_replicas(tmp_path):
    from sim.cli.config_input import build_config

    c, _ = build_config(None, {"replicas": 4}, ("cluster.router.refresh_interval_ms=100", "cluster.router.policy=least-outstanding"))
    assert c.cluster.groups[0].replicas == 4 and c.cluster.router.refresh_interval_ms == 100
    c, _ = build_config(None, {}, ("cluster.groups=[{replicas: 2}, {replicas: 1, gpu: L40S}]", "cluster.groups.1.replicas=3"))
    assert [g.replicas for g in c.cluster.groups] == [2, 3]
    with pytest.raises(ConfigError, match=r"cluster.groups is a list of 2; index it with 0…1"):
        build_config(None, {}, ("cluster.groups=[{replicas: 2}, {replicas: 1}]", "cluster.groups.5.replicas=3"))
    with pytest.raises(ConfigError, match="server.max_num_seqs is 256, not a section"):
        build_config(None, {}, ("server.max_num_seqs.x=3",))


@pytest.mark.parametrize(
    "cluster, top",
    [
        (groups(3, router={"policy": "least-outstanding", "refresh_interval_ms": 100}), {}),
        (PD, {}),
        (PD, {"horizon_s": 4.0}),
        ({"groups": [{"replicas": 1}], "admission": {"policy": "max-in-flight", "max_in_flight": 12}}, {}),
    ],
    ids=["dp", "pd", "pd-horizon", "admission"],
)
def test_streamed_fleet_writes_the_same_records_as_in_memory(cluster, top):
    """Streaming a fleet changes where records go, not what they are: the spilled request and
    step rows equal the in-memory tables (requests in the same order; steps up to the
    interleaving of replicas, which the CLI's writer undoes), counts and replica counters are
    equal, percentiles agree to the histograms' 0.25 %."""
    from sim.core.simulation import make_simulation

    c = cfg(n=400, rate=40.0, cluster=cluster, **top)
    mem = simulate(c)
    frames: dict[str, list] = {"requests": [], "steps": []}
    res = make_simulation(c, spill=lambda kind, frame: frames[kind].append(frame), chunk_rows=97).run()
    assert res.derived["streamed"] and len(res.requests) == 0
    req = pd.concat(frames["requests"], ignore_index=True)  # handed over in id order
    pd.testing.assert_frame_equal(req, mem.requests)
    steps = pd.concat(frames["steps"]).sort_values(["replica", "step_index"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(steps, mem.steps.sort_values(["replica", "step_index"]).reset_index(drop=True))
    for key in ("num_requests", "num_finished", "num_rejected", "num_in_flight", "num_not_sent", "num_steps", "num_mixed_steps", "num_replicas"):
        assert res.summary[key] == mem.summary[key], key
    fin = mem.requests[mem.requests["status"] == "finished"]
    for metric, q in (("ttft", 99), ("e2e", 50), ("tpot", 99)):
        # a binned percentile lies between the order statistics around its rank (bins 0.5 %)
        v = np.sort(fin[f"{metric}_s"].dropna().to_numpy()) * 1e3
        rank = q / 100 * (len(v) - 1)
        lo, hi = v[int(math.floor(rank))], v[int(math.ceil(rank))]
        assert lo * (1 - 5e-3) <= res.summary[f"{metric}_p{q}_ms"] <= hi * (1 + 5e-3), metric
    exact = ["replica", "group", "role", "requests_routed", "num_steps", "mixed_steps", "preemptions", "num_gpu_blocks"]
    pd.testing.assert_frame_equal(res.replicas[exact], mem.replicas[exact])
    assert np.allclose(res.replicas["busy_s"], mem.replicas["busy_s"], rtol=1e-9)
    for g, summ in mem.derived["groups"].items():
        assert res.derived["groups"][g]["num_requests"] == summ["num_requests"]
