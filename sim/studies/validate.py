"""Validation: simulate every measured point of a ground-truth directory and score it.

:func:`run_validation` is the library form of ``servesim validate`` (also used by
``scripts/mixed_batch_study.py``); it runs simulations through an injected executor and
returns tables, writing nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from sim.config import RunConfig, parse_run_config
from sim.cost.combine import DEFAULT_FORMULA
from sim.errors import ConfigError
from sim.studies.groundtruth import load_points, load_server_spans
from sim.studies.point_configs import DEFAULT_MAX_REQUESTS_PER_POINT, measured_for_point, point_to_config, request_timeout_for_point
from sim.studies.scoring import compare_points, failure_table, mape_table, overload_flags, step_check


@dataclass
class ValidationResult:
    points: pd.DataFrame  # the measured points (with overloaded flags)
    long: pd.DataFrame  # per (formula, gemm_m, point, metric)
    mape: pd.DataFrame
    steps: pd.DataFrame  # per-step check rows
    settings: dict = field(default_factory=dict)
    sim_summaries: dict = field(default_factory=dict)  # (formula, gemm_m, point_id) -> summary
    # per (formula, gemm_m, point): simulated vs measured failed requests (scoring.failure_table)
    failures: pd.DataFrame = field(default_factory=pd.DataFrame)


RunMany = Callable[[list[RunConfig]], list]


def run_validation(
    gt_dir: str | Path,
    run_many: RunMany,
    *,
    formulas: Sequence[str] = (DEFAULT_FORMULA,),
    gemm_ms: Sequence[str] = ("tokens",),
    mode: str = "guidellm",
    bench_data_dir: str | Path | None = None,
    max_requests_per_point: int | None = DEFAULT_MAX_REQUESTS_PER_POINT,
    experiments: Sequence[str] = (),
    base: RunConfig | None = None,
) -> ValidationResult:
    """Simulate every point for every (formula, gemm_m); compare with the measurements.

    Points may be aggregate-only (no per-request file: the configured length distributions of
    points.csv are simulated) and may lack any measured metric (blank cell, or the column absent
    from points.csv): such a (point, metric) has ``meas`` and ``ape`` NaN in ``long`` and is left
    out of that metric's MAPE and count in ``mape``; the other metrics of the point are scored.

    Each point's simulated client has the request timeout its harness used
    (:func:`~sim.studies.point_configs.request_timeout_for_point`; none in ``study`` mode), and
    ``failures`` compares its failed requests (timed out + rejected) with the measured ones
    (errored + incomplete) by count (:func:`~sim.studies.scoring.failure_table`).
    """
    points = load_points(gt_dir)
    if experiments:
        unknown = sorted(set(experiments) - set(points["experiment"]))
        if unknown:
            raise ConfigError(f"--experiment: unknown experiment(s) {', '.join(unknown)}; the data has: {', '.join(sorted(set(points['experiment'])))}")
        points = points[points["experiment"].isin(experiments)].reset_index(drop=True)
    if base is None:
        base = parse_run_config({"cost": {"model": "roofline"}})
    from sim.cost.combine import FORMULAS

    for f in formulas:
        FORMULAS.get(f, "--formula")  # ConfigError listing the valid names
    combos = [(f, g) for g in gemm_ms for f in formulas]
    cfgs, keys = [], []
    for f, g in combos:
        for _, p in points.iterrows():
            cfgs.append(
                point_to_config(
                    p, base, gt_dir=gt_dir, formula=f, gemm_m=g, mode=mode, bench_data_dir=bench_data_dir, max_requests_per_point=max_requests_per_point
                )
            )
            keys.append((f, g, p["point_id"]))
    results = run_many(cfgs)
    n = len(points)
    longs, fails, step_rows, sums = [], [], [], {}
    measured = [measured_for_point(p, gt_dir, cfgs[i]) for i, (_, p) in enumerate(points.iterrows())]
    # the point's timeout is the same for every (formula, gemm_m): its value is cfgs[i]'s
    timeouts = [
        (cfgs[i].arrival.request_timeout_s, request_timeout_for_point(p, gt_dir)[1] if cfgs[i].arrival.request_timeout_s is not None else "")
        for i, (_, p) in enumerate(points.iterrows())
    ]
    spans_cache: dict[str, pd.DataFrame | None] = {}
    for c, (f, g) in enumerate(combos):
        res = results[c * n : (c + 1) * n]
        cf = cfgs[c * n : (c + 1) * n]
        longs.append(
            compare_points(
                points,
                [r.summary for r in res],
                [m for m, _ in measured],
                extra={
                    "formula": [f] * n,
                    "gemm_m": [g] * n,
                    "meas_source": [s for _, s in measured],
                    "sim_requests": [int(r.summary["num_requests"]) for r in res],
                },
            )
        )
        fails.append(failure_table(points, [r.summary for r in res], timeouts, extra={"formula": [f] * n, "gemm_m": [g] * n}))
        for i, (_, p) in enumerate(points.iterrows()):
            sums[(f, g, p["point_id"])] = res[i].summary
            if cf[i].workload.trace is None:
                continue
            exp = p["experiment"]
            if exp not in spans_cache:
                spans_cache[exp] = load_server_spans(gt_dir, exp)
            spans = spans_cache[exp]
            if spans is None:
                continue
            sp = spans[spans["benchmark_index"] == p["benchmark_index"]]
            if sp.empty:
                continue
            step_rows.append(
                {"formula": f, "gemm_m": g, "point_id": p["point_id"], "experiment": exp, "strategy": p["strategy"], **step_check(res[i].requests, sp)}
            )
    long = pd.concat(longs, ignore_index=True)
    mt = mape_table(long, keys=("formula", "gemm_m"))
    pts = pd.concat([points, overload_flags(points)], axis=1)
    settings = {
        "ground_truth": str(gt_dir),
        "mode": mode,
        "formulas": list(formulas),
        "gemm_m": list(gemm_ms),
        "bench_data_dir": str(bench_data_dir) if bench_data_dir else None,
        "max_requests_per_point": max_requests_per_point,
        "seed": base.seed,
        "num_points": n,
    }
    return ValidationResult(pts, long, mt, pd.DataFrame(step_rows), settings, sums, pd.concat(fails, ignore_index=True))
