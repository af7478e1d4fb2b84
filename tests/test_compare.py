"""Seed-replicated comparisons: intervals, paired differences, determinism across workers."""

from __future__ import annotations

import math

import pytest
from click.testing import CliRunner
from conftest import make_config

from sim.cli import main
from sim.errors import ConfigError
from sim.studies.compare import compare, mean_ci
from sim.studies.executor import run_many


def serial(cfgs):
    return run_many(cfgs, "serial")


def test_mean_ci_known_answer():
    m, lo, hi = mean_ci([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, df=2) · s / √n with s = 1
    assert m == 2.0 and lo == pytest.approx(2 - half) and hi == pytest.approx(2 + half)
    assert mean_ci([5.0]) == (5.0, 5.0, 5.0)
    assert all(math.isnan(x) for x in mean_ci([]))


def test_identical_arms_give_a_difference_interval_containing_zero():
    """With one request in flight the wait queue never holds two requests, so shortest-first
    and FCFS are the same arm twice: every paired difference is exactly 0."""
    cfg = make_config(cost={"model": "linear"}, arrival={"strategy": "synchronous", "rate_rps": None})
    runs, table = compare(cfg, serial, ["vllm-v1", "sjf"], ["weighted-average"], num_seeds=3)
    diffs = table[(table["arm"] == "sjf") & table["metric"].isin(["ttft_mean_ms", "e2e_mean_ms", "tpot_mean_ms"])]
    assert len(diffs) > 0
    assert (diffs["diff_low"] == 0).all() and (diffs["diff_high"] == 0).all()
    assert not diffs["diff_excludes_zero"].any()


def test_runs_are_paired_same_workload_per_seed():
    cfg = make_config(cost={"model": "linear"})
    runs, _ = compare(cfg, serial, ["vllm-v1", "vllm-v0"], ["weighted-average"], num_seeds=2)
    assert sorted(runs["seed"].unique()) == [1, 2]
    assert len(runs) == 4


def test_real_difference_is_detected():
    """vllm-v0 stalls decodes for every prefill: its TPOT is higher than vllm-v1's on a busy
    server, and the paired interval excludes zero."""
    cfg = make_config(cost={"model": "linear"}, arrival={"strategy": "poisson", "rate_rps": 30.0}, workload={"num_requests": 60})
    _, table = compare(cfg, serial, ["vllm-v1", "vllm-v0"], ["weighted-average"], num_seeds=4)
    row = table[(table["arm"] == "vllm-v0") & (table["metric"] == "tpot_mean_ms")].iloc[0]
    assert row["diff_mean"] > 0 and row["diff_excludes_zero"]


def test_comparison_at_every_rate_and_independent_of_workers():
    cfg = make_config(cost={"model": "linear"})
    args = (["vllm-v1", "sjf"], ["weighted-average"], 2, [5.0, 20.0])
    a = compare(cfg, serial, *args)[1]
    b = compare(cfg, lambda c: run_many(c, "process", workers=2), *args)[1]
    assert sorted(a["rate_rps"].unique()) == [5.0, 20.0]
    assert a.to_csv(index=False) == b.to_csv(index=False)


def test_bad_compare_input():
    cfg = make_config()
    with pytest.raises(ConfigError, match="at least 2 seeds"):
        compare(cfg, serial, ["vllm-v1", "sjf"], ["weighted-average"], 1)
    with pytest.raises(ConfigError, match="two arms"):
        compare(cfg, serial, ["vllm-v1"], ["weighted-average"], 3)


def test_compare_cli_writes_table_and_plot(tmp_path):
    out = tmp_path / "c"
    res = CliRunner().invoke(
        main,
        [
            "compare",
            "--cost-model",
            "linear",
            "--num-requests",
            "30",
            "--policies",
            "vllm-v1,sarathi",
            "--seeds",
            "2",
            "--executor",
            "serial",
            "--quiet",
            "-o",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert (out / "compare.csv").exists() and (out / "plots" / "compare.png").exists()
    assert "sarathi" in res.output and "Δ" in res.output
    bad = CliRunner().invoke(main, ["compare", "--policies", "vllm-v1,nope", "--seeds", "2", "--quiet", "-o", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "scheduler.policy" in bad.output
