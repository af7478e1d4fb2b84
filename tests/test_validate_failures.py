"""``servesim validate`` compares failed requests: simulated (timed out + rejected) against
measured (n_errored + n_incomplete), with each point's client given the request timeout its
harness used (a points.csv ``request_timeout_s`` cell wins over the raw harness config).

The ground-truth directory is built at run time in a temporary folder from the shared measured
data (skipped when it is absent; ``requests/`` and ``model_configs/`` are symlinked, never
copied): four points of set B and set A, one with a tiny ``request_timeout_s`` so that every
request it sends times out. Harness configs stating a timeout are written by the tests
themselves.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from conftest import GROUND_TRUTH

from sim.cli.validate import validate
from sim.config import parse_run_config
from sim.errors import ConfigError
from sim.studies.executor import run_many
from sim.studies.groundtruth import harness_request_timeout, load_points
from sim.studies.point_configs import point_to_config, request_timeout_for_point

TIMED_POINT = "jan20-prefill-llama7b-tp1-1#0"  # synchronous, CodeLlama-34B, ~3k-token prompts
TINY_TIMEOUT_S = 0.05  # far below the prefill of one ~3k-token prompt on a 34B model
POINTS = (
    TIMED_POINT,
    "jan20-prefill-llama7b-tp1-1#2",  # constant rate, no timeout, nothing failed
    "jan20-prefill-llama7b-tp1-1#4",  # constant rate, no timeout, 2 measured errors
    "jan30-llama2-7b-tp1-chatsweep#0",  # set A: no counts measured
)
MAX_REQUESTS = 6
SEED = 42


def _pid(df: pd.DataFrame) -> pd.Series:
    return df["experiment"].astype(str) + "#" + df["benchmark_index"].astype(str)


@pytest.fixture(scope="module")
def gt(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """(ground-truth dir, its points.csv as written): :data:`POINTS`, with ``request_timeout_s``
    = :data:`TINY_TIMEOUT_S` on :data:`TIMED_POINT` only."""
    if not GROUND_TRUTH.is_dir():
        pytest.skip(f"ground-truth data not found at {GROUND_TRUTH} (set SERVESIM_GROUND_TRUTH)")
    src = pd.read_csv(GROUND_TRUTH / "points.csv")
    df = src[_pid(src).isin(POINTS)].copy()
    assert len(df) == len(POINTS), "the shared points this test uses are missing"
    df["request_timeout_s"] = np.where(_pid(df) == TIMED_POINT, TINY_TIMEOUT_S, np.nan)
    root = tmp_path_factory.mktemp("failures_gt")
    df.to_csv(root / "points.csv", index=False)
    for sub in ("requests", "model_configs"):
        (root / sub).symlink_to(GROUND_TRUTH / sub, target_is_directory=True)
    return root, df.assign(point_id=_pid(df)).set_index("point_id")


@pytest.fixture(scope="module")
def failures(gt, tmp_path_factory) -> pd.DataFrame:
    """failures.csv of one ``servesim validate`` run of :func:`gt`."""
    root, _ = gt
    out = tmp_path_factory.mktemp("failures_out") / "val"
    args = ["--ground-truth", str(root), "--executor", "serial", "--max-requests-per-point", str(MAX_REQUESTS), "--seed", str(SEED), "--no-plots", "-q"]
    res = CliRunner().invoke(validate, [*args, "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "failed requests over the" in res.output
    report = (out / "report.md").read_text()
    assert "## Failed requests (sim / meas)" in report
    assert "Client request timeouts simulated at 1 of 4 points: 0.05 s from `points.csv` (1 point)" in report
    long = pd.read_csv(out / "points.csv")
    assert "failures" not in set(long["metric"])  # counts are not scored by APE
    return pd.read_csv(out / "failures.csv").set_index("point_id")


def test_simulated_failures_only_where_a_timeout_applies(failures):
    assert set(failures.index) == set(POINTS)
    timed = failures["request_timeout_s"].notna()
    assert list(failures.index[timed]) == [TIMED_POINT]
    assert failures.at[TIMED_POINT, "request_timeout_s"] == pytest.approx(TINY_TIMEOUT_S)
    assert failures.at[TIMED_POINT, "timeout_source"] == "points.csv"
    assert ((failures["sim_failures"] > 0) == timed).all()
    assert (failures["sim_failures"] == failures["sim_timed_out"] + failures["sim_rejected"]).all()


def test_simulated_failures_equal_the_timed_out_rows_of_the_simulation(gt, failures):
    root, _ = gt
    row = failures.loc[TIMED_POINT]
    point = load_points(root).set_index("point_id").loc[TIMED_POINT].to_dict() | {"point_id": TIMED_POINT}
    base = parse_run_config({"seed": SEED, "cost": {"model": "roofline"}})
    cfg = point_to_config(point, base, gt_dir=root, formula=row["formula"], gemm_m=row["gemm_m"], max_requests_per_point=MAX_REQUESTS)
    assert cfg.arrival.request_timeout_s == pytest.approx(TINY_TIMEOUT_S)
    status = run_many([cfg], "serial")[0].requests["status"]
    assert (status == "timed_out").sum() == row["sim_timed_out"] == row["sim_failures"] == MAX_REQUESTS
    assert (status == "rejected").sum() == row["sim_rejected"] == 0
    assert row["sim_requests"] == len(status)


def test_measured_failures_are_errored_plus_incomplete(gt, failures):
    _, written = gt
    for pid in POINTS:
        errored, incomplete = written.at[pid, "n_errored"], written.at[pid, "n_incomplete"]
        row = failures.loc[pid]
        if pd.isna(errored) or pd.isna(incomplete):
            assert math.isnan(row["meas_failures"]) and math.isnan(row["abs_err"]), pid
            continue
        assert row["meas_failures"] == errored + incomplete, pid
        assert row["meas_requests"] == written.at[pid, "n_successful"] + errored + incomplete, pid
        assert row["abs_err"] == abs(row["sim_failures"] - row["meas_failures"]), pid
    assert failures.at["jan20-prefill-llama7b-tp1-1#4", "meas_failures"] == 2


# ------------------------------------------------------------------ where the timeout comes from


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))


INFERENCE_PERF = {"load": {"type": "constant", "stages": [{"rate": 5, "duration": 600}]}}


def test_harness_config_timeout(tmp_path):
    exp = tmp_path / "experiments"
    assert harness_request_timeout(tmp_path, "none") is None  # no config at all
    # guidellm's timeout is httpx's read timeout: never an end-to-end bound
    _write(exp / "g" / "profile.yaml", {"rate-type": "sweep", "max-requests": 40, "data": {}, "backend-args": {"timeout": 5}})
    assert harness_request_timeout(tmp_path, "g") is None
    # inference-perf: the resolved config decides, also when it says null
    _write(exp / "ip" / "profile.yaml", {**INFERENCE_PERF, "load": {**INFERENCE_PERF["load"], "request_timeout": 90}})
    assert harness_request_timeout(tmp_path, "ip") == (90.0, "experiments/ip/profile.yaml")
    _write(exp / "ip" / "results" / "config.yaml", {**INFERENCE_PERF, "load": {**INFERENCE_PERF["load"], "request_timeout": None}})
    assert harness_request_timeout(tmp_path, "ip") is None
    _write(exp / "ip" / "results" / "config.yaml", {**INFERENCE_PERF, "load": {**INFERENCE_PERF["load"], "request_timeout": 30}})
    assert harness_request_timeout(tmp_path, "ip") == (30.0, "experiments/ip/results/config.yaml")
    _write(exp / "bad" / "profile.yaml", {**INFERENCE_PERF, "load": {**INFERENCE_PERF["load"], "request_timeout": -1}})
    with pytest.raises(ConfigError, match="load.request_timeout"):
        harness_request_timeout(tmp_path, "bad")
    # a points.csv cell wins; a blank one falls back on the harness config
    assert request_timeout_for_point({"experiment": "ip", "request_timeout_s": 2.5}, tmp_path) == (2.5, "points.csv")
    assert request_timeout_for_point({"experiment": "ip", "request_timeout_s": math.nan}, tmp_path) == (30.0, "experiments/ip/results/config.yaml")
    assert request_timeout_for_point({"experiment": "g"}, tmp_path) == (None, "")


def test_shared_harness_configs_state_no_timeout(gt):
    root, written = gt
    for exp in {p.split("#")[0] for p in POINTS} | {"20260217-155451-llama-2-7b-tp1-codegen"}:
        assert harness_request_timeout(GROUND_TRUTH, exp) is None, exp
    points = load_points(root).set_index("point_id")
    for pid in POINTS:
        cfg = point_to_config(points.loc[pid].to_dict() | {"point_id": pid}, gt_dir=root, mode="study")
        assert cfg.arrival.request_timeout_s is None, pid  # the study's harness had none
    assert written["request_timeout_s"].notna().sum() == 1


def test_bad_timeout_column_is_a_config_error(gt, tmp_path):
    root, written = gt
    written.reset_index(drop=True).assign(request_timeout_s=[0.0, None, None, None]).to_csv(tmp_path / "points.csv", index=False)
    with pytest.raises(ConfigError, match="request_timeout_s"):
        load_points(tmp_path)
