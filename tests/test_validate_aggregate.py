"""``servesim validate`` on aggregate-only ground truth: points with means and percentiles but no
per-request file, some metrics blank on a point or absent from points.csv altogether.

The fixture directory is built at run time in a temporary folder from the shared measured data
(skipped when it is absent): three points (sets A, B and C), ``per_request_file`` blanked, the
``tpot_incl_ttft_mean_ms`` column dropped and ``ttft_mean_ms`` blanked on one point.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import GROUND_TRUTH

from sim.cli.validate import validate
from sim.studies.groundtruth import load_points

POINTS = {
    "jan20-prefill-llama7b-tp1-1#0": "B, synchronous",
    "jan30-llama2-7b-tp1-chatsweep#0": "A, synchronous means only",
    "20260217-155451-llama-2-7b-tp1-codegen#0": "C, Poisson",
}
BLANKED_POINT = "20260217-155451-llama-2-7b-tp1-codegen#0"  # its ttft_mean_ms is made blank
BLANKED_METRIC = ("ttft_mean", "ttft_mean_ms")
ABSENT = ("tpot_incl_ttft_mean", "tpot_incl_ttft_mean_ms")  # column dropped from points.csv
MAX_REQUESTS = 5


def _cli_args(gt: Path, out: Path) -> list[str]:
    return ["--ground-truth", str(gt), "--executor", "serial", "--max-requests-per-point", str(MAX_REQUESTS), "--no-plots", "-q", "-o", str(out)]


@pytest.fixture(scope="module")
def aggregate_gt(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """(ground-truth dir, its points.csv as written) with aggregate-only points."""
    if not GROUND_TRUTH.is_dir():
        pytest.skip(f"ground-truth data not found at {GROUND_TRUTH} (set SERVESIM_GROUND_TRUTH)")
    src = pd.read_csv(GROUND_TRUTH / "points.csv")
    pid = src["experiment"].astype(str) + "#" + src["benchmark_index"].astype(str)
    df = src[pid.isin(list(POINTS))].copy()
    assert len(df) == len(POINTS), "the shared points this test uses are missing"
    df["per_request_file"] = np.nan
    df = df.drop(columns=[ABSENT[1]])
    blank = (df["experiment"].astype(str) + "#" + df["benchmark_index"].astype(str)) == BLANKED_POINT
    df.loc[blank, BLANKED_METRIC[1]] = np.nan
    gt = tmp_path_factory.mktemp("aggregate_gt")
    df.to_csv(gt / "points.csv", index=False)
    (gt / "model_configs").symlink_to(GROUND_TRUTH / "model_configs", target_is_directory=True)
    return gt, df


@pytest.fixture(scope="module")
def run(aggregate_gt, tmp_path_factory) -> tuple[Path, object]:
    """(output dir, click result) of one validation of the aggregate-only directory."""
    gt, _ = aggregate_gt
    out = tmp_path_factory.mktemp("aggregate_out") / "val"
    return out, CliRunner().invoke(validate, _cli_args(gt, out))


def test_fixture_is_aggregate_only(aggregate_gt):
    gt, _ = aggregate_gt
    pts = load_points(gt)
    assert not (gt / "requests").exists()
    assert pts["per_request_file"].isna().all()
    assert pts[ABSENT[1]].isna().all()  # an absent column loads as blank


def test_run_exits_0_and_writes_outputs(run):
    out, res = run
    assert res.exit_code == 0, res.output
    for name in ("points.csv", "mape.csv", "settings.json", "report.md"):
        assert (out / name).is_file(), name
    long = pd.read_csv(out / "points.csv")
    assert set(long["point_id"]) == set(POINTS)
    assert "## Per point" in (out / "report.md").read_text()


def test_missing_metric_is_nan_and_left_out_of_its_mape(run):
    out, res = run
    assert res.exit_code == 0, res.output
    long = pd.read_csv(out / "points.csv")
    mt = pd.read_csv(out / "mape.csv")
    metric = BLANKED_METRIC[0]
    rows = long[long["metric"] == metric].set_index("point_id")
    assert math.isnan(rows.at[BLANKED_POINT, "meas"]) and math.isnan(rows.at[BLANKED_POINT, "ape"])
    others = rows.drop(index=BLANKED_POINT)
    assert np.isfinite(others["ape"]).all()
    by_hand = float(np.mean(np.abs(others["sim"] - others["meas"]) / others["meas"]))
    overall = mt[(mt["subset"] == "all") & (mt["group_by"] == "overall") & (mt["metric"] == metric)]
    assert len(overall) == 1
    assert int(overall["n"].iloc[0]) == len(others)
    assert overall["mape"].iloc[0] == pytest.approx(by_hand, rel=1e-4)  # the table holds 6 digits
    # a metric no point measured: NaN everywhere, no MAPE row at all (never a zero error)
    absent = long[long["metric"] == ABSENT[0]]
    assert len(absent) == len(POINTS) and absent["meas"].isna().all() and absent["ape"].isna().all()
    assert absent["sim"].notna().all()  # it was still simulated
    assert not (mt["metric"] == ABSENT[0]).any()


def test_point_without_requests_file_gets_its_means_compared(run, aggregate_gt):
    out, res = run
    assert res.exit_code == 0, res.output
    _, written = aggregate_gt
    written = written.assign(point_id=written["experiment"].astype(str) + "#" + written["benchmark_index"].astype(str)).set_index("point_id")
    long = pd.read_csv(out / "points.csv")
    assert (long["meas_source"] == "points.csv").all()
    assert (long["sim_requests"] <= MAX_REQUESTS).all()
    for pid in POINTS:
        for metric in ("ttft_mean", "tpot_mean", "e2e_mean"):
            meas = written.at[pid, f"{metric}_ms"]
            row = long[(long["point_id"] == pid) & (long["metric"] == metric)].iloc[0]
            if pd.isna(meas):
                assert math.isnan(row["ape"]), (pid, metric)
                continue
            assert row["meas"] == pytest.approx(meas, rel=1e-5), (pid, metric)
            # the table holds rounded values: compare at their precision
            assert row["ape"] == pytest.approx(abs(row["sim"] - row["meas"]) / row["meas"], rel=1e-3, abs=1e-5), (pid, metric)
        e2e = long[(long["point_id"] == pid) & (long["metric"] == "e2e_mean")]["ape"].iloc[0]
        assert np.isfinite(e2e), pid


def test_tables_survive_a_report_failure(aggregate_gt, tmp_path, monkeypatch):
    gt, _ = aggregate_gt

    def broken(v):
        raise RuntimeError("report rendering broke")

    monkeypatch.setattr("sim.cli.validate.render_report", broken)
    out = tmp_path / "val"
    res = CliRunner().invoke(validate, _cli_args(gt, out))
    assert res.exit_code == 1
    assert "report rendering broke" in res.output
    assert (out / "points.csv").is_file() and (out / "mape.csv").is_file()
    assert not (out / "report.md").exists()
    assert set(pd.read_csv(out / "points.csv")["point_id"]) == set(POINTS)
