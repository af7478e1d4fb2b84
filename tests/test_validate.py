"""Validation against measured runs: loader, point→config mapping, error metrics, CLI, and a
short run on the real shared ground truth (skipped when absent)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from sim.cli.validate import run_validation, validate
from sim.errors import ConfigError
from sim.studies.executor import run_many
from sim.studies.groundtruth import load_points, load_server_spans
from sim.studies.point_configs import STUDY_MAX_NUM_BATCHED_TOKENS, STUDY_NUM_GPU_BLOCKS, measured_for_point, point_to_config, points_to_configs, study_rate
from sim.studies.scoring import ape, compare_points, mape, mape_table, overload_flags, step_check

FIXTURE = Path(__file__).parent / "fixtures" / "groundtruth_small"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pts() -> pd.DataFrame:
    return load_points(FIXTURE)


def _row(pts: pd.DataFrame, pid: str) -> pd.Series:
    return pts[pts["point_id"] == pid].iloc[0]


# ------------------------------------------------------------------ loader


def test_load_points_fixture(pts):
    assert list(pts["point_id"]) == ["tiny-b#0", "tiny-b#1", "tiny-b#2", "tiny-a-chat#0", "tiny-c#0"]
    assert list(pts["load_level"]) == ["synchronous", "throughput", "rate", "synchronous", "rate"]
    assert pts["tp"].dtype.kind == "i"


def test_load_points_missing_dir_and_file(tmp_path):
    with pytest.raises(ConfigError, match="directory not found"):
        load_points(tmp_path / "nope")
    with pytest.raises(ConfigError, match="has no points.csv"):
        load_points(tmp_path)


def test_load_points_missing_column_and_bad_values(tmp_path):
    df = pd.read_csv(FIXTURE / "points.csv")
    df.drop(columns=["strategy"]).to_csv(tmp_path / "points.csv", index=False)
    with pytest.raises(ConfigError, match=r"missing column\(s\) strategy"):
        load_points(tmp_path)
    df.assign(strategy="sweep").to_csv(tmp_path / "points.csv", index=False)
    with pytest.raises(ConfigError, match="unknown value"):
        load_points(tmp_path)
    pd.concat([df, df.iloc[[0]]]).to_csv(tmp_path / "points.csv", index=False)
    with pytest.raises(ConfigError, match="duplicate point"):
        load_points(tmp_path)
    # optional columns may be absent: they become NaN
    df.drop(columns=["kv_cache_gpu_tokens", "ttft_p99_ms"]).to_csv(tmp_path / "points.csv", index=False)
    loaded = load_points(tmp_path)
    assert loaded["kv_cache_gpu_tokens"].isna().all()


def test_server_spans_loader(tmp_path):
    spans = load_server_spans(FIXTURE, "tiny-b")
    assert {"prefill_ms", "decode_ms"} <= set(spans.columns)
    assert load_server_spans(FIXTURE, "tiny-c") is None
    (tmp_path / "requests_server").mkdir()
    pd.DataFrame({"request_index": [0]}).to_csv(tmp_path / "requests_server" / "x.csv", index=False)
    with pytest.raises(ConfigError, match="prefill_ms"):
        load_server_spans(tmp_path, "x")


# ------------------------------------------------------------------ metrics (hand-computed)


def test_ape_and_mape_known_answers():
    assert ape(110, 100) == pytest.approx(0.10)
    assert ape(90, 100) == pytest.approx(0.10)
    assert ape(50, 200) == pytest.approx(0.75)
    assert math.isnan(ape(1.0, 0.0)) and math.isnan(ape(math.nan, 1.0)) and math.isnan(ape(1.0, None))
    assert mape([0.1, 0.3, math.nan]) == pytest.approx(0.2)
    assert math.isnan(mape([math.nan]))


def _two_points() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "point_id": ["e1#0", "e2#0", "e2#1"],
            "experiment": ["e1", "e2", "e2"],
            "dataset": ["d", "d", "d"],
            "workload": ["chat", "code", "code"],
            "strategy": ["synchronous", "synchronous", "throughput"],
            "load_level": ["synchronous", "synchronous", "throughput"],
            "benchmark_index": [0, 0, 1],
            "rate": [1, 1, 512],
            "e2e_mean_ms": [100.0, 200.0, 400.0],
            "ttft_mean_ms": [10.0, 20.0, 80.0],
            "tpot_mean_ms": [np.nan, 5.0, 8.0],
            "achieved_rps": [np.nan] * 3,
        }
    )


def test_compare_points_and_mape_table_known_answers():
    p = _two_points()
    sims = [
        {"e2e_mean_ms": 110.0, "ttft_mean_ms": 12.0, "tpot_mean_ms": 4.0},
        {"e2e_mean_ms": 150.0, "ttft_mean_ms": 20.0, "tpot_mean_ms": 6.0},
        {"e2e_mean_ms": 600.0, "ttft_mean_ms": 40.0, "tpot_mean_ms": 8.0},
    ]
    long = compare_points(p, sims, extra={"formula": ["f"] * 3, "gemm_m": ["tokens"] * 3})
    e2e = long[long["metric"] == "e2e_mean"].set_index("point_id")["ape"]
    assert e2e.to_dict() == pytest.approx({"e1#0": 0.10, "e2#0": 0.25, "e2#1": 0.50})
    tpot = long[long["metric"] == "tpot_mean"].set_index("point_id")["ape"]
    assert math.isnan(tpot["e1#0"])  # not measured → not counted
    mt = mape_table(long, keys=("formula", "gemm_m")).set_index(["subset", "group_by", "group", "metric"])
    assert mt.loc[("all", "overall", "all", "e2e_mean"), "mape"] == pytest.approx((0.10 + 0.25 + 0.50) / 3)
    assert mt.loc[("all", "experiment", "e2", "e2e_mean"), "mape"] == pytest.approx(0.375)
    assert mt.loc[("all", "overall", "all", "tpot_mean"), "n"] == 2
    assert mt.loc[("all", "overall", "all", "tpot_mean"), "mape"] == pytest.approx((0.2 + 0.0) / 2)
    # the throughput point is overloaded: excluded from the not_overloaded subset
    assert mt.loc[("not_overloaded", "overall", "all", "e2e_mean"), "mape"] == pytest.approx(0.175)
    assert mt.loc[("all", "load_level", "throughput", "e2e_mean"), "mape"] == pytest.approx(0.5)


def test_overload_flags():
    p = pd.DataFrame(
        {
            "experiment": ["x"] * 4,
            "strategy": ["synchronous", "constant", "constant", "throughput"],
            "rate": [1, 2.0, 4.0, 512],
            "achieved_rps": [0.5, 1.95, 3.0, 5.0],
            "ttft_mean_ms": [100.0, 150.0, 200.0, 9000.0],
        }
    )
    f = overload_flags(p)
    assert list(f["overloaded"]) == [False, False, True, True]
    assert "achieved" in f["overload_reason"].iloc[2]
    p.loc[1, "ttft_mean_ms"] = 600.0  # > 5x synchronous TTFT
    assert overload_flags(p)["overloaded"].iloc[1]


def test_step_check_known_answer():
    sim = pd.DataFrame(
        {
            "request_id": [0, 1, 2],
            "status": ["finished"] * 3,
            "prompt_tokens": [10, 20, 30],
            "output_tokens": [5, 5, 5],
            "first_scheduled_s": [0.0, 1.0, 2.0],
            "first_token_s": [0.1, 1.2, 2.1],
            "finish_s": [1.1, 2.2, 2.6],
        }
    )
    # server rows in another order, one request missing: matched by (prompt, output) lengths
    spans = pd.DataFrame(
        {"start_offset_s": [5.0, 4.0], "prompt_tokens": [20, 10], "output_tokens": [5, 5], "prefill_ms": [100.0, 100.0], "decode_ms": [1000.0, 500.0]}
    )
    r = step_check(sim, spans)
    assert r["n_matched"] == 2
    assert r["sim_prefill_mean_ms"] == pytest.approx(150.0)
    assert r["prefill_mean_ape"] == pytest.approx(0.5)
    assert r["prefill_per_request_mape"] == pytest.approx((0.0 + 1.0) / 2)
    assert r["decode_mean_ape"] == pytest.approx(abs(1000 - 750) / 750)


# ------------------------------------------------------------------ point → config


def test_point_to_config_guidellm_each_strategy(pts):
    sync = point_to_config(_row(pts, "tiny-b#0"), gt_dir=FIXTURE)
    assert sync.arrival.strategy == "synchronous"
    assert sync.model == "llama-2-7b" and sync.gpu == "H100" and sync.tensor_parallel_size == 1
    assert sync.workload.trace.benchmark_index == 0 and sync.workload.trace.path.endswith("requests/tiny-b.csv")
    assert sync.server.num_gpu_blocks == 119392 // 16  # the measured KV size
    assert sync.server.max_num_batched_tokens == 512 and sync.server.max_num_seqs == 32
    assert sync.server.max_model_len == 4096 and sync.server.enable_prefix_caching
    assert sync.workload.prefix_tokens == 64 and sync.workload.num_requests is None
    thr = point_to_config(_row(pts, "tiny-b#1"), gt_dir=FIXTURE)
    assert thr.arrival.strategy == "throughput" and thr.arrival.concurrency == 512
    const = point_to_config(_row(pts, "tiny-b#2"), gt_dir=FIXTURE, formula="additive", gemm_m="requests")
    assert const.arrival.strategy == "replay"
    assert const.cost.formula == "additive" and const.cost.gemm_m == "requests"
    a = point_to_config(_row(pts, "tiny-a-chat#0"), gt_dir=FIXTURE)
    assert a.arrival.strategy == "synchronous" and a.workload.trace is None
    assert a.workload.prompt_tokens.dist == "fixed" and a.workload.prompt_tokens.value == 70
    assert a.workload.output_tokens.value == 215 and a.workload.prefix_tokens == 284
    assert a.server.num_gpu_blocks is None and a.server.max_num_batched_tokens is None  # unknown → vLLM defaults
    c = point_to_config(_row(pts, "tiny-c#0"), gt_dir=FIXTURE, max_requests_per_point=3)
    assert c.arrival.strategy == "replay" and c.workload.num_requests == 3
    assert c.workload.prefix_tokens == 100 and c.workload.prefix_groups == 10
    assert c.server.max_num_seqs == 128 and c.server.max_num_batched_tokens == 2048
    # inference-perf cycles through num_groups x num_prompts_per_group prompts; stage 0 starts cold
    assert c.workload.prompt_pool == 100 and not c.workload.prompt_pool_warm
    assert c.server.async_scheduling and not sync.server.async_scheduling  # set C only (see groundtruth)
    assert sync.workload.prompt_pool is None and a.workload.prompt_pool is None  # guidellm: unique prompts


def test_point_to_config_study_mode(pts):
    cfgs = {p: c for p, c in zip(pts["point_id"], points_to_configs(pts, gt_dir=FIXTURE, mode="study"))}
    for c in cfgs.values():
        assert c.arrival.strategy == "open-loop-at-measured-rate" and c.workload.trace is None
        assert c.server.max_num_batched_tokens == STUDY_MAX_NUM_BATCHED_TOKENS and c.server.max_num_seqs == 256
        assert c.server.num_gpu_blocks == STUDY_NUM_GPU_BLOCKS
    assert cfgs["tiny-b#0"].arrival.rate_rps == pytest.approx(6 / 2.0)  # synchronous: n_successful / duration
    assert cfgs["tiny-b#1"].arrival.rate_rps == pytest.approx(5 / 0.8)  # throughput: n_successful / duration
    assert cfgs["tiny-b#2"].arrival.rate_rps == pytest.approx(2.0)  # constant: its rate
    assert cfgs["tiny-a-chat#0"].arrival.rate_rps == pytest.approx(1000 / 1292.6)  # set A: 1 / mean E2E
    assert cfgs["tiny-c#0"].arrival.rate_rps == pytest.approx(8.0)
    b = cfgs["tiny-b#0"].workload
    assert b.prompt_tokens.dist == "normal" and b.prompt_tokens.mean == 200 and b.prompt_tokens.max == 400
    assert b.num_requests == 6 and b.prefix_tokens == 64
    assert study_rate(_row(pts, "tiny-b#2")) == 2.0


def test_point_to_config_errors(pts):
    with pytest.raises(ConfigError, match="--mode"):
        point_to_config(_row(pts, "tiny-b#0"), gt_dir=FIXTURE, mode="blis")
    with pytest.raises(ConfigError, match="max-requests-per-point"):
        point_to_config(_row(pts, "tiny-b#0"), gt_dir=FIXTURE, max_requests_per_point=0)
    bad = _row(pts, "tiny-b#0").copy()
    bad["model"] = "acme/unknown-model"
    bad["model_config_dir"] = "nope"
    with pytest.raises(ConfigError, match="not in the catalogue"):
        point_to_config(bad, gt_dir=FIXTURE)


def test_measured_for_capped_point_uses_same_requests(pts):
    p = _row(pts, "tiny-c#0")
    cfg = point_to_config(p, gt_dir=FIXTURE, max_requests_per_point=4)
    meas, src = measured_for_point(p, FIXTURE, cfg)
    assert src == "requests[:4]"
    assert meas["ttft_mean_ms"] == pytest.approx(27.0) and meas["tpot_mean_ms"] == pytest.approx(8.2)
    p0 = _row(pts, "tiny-b#0")
    meas0, src0 = measured_for_point(p0, FIXTURE, point_to_config(p0, gt_dir=FIXTURE))
    assert src0 == "points.csv" and meas0["e2e_mean_ms"] == pytest.approx(p0["e2e_mean_ms"])


def test_run_validation_fixture_and_step_check():
    v = run_validation(FIXTURE, lambda cfgs: run_many(cfgs, "serial"), formulas=("weighted-average", "additive"), experiments=("tiny-b",))
    assert set(v.long["formula"]) == {"weighted-average", "additive"}
    assert len(v.long) == 2 * 3 * 15
    e2e = v.long[v.long["metric"] == "e2e_mean"]
    assert np.isfinite(e2e["ape"]).all()
    assert len(v.steps) == 2 * 3 and (v.steps["n_matched"] > 0).all()
    with pytest.raises(ConfigError, match="unknown experiment"):
        run_validation(FIXTURE, lambda c: run_many(c, "serial"), experiments=("nope",))


# ------------------------------------------------------------------ CLI


def test_cli_on_fixture(tmp_path):
    out = tmp_path / "val"
    r = CliRunner().invoke(
        validate,
        [
            "--ground-truth",
            str(FIXTURE),
            "--formula",
            "weighted-average",
            "--formula",
            "smooth-wa",
            "--executor",
            "serial",
            "--max-requests-per-point",
            "5",
            "-q",
            "-o",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    for f in ("report.md", "points.csv", "mape.csv", "step_check.csv", "plots/latency_vs_rate_tiny-b.png", "plots/sim_vs_meas_weighted-average_tokens.png"):
        assert (out / f).is_file(), f
    long = pd.read_csv(out / "points.csv")
    assert {"point_id", "metric", "sim", "meas", "ape", "overloaded", "formula"} <= set(long.columns)
    assert len(long) == 2 * 5 * 15
    text = (out / "report.md").read_text()
    assert "## Overall MAPE" in text and "tiny-c#0" in text
    assert "weighted-average (gemm_m=tokens, mode=guidellm): MAPE" in r.output


def test_cli_errors_exit_2(tmp_path):
    r = CliRunner().invoke(validate, ["--ground-truth", str(tmp_path / "missing"), "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "directory not found" in r.output
    r = CliRunner().invoke(validate, ["--ground-truth", str(FIXTURE), "--formula", "nope", "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "unknown" in r.output and "weighted-average" in r.output
    assert not (tmp_path / "o").exists()
    r = CliRunner().invoke(validate, ["--ground-truth", str(FIXTURE), "--calibration", "nope", "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "calibration" in r.output and not (tmp_path / "o").exists()


def test_cli_calibration_changes_the_simulated_values(tmp_path):
    args = ["--ground-truth", str(FIXTURE), "--executor", "serial", "--max-requests-per-point", "5", "-q", "--no-plots"]
    assert CliRunner().invoke(validate, [*args, "--calibration", "none", "-o", str(tmp_path / "a")]).exit_code == 0
    r = CliRunner().invoke(validate, [*args, "--calibration", "h100", "-o", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    a, b = (pd.read_csv(tmp_path / d / "points.csv") for d in ("a", "b"))
    assert len(a) == len(b) and not np.allclose(a["sim"], b["sim"], equal_nan=True)
    # without --formula: the seed's weighted average (--calibration none), or the calibration's primary formula
    from sim.cost.calibration import load_calibration

    assert set(a["formula"]) == {"weighted-average"} and set(b["formula"]) == {load_calibration("h100")["formula"]}


def test_study_script_tables_and_criteria():
    spec = importlib.util.spec_from_file_location("mixed_batch_study", ROOT / "scripts" / "mixed_batch_study.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # 2 synchronous + 2 rate points; additive 5pp better at rate, equal at synchronous
    rows = []
    for arm, _ in mod.ARMS:
        for i, level in enumerate(["synchronous", "synchronous", "rate", "rate"]):
            a = 0.20 if (arm != "additive" or level == "synchronous") else 0.15
            for metric in ("e2e_mean", "tpot_incl_ttft_mean"):
                rows.append(
                    {
                        "formula": arm,
                        "gemm_m": "requests",
                        "point_id": f"e#{i}",
                        "experiment": "e",
                        "workload": "chat",
                        "load_level": level,
                        "metric": metric,
                        "ape": a,
                    }
                )
    long = pd.DataFrame(rows)
    md, crit = mod.tables_for(long, {}, "requests")
    assert crit["overall"] == pytest.approx(0.025) and crit["c1"]
    assert crit["high"] == pytest.approx(0.05) and crit["c2"]
    assert crit["sync"] == pytest.approx(0.0) and crit["c3"]
    assert "+2.5pp" in md and "**PASS**" in md


# ------------------------------------------------------------------ the real shared data


def test_every_real_point_maps(ground_truth):
    pts = load_points(ground_truth)
    assert len(pts) >= 35
    for mode in ("guidellm", "study"):
        cfgs = points_to_configs(pts, gt_dir=ground_truth, mode=mode)
        assert len(cfgs) == len(pts)
    c = point_to_config(pts[pts["point_id"] == "jan20-codellama-prefill-1#0"].iloc[0], gt_dir=ground_truth)
    assert c.model == "codellama-34b" and c.server.num_gpu_blocks == 44640 // 16 and c.server.max_num_batched_tokens == 64
    # set C's later stages ran right after the first on the same server: the prompt pool is cached
    later = point_to_config(pts[pts["point_id"] == "20260217-231439-llama-2-7b-tp1-general#1"].iloc[0], gt_dir=ground_truth)
    assert later.workload.prompt_pool == 100 and later.workload.prompt_pool_warm


def test_set_c_traces_cycle_through_their_prompt_pool(ground_truth):
    """The evidence behind ``prompt_pool`` for set C: a request's prompt length equals that of
    the request ``num_groups x num_prompts_per_group`` earlier far more often than chance (the
    lengths spread over ~25 values), and the pool ids follow ``request_index`` across stages."""
    pts = load_points(ground_truth)
    c = pts[pts["harness"].str.contains("inference-perf", na=False)]
    assert len(c) >= 2
    for exp in c["experiment"].unique():
        cfg = point_to_config(c[c["experiment"] == exp].iloc[0], gt_dir=ground_truth)
        pool = cfg.workload.prompt_pool
        rows = pd.read_csv(cfg.workload.trace.path).sort_values("request_index")
        lengths = rows["prompt_tokens"].to_numpy()
        same = (lengths[pool:] == lengths[:-pool]).mean()
        shifted = (lengths[pool + 1 :] == lengths[: -pool - 1]).mean()  # not the period: chance level
        assert same > 0.95 and shifted < 0.5, (exp, same, shifted)


def test_validation_on_real_data(ground_truth):
    v = run_validation(ground_truth, lambda cfgs: run_many(cfgs, "serial"), experiments=("jan20-prefill-llama7b-tp1-1", "jan30-llama2-7b-tp1-codesweep"))
    assert v.settings["num_points"] == 6
    e2e = v.long[v.long["metric"] == "e2e_mean"].set_index("point_id")["ape"]
    assert np.isfinite(e2e).all()
    # the synchronous points are the roofline's home ground: within 50 % of the measured E2E
    assert e2e["jan20-prefill-llama7b-tp1-1#0"] < 0.5 and e2e["jan30-llama2-7b-tp1-codesweep#0"] < 0.5
    assert len(v.steps) == 5 and (v.steps["n_matched"] >= 38).all()


def test_full_validation_on_the_shared_data(ground_truth, tmp_path):
    """CI runs the whole validation on the measured data (every point, 500 requests per point
    at most): all points simulate, the report files are written, and the synchronous points —
    where the seed roofline is known to be fair — stay within 35 % E2E MAPE."""
    import pandas as pd
    from click.testing import CliRunner

    from sim.cli import main

    out = tmp_path / "val"
    res = CliRunner().invoke(
        main, ["validate", "--ground-truth", str(ground_truth), "--max-requests-per-point", "500", "--no-plots", "--quiet", "-o", str(out)]
    )
    assert res.exit_code == 0, res.output
    for name in ("report.md", "points.csv", "mape.csv"):
        assert (out / name).exists()
    pts = pd.read_csv(out / "points.csv")
    assert pts["point_id"].nunique() == len(load_points(ground_truth))
    e2e = pts[pts["metric"] == "e2e_mean"]
    assert np.isfinite(e2e["ape"]).all()
    mape = pd.read_csv(out / "mape.csv")
    sync = mape[(mape["subset"] == "all") & (mape["group_by"] == "load_level") & (mape["group"] == "synchronous") & (mape["metric"] == "e2e_mean")]
    assert len(sync) == 1 and sync["mape"].iloc[0] < 0.35
