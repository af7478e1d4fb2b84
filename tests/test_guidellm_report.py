"""guidellm-compatible report export (sim/records/guidellm.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_config

from sim.core.simulation import simulate
from sim.records.guidellm import build_report, distribution_summary

ROOT = Path(__file__).resolve().parents[1]

ARRIVALS = {
    "synchronous": {"strategy": "synchronous"},
    "constant": {"strategy": "constant", "rate_rps": 5.0},
    "throughput": {"strategy": "throughput"},
}


def _run(name: str, **over):
    return simulate(make_config(cost={"model": "linear"}, arrival=ARRIVALS[name], **over))


@pytest.fixture(scope="module")
def results():
    return [_run(n) for n in ARRIVALS]


@pytest.fixture(scope="module")
def report(results):
    return build_report(results, model="llama-2-7b")


def _inverted_cdf(values, q):
    """guidellm's percentile: first distinct value whose cumulative probability reaches q
    (computed with cumsum, as guidellm does, so float round-off picks the same value)."""
    uniq, counts = np.unique(np.asarray(values, dtype=float), return_counts=True)
    cdf = np.cumsum(counts / counts.sum())
    return uniq[np.searchsorted(cdf, q, side="left")]


def test_structure(report, results):
    assert report["metadata"]["version"] == 2
    assert report["config"]["spec"]["profile"]["kind"] == "synchronous"
    assert len(report["benchmarks"]) == len(results)
    for b, name in zip(report["benchmarks"], ARRIVALS):
        assert b["type_"] == "generative_benchmark"
        assert b["config"]["strategy"]["type_"] == name
        m = b["metrics"]
        for key in ("time_to_first_token_ms", "inter_token_latency_ms", "time_per_output_token_ms", "request_latency",
                    "requests_per_second", "output_tokens_per_second"):  # fmt: skip
            assert set(m[key]) == {"successful", "incomplete", "errored", "total"}
            assert set(m[key]["successful"]["percentiles"]) >= {"p50", "p90", "p95", "p99"}
    assert report["benchmarks"][1]["config"]["strategy"]["rate"] == 5.0


def test_numbers_match_summary(report, results):
    for b, res in zip(report["benchmarks"], results):
        s, m, df = res.summary, b["metrics"], res.requests
        fin = df[df["status"] == "finished"]
        assert m["request_totals"]["successful"] == s["num_finished"]
        assert m["request_totals"]["errored"] == s["num_rejected"]
        assert m["request_totals"]["incomplete"] == s["num_in_flight"]
        assert len(b["requests"]["successful"]) == s["num_finished"]
        ttft = m["time_to_first_token_ms"]["successful"]
        assert ttft["mean"] == pytest.approx(s["ttft_mean_ms"], rel=1e-9)
        assert ttft["count"] == s["num_finished"]
        for p in (50, 90, 95, 99):  # guidellm percentiles: inverted-CDF order statistics
            assert ttft["percentiles"][f"p{p}"] == pytest.approx(_inverted_cdf(fin["ttft_s"] * 1e3, p / 100), rel=1e-9)
        assert ttft["median"] == ttft["percentiles"]["p50"]
        # ITL: per-request average weighted by gaps -> mean of all gaps
        assert m["inter_token_latency_ms"]["successful"]["mean"] == pytest.approx(s["itl_mean_ms"], rel=1e-9)
        assert m["request_latency"]["successful"]["mean"] == pytest.approx(s["e2e_mean_ms"] / 1e3, rel=1e-9)
        tpot = m["time_per_output_token_ms"]["successful"]["mean"]
        assert tpot == pytest.approx(fin["e2e_s"].sum() / fin["output_tokens"].sum() * 1e3, rel=1e-9)
        assert m["requests_per_second"]["successful"]["mean"] == pytest.approx(s["requests_per_s"], rel=1e-6)
        sm = b["scheduler_metrics"]
        assert sm["measure_end_time"] - sm["measure_start_time"] == pytest.approx(s["duration_s"], rel=1e-12)


def test_statuses_and_mappings():
    res = simulate(make_config(cost={"model": "linear"}, arrival={"strategy": "poisson", "rate_rps": 20.0},
                               workload={"num_requests": 60}, horizon_s=2.0))  # fmt: skip
    rej = simulate(make_config(cost={"model": "linear"}, server={"max_model_len": 300}, arrival={"strategy": "throughput"}))
    olr = simulate(make_config(arrival={"strategy": "open-loop-at-measured-rate", "rate_rps": 3.0}))
    rep = build_report([res, rej, olr], model="m")
    b0, b1, b2 = rep["benchmarks"]
    assert b0["metrics"]["request_totals"]["incomplete"] == res.summary["num_in_flight"] > 0
    assert b1["metrics"]["request_totals"]["errored"] == rej.summary["num_rejected"] > 0
    assert all(r["info"]["error"] for r in b1["requests"]["errored"])
    assert b2["config"]["strategy"] == {"type_": "constant", "worker_count": None, "max_concurrency": None, "rate": 3.0, "rampup_duration": 0.0}


def test_distribution_summary_definition():
    d = distribution_summary([1.0, 2.0, 3.0, 4.0])
    assert d["mean"] == 2.5 and d["percentiles"]["p50"] == 2.0 and d["percentiles"]["p99"] == 4.0
    w = distribution_summary([(1.0, 3.0), (5.0, 1.0)])  # weighted
    assert w["mean"] == 2.0 and w["count"] == 4 and w["median"] == 1.0
    assert distribution_summary([])["count"] == 0


def test_json_and_deterministic(report):
    text = json.dumps(report, allow_nan=False)  # strict JSON: no NaN/inf
    again = json.dumps(build_report([_run(n) for n in ARRIVALS], model="llama-2-7b"), allow_nan=False)
    assert text == again


def test_real_guidellm_loader(report, tmp_path):
    """Optional: guidellm's own loader accepts the file and recomputes the same numbers."""
    pytest.importorskip("guidellm")
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import check_guidellm_compat as chk
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    try:
        loader = chk.import_loader()
    except ImportError as err:  # guidellm present but its import-time deps are not
        pytest.skip(f"guidellm loader not importable: {err}")
    path = tmp_path / "benchmarks.json"
    path.write_text(json.dumps(report))
    loaded = loader.load_file(tmp_path)  # directory -> benchmarks.json, as guidellm resolves it
    assert len(loaded.benchmarks) == len(report["benchmarks"])
    assert chk.check_file(path) == []


def test_metrics_computed_in_workers_give_the_same_report():
    """A sweep computes each point's metrics block where it was simulated (attach_metrics);
    the report is the same as one built from the bare results, serial or pooled."""
    import json

    from sim.api import load_config
    from sim.records.guidellm import attach_metrics, build_report
    from sim.studies.executor import run_many

    cfgs = [load_config(None, {"workload": {"num_requests": 60}, "arrival": {"strategy": "poisson", "rate_rps": r}, "horizon_s": 4.0}) for r in (5.0, 40.0)]
    bare = run_many(cfgs, "serial")
    pooled = run_many(cfgs, "process", 2, post=attach_metrics)
    assert all("guidellm_metrics" in r.extras for r in pooled)
    a = json.dumps(build_report(bare, model="m"), sort_keys=True, default=str)
    b = json.dumps(build_report(pooled, model="m"), sort_keys=True, default=str)
    assert a == b


def test_sampled_records_list_a_uniform_subset_and_keep_every_metric():
    """GIVEN a run of 60 requests WHEN reported with sample_requests=7 THEN each status lists at
    most 7 records, drawn from that status's requests (ids ascending, no repeats, the same on
    every build), ``sample_size`` says 7, and the metrics are those of the unsampled report
    (they cover every request); sample_requests=None and a cap above the count list all."""
    res = simulate(make_config(cost={"model": "linear"}, arrival={"strategy": "constant", "rate_rps": 30.0}, workload={"num_requests": 60}))
    full = build_report([res], model="m", sample_requests=None)
    cut = build_report([res], model="m", sample_requests=7)
    assert cut == build_report([res], model="m", sample_requests=7)
    ids_all = [r["request_id"] for r in full["benchmarks"][0]["requests"]["successful"]]
    ids_cut = [r["request_id"] for r in cut["benchmarks"][0]["requests"]["successful"]]
    assert len(ids_all) == 60 and len(ids_cut) == 7
    assert set(ids_cut) <= set(ids_all) and ids_cut == sorted(ids_cut, key=int) and len(set(ids_cut)) == 7
    assert ids_cut != ids_all[:7]  # a sample across the run, not its head
    assert cut["benchmarks"][0]["config"]["sample_size"] == 7
    assert full["benchmarks"][0]["config"]["sample_size"] is None
    assert cut["benchmarks"][0]["metrics"] == full["benchmarks"][0]["metrics"]
    assert build_report([res], model="m", sample_requests=60) == full
    with pytest.raises(ValueError):
        build_report([res], model="m", sample_requests=-1)


def test_cli_sample_requests_caps_the_listed_records(tmp_path):
    from click.testing import CliRunner

    from sim.cli.main import main

    base = ["run", "--cost-model", "linear", "--num-requests", "40", "--quiet", "--no-plots"]
    out = tmp_path / "a"
    r = CliRunner().invoke(main, [*base, "--sample-requests", "5", "-o", str(out)])
    assert r.exit_code == 0, r.output
    bench = json.loads((out / "benchmarks.json").read_text())["benchmarks"][0]
    assert len(bench["requests"]["successful"]) == 5 and bench["metrics"]["request_totals"]["successful"] == 40
    r = CliRunner().invoke(main, [*base, "--sample-requests", "all", "-o", str(tmp_path / "b")])
    assert r.exit_code == 0 and len(json.loads((tmp_path / "b/benchmarks.json").read_text())["benchmarks"][0]["requests"]["successful"]) == 40
    bad = CliRunner().invoke(main, [*base, "--sample-requests", "some", "-o", str(tmp_path / "c")])
    assert bad.exit_code == 2 and "--sample-requests" in bad.output


@pytest.mark.parametrize(
    "over",
    [
        {"arrival": {"strategy": "constant", "rate_rps": 40.0}, "workload": {"num_requests": 80}},
        {"arrival": {"strategy": "poisson", "rate_rps": 60.0}, "workload": {"num_requests": 120}, "horizon_s": 1.5},  # in flight, not sent
        {"arrival": {"strategy": "poisson", "rate_rps": 80.0, "request_timeout_s": 0.4}, "workload": {"num_requests": 120}},  # timed out
        {"arrival": {"strategy": "synchronous"}, "workload": {"num_requests": 12, "output_tokens": {"dist": "fixed", "value": 1}}},  # no iterations
    ],
    ids=["finished", "horizon", "timeouts", "one-token"],
)
def test_compact_token_metrics_equal_the_array_path(over):
    """The per-token metrics computed from the sorted iteration-token times (no (N, 2) arrays)
    are exactly those of the per-token (time, weight) arrays, for every status mix."""
    from sim.records import guidellm as g
    from sim.records.guidellm_stats import status_summary

    res = simulate(make_config(cost={"model": "linear"}, **over))
    _, groups, start, _, end = g._grouped(res)
    if "horizon_s" in over:
        assert groups["incomplete"], "the case needs requests in flight at the horizon"
    if "request_timeout_s" in over["arrival"]:
        assert groups["errored"], "the case needs timed-out requests"
    compact = g._compact_token_metrics(groups, start, end)
    assert compact is not None
    tt = {k: g._token_timings(v) for k, v in groups.items()}
    arrays = {
        "prompt_tokens_per_second": status_summary("rate", {k: t[0] for k, t in tt.items()}, start, end),
        "output_tokens_per_second": status_summary("rate", {k: t[1] for k, t in tt.items()}, start, end),
        "tokens_per_second": status_summary("rate", {k: t[3] for k, t in tt.items()}, start, end),
        "output_tokens_per_iteration": status_summary("values", {k: t[1][:, 1].copy() for k, t in tt.items()}),
        "iter_tokens_per_iteration": status_summary("values", {k: t[2][:, 1].copy() for k, t in tt.items()}),
    }
    assert json.dumps(compact) == json.dumps(arrays)
