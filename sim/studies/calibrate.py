"""Calibrating the roofline on a ground-truth directory: the fit and evaluation problems, one
formula's fit with leave-one-experiment-out CV and bootstrap replicates, and the calibration
document (the YAML that ``cost.calibration`` loads). Pure logic: simulations run through an
injected function, nothing is written here. Method: ``docs/calibration.md``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from sim.config import RunConfig
from sim.cost.calibration import CALIBRATION_SETTINGS, seed_knobs
from sim.errors import ConfigError
from sim.studies.calibrate_defaults import (  # noqa: F401  (re-exported: the pipeline's defaults)
    DEFAULT_BOOTSTRAP,
    DEFAULT_CALIBRATE_FORMULA,
    DEFAULT_EVAL_MAX_REQUESTS,
    DEFAULT_FIT_MAX_REQUESTS,
    DEFAULT_MAXFEV,
)
from sim.studies.fit import (
    DEFAULT_FIT_KNOBS,
    REPORT_METRICS,
    Evaluator,
    Fold,
    Problem,
    bootstrap_weights,
    fit_direct,
    fit_surrogate,
    linearise,
    loeo_folds,
    sim_matrix,
    unit_to_knobs,
    with_knobs,
)
from sim.studies.groundtruth import load_points
from sim.studies.intervals import interval_from_samples
from sim.studies.point_configs import measured_for_point, point_to_config
from sim.studies.scoring import ape, overload_flags

TARGETS = {"e2e_mean": 0.08, "tpot_mean": 0.08, "ttft_mean": 0.15}
SummariesFn = Callable[[list[RunConfig]], list[dict]]


def build_problems(
    gt_dir,
    base: RunConfig,
    *,
    formula: str,
    gemm_m: str,
    bench_data_dir,
    fit_cap: int | None,
    eval_cap: int | None,
    gpu: str | None = None,
    experiments: Sequence[str] = (),
) -> tuple[Problem, Problem]:
    """(fitting problem, evaluation problem): the same points simulated with the fitting and
    the evaluation request caps; measured values recomputed over the simulated requests."""
    points = load_points(gt_dir)
    if experiments:
        unknown = sorted(set(experiments) - set(points["experiment"]))
        if unknown:
            raise ConfigError(f"--experiment: unknown experiment(s) {', '.join(unknown)}")
        points = points[points["experiment"].isin(experiments)].reset_index(drop=True)
    points = pd.concat([points, overload_flags(points)], axis=1)
    from sim.studies.point_configs import gpu_name_of

    gpus = points.apply(gpu_name_of, axis=1)
    if gpu is not None:
        from sim.catalogue.hardware import resolve_gpu

        want = resolve_gpu(gpu).name
        points = points[gpus == want].reset_index(drop=True)
        if points.empty:
            raise ConfigError(f"--gpu: no measured point on {want}; the data has: {', '.join(sorted(set(gpus)))}")
    elif gpus.nunique() > 1:
        raise ConfigError(f"the data holds several GPUs ({', '.join(sorted(set(gpus)))}); choose one with --gpu (one calibration per GPU)")
    out = []
    for cap in (fit_cap, eval_cap):
        cfgs = [
            point_to_config(p, base, gt_dir=gt_dir, formula=formula, gemm_m=gemm_m, bench_data_dir=bench_data_dir, max_requests_per_point=cap)
            for _, p in points.iterrows()
        ]
        meas = [measured_for_point(p, gt_dir, cfgs[i])[0] for i, (_, p) in enumerate(points.iterrows())]
        out.append(Problem(points.copy(), cfgs, meas))
    return out[0], out[1]


@dataclass
class FormulaResult:
    formula: str
    knobs: dict[str, float]
    fit_objective: float
    folds: list[Fold]
    boot_knobs: list[dict[str, float]]
    table: pd.DataFrame  # per point × metric
    residuals_log: dict[str, list[float]]
    timings: dict[str, float] = field(default_factory=dict)
    nfev: int = 0


def calibrate_formula(
    fit_pb: Problem,
    eval_pb: Problem,
    summaries: SummariesFn,
    *,
    names=DEFAULT_FIT_KNOBS,
    fixed: dict[str, float] | None = None,
    maxfev: int = DEFAULT_MAXFEV,
    n_boot: int = DEFAULT_BOOTSTRAP,
    level: float = 0.9,
    boot_seed: int = 0,
    formula: str = "",
    log: Callable[[str], None] = lambda s: None,
    cv_refit_maxfev: int = 0,
) -> FormulaResult:
    """Fit, LOEO cross-validation, bootstrap and intervals for one formula (see module doc).
    ``fixed``: knobs held at given values (not fitted) in every fit, fold and replicate.
    ``cv_refit_maxfev`` > 0: each fold is then refitted by simulation on its training points
    (that many simulations, started from the surrogate's fold knobs) instead of taking the
    surrogate's knobs; the bootstrap replicates stay surrogate-based."""
    t: dict[str, float] = {}
    fit_ev, eval_ev = Evaluator(fit_pb, summaries), Evaluator(eval_pb, summaries)
    gpu = fit_pb.configs[0].gpu
    seed = seed_knobs(gpu)
    mask = fit_pb.fit_mask()
    train_all = [i for i in range(len(mask)) if mask[i]]
    all_idx = list(range(len(mask)))

    t0 = time.perf_counter()
    fit = fit_direct(fit_ev, train_all, names, fixed=fixed, maxfev=maxfev)
    t["fit_s"] = time.perf_counter() - t0
    log(f"[{formula}] fit: objective {fit.objective:.4f} after {fit.nfev} evaluations ({t['fit_s']:.0f} s)")

    t0 = time.perf_counter()
    lin = linearise(fit_ev, fit.knobs, names, all_idx)
    meas_fit = fit_pb.meas_matrix()

    # The surrogate's own optimum on all training points (u_all) differs from the simulated
    # fit (u0) by the linearisation's bias; a fold or replicate moves the fit by the surrogate's
    # *change* (u_fold - u_all), which cancels that bias (a one-step jackknife/bootstrap).
    w_all = mask.astype(float)
    u_all = fit_surrogate(lin, meas_fit, w_all)

    def shifted(w: np.ndarray) -> dict[str, float]:
        u = np.clip(lin.u0 + fit_surrogate(lin, meas_fit, w) - u_all, 0.0, 1.0)
        return unit_to_knobs(u, names, lin.fixed)

    def refit(train_idx: list[int]) -> dict[str, float]:
        w = np.zeros(len(mask))
        w[train_idx] = 1.0
        knobs = shifted(w)
        if cv_refit_maxfev > 0:  # refine by simulation; a small simplex: the start is close
            knobs = fit_direct(fit_ev, train_idx, names, start=knobs, fixed=fixed, maxfev=cv_refit_maxfev, step=0.05).knobs
        return knobs

    folds = loeo_folds(fit_pb, refit)
    bw = bootstrap_weights(fit_pb.points["experiment"].astype(str), mask, n_boot, seed=boot_seed)
    boot = [shifted(bw[b]) for b in range(n_boot)]
    t["surrogate_s"] = time.perf_counter() - t0

    # real simulations: seed model, in-sample fit, cross-validated folds (evaluation cap)
    t0 = time.perf_counter()
    # the seed model: seed knobs and the seed's settings (unset, no calibration: the seed's values)
    seed_cfgs = [with_knobs(c, seed) for c in eval_pb.configs]
    seed_cfgs = [c.model_copy(update={"cost": c.cost.model_copy(update=dict.fromkeys(CALIBRATION_SETTINGS))}) for c in seed_cfgs]
    sims_seed = sim_matrix(summaries(seed_cfgs), REPORT_METRICS)
    sims_fit = sim_matrix(eval_ev.summaries(fit.knobs, all_idx), REPORT_METRICS)
    pid_to_i = {p: i for i, p in enumerate(eval_pb.points["point_id"])}
    sims_cv = np.full_like(sims_fit, np.nan)
    # one batch for all folds: every held-out point at its own fold's knobs
    cfgs, where = [], []

    for f in folds:
        for pid in f.test_point_ids:
            i = pid_to_i[pid]
            cfgs.append(with_knobs(eval_pb.configs[i], f.knobs))
            where.append(i)
    for i, s in zip(where, summaries(cfgs)):
        sims_cv[i] = sim_matrix([s], REPORT_METRICS)[0]
    t["eval_s"] = time.perf_counter() - t0

    # bootstrap replicates (fitting cap, own seed each) around the fit at the same cap
    t0 = time.perf_counter()
    center_fit = sim_matrix(fit_ev.summaries(fit.knobs, all_idx), REPORT_METRICS)
    base_seed = fit_pb.configs[0].seed
    spreads = []
    for b, k in enumerate(boot):
        sb = sim_matrix(fit_ev.summaries(k, all_idx, seed=base_seed + b + 1), REPORT_METRICS)
        with np.errstate(divide="ignore", invalid="ignore"):
            spreads.append(np.log(sb / center_fit))
    spread = np.array(spreads) if spreads else np.zeros((0,) + center_fit.shape)
    t["bootstrap_s"] = time.perf_counter() - t0
    log(f"[{formula}] surrogate {t['surrogate_s']:.0f} s, evaluation {t['eval_s']:.0f} s, bootstrap {t['bootstrap_s']:.0f} s")

    meas = eval_pb.meas_matrix(REPORT_METRICS)
    with np.errstate(divide="ignore", invalid="ignore"):
        resid = np.log(meas / sims_cv)
    exps = eval_pb.points["experiment"].astype(str).to_numpy()
    rows = []
    for i, p in eval_pb.points.iterrows():
        for j, (metric, _, _) in enumerate(REPORT_METRICS):
            others = [resid[k, j] for k in range(len(exps)) if exps[k] != exps[i] and mask[k] and math.isfinite(resid[k, j])]
            lo, hi = interval_from_samples(sims_cv[i, j], spread[:, i, j] if len(spread) else [], others, level)
            rows.append(
                {
                    "formula": formula,
                    "point_id": p["point_id"],
                    "experiment": p["experiment"],
                    "dataset": p.get("dataset"),
                    "strategy": p["strategy"],
                    "overloaded": bool(p["overloaded"]),
                    "metric": metric,
                    "meas": meas[i, j],
                    "seed": sims_seed[i, j],
                    "fit": sims_fit[i, j],
                    "cv": sims_cv[i, j],
                    "lo": lo,
                    "hi": hi,
                    "ape_seed": ape(sims_seed[i, j], meas[i, j]),
                    "ape_fit": ape(sims_fit[i, j], meas[i, j]),
                    "ape_cv": ape(sims_cv[i, j], meas[i, j]),
                }
            )
    table = pd.DataFrame(rows)
    resid_out = {m: [float(x) for x in resid[mask, j] if math.isfinite(x)] for j, (m, _, _) in enumerate(REPORT_METRICS)}
    return FormulaResult(formula, fit.knobs, fit.objective, folds, boot, table, resid_out, t, fit.nfev)


def mape_summary(table: pd.DataFrame, by: str | None = None, subset: str = "not_overloaded") -> pd.DataFrame:
    """MAPE of seed / in-sample fit / CV per metric (and group), plus 90 % interval coverage."""
    d = table if subset == "all" else table[~table["overloaded"]]
    d = d[np.isfinite(d["meas"].astype(float))]
    keys = ["formula"] + ([by] if by else []) + ["metric"]
    d = d.assign(inside=(d["meas"] >= d["lo"]) & (d["meas"] <= d["hi"]))
    g = d.groupby(keys, sort=True)
    return g.agg(n=("meas", "size"), seed=("ape_seed", "mean"), fit=("ape_fit", "mean"), cv=("ape_cv", "mean"), coverage=("inside", "mean")).reset_index()


def _formula_section(r: FormulaResult, settings: dict) -> dict[str, Any]:
    """What a calibration holds per formula: knobs, CV figures, residuals, bootstrap knobs."""
    s = mape_summary(r.table)
    cv = {f"{x.metric}_mape": round(float(x.cv), 4) for x in s.itertuples()}
    cov = {f"{x.metric}": round(float(x.coverage), 4) for x in s.itertuples()}
    return {
        "knobs": {k: round(float(v), 6) for k, v in r.knobs.items()},
        "fitted_knobs": list(settings["knobs"]),
        "cross_validation": {"not_overloaded": cv, "interval_level": settings["level"], "interval_coverage": cov},
        "residuals_log": {k: [round(x, 5) for x in v] for k, v in r.residuals_log.items()},
        "bootstrap": [{k: round(float(v), 6) for k, v in b.items()} for b in r.boot_knobs],
    }


def calibration_document(results: Sequence[FormulaResult], settings: dict, name: str) -> dict[str, Any]:
    """The calibration YAML: the first formula's section at the top level (its primary
    formula) and, with several formulas, every formula's section under ``formulas``."""
    first = _formula_section(results[0], settings)
    doc = {
        "name": name,
        "gpu": settings["gpu"],
        "formula": results[0].formula,
        "gemm_m": settings["gemm_m"],
        **{k: settings[k] for k in CALIBRATION_SETTINGS},
        "knobs": first["knobs"],
        "fitted_knobs": first["fitted_knobs"],
        "provenance": {
            "data": settings["ground_truth"],
            "date": settings["date"],
            "command": settings["command"],
            "n_points": settings["n_points"],
            "n_experiments": settings["n_experiments"],
            "fit_max_requests_per_point": settings["fit_max_requests"],
            "eval_max_requests_per_point": settings["eval_max_requests"],
            "cv_refit_maxfev": settings.get("cv_refit_maxfev", 0),
            "mfu_tables": settings["bench_data"],
            "servesim_version": settings["version"],
        },
        "cross_validation": first["cross_validation"],
        "residuals_log": first["residuals_log"],
        "bootstrap": first["bootstrap"],
    }
    if len(results) > 1:
        doc["formulas"] = {r.formula: _formula_section(r, settings) for r in results[1:]}
    return doc
