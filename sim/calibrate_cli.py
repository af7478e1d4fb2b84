"""``servesim calibrate``: fit the roofline's calibration knobs to a ground-truth directory,
cross-validate them leave-one-experiment-out, bootstrap prediction intervals, and save the
result as a named calibration that ``run``/``sweep`` load with ``cost.calibration``
(``--set cost.calibration=h100`` or a path). Method: :mod:`sim.calibration`,
``docs/calibration.md``.

Outputs in OUTDIR::

    calibration-<gpu>.yaml   the fitted knobs + provenance + interval data (load it by path, or
                             copy to sim/data/calibrations/<name>.yaml to ship it)
    report.md                fitted values, CV MAPE per metric / experiment next to the seed
                             model for each formula, interval coverage
    cv_points.csv            per formula × point × metric: seed, in-sample, CV value, interval
    plots/cv_<formula>.png   measured vs cross-validated prediction with 90 % intervals

Library helpers for ``run``/``sweep`` (``--intervals``): :func:`intervals_for_configs`.
"""

from __future__ import annotations

import datetime as _dt
import io
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import click
import numpy as np
import pandas as pd

from .calibration import (
    CALIBRATION_SETTINGS,
    DEFAULT_FIT_KNOBS,
    FIT_METRICS,
    KNOB_NAMES,
    KNOBS,
    REPORT_METRICS,
    Evaluator,
    Fold,
    Problem,
    available_calibrations,
    bootstrap_weights,
    calibration_for,
    calibration_formulas,
    calibration_section,
    coverage,
    fit_direct,
    fit_surrogate,
    interval_configs,
    interval_from_samples,
    linearise,
    load_calibration,
    loeo_folds,
    seed_knobs,
    sim_matrix,
    summary_intervals,
    unit_to_knobs,
    with_knobs,
)
from .config import RunConfig, parse_run_config
from .errors import ConfigError
from .groundtruth import load_points, measured_for_point, point_to_config
from .validate import ape, overload_flags

DEFAULT_FIT_MAX_REQUESTS = 200
DEFAULT_EVAL_MAX_REQUESTS = 1000
DEFAULT_BOOTSTRAP = 8
DEFAULT_MAXFEV = 50
# the formula that cross-validated best on the shipped H100 data (docs/calibration.md:
# smooth-wa 11.5 / 6.5 / 8.3 % CV E2E / TPOT / TTFT, weighted-average 32.1 / 14.8 / 43.6 %)
DEFAULT_CALIBRATE_FORMULA = "smooth-wa"
TARGETS = {"e2e_mean": 0.08, "tpot_mean": 0.08, "ttft_mean": 0.15}

SummariesFn = Callable[[list[RunConfig]], list[dict]]


# ---------------------------------------------------------------------------- building the problem


def build_problems(gt_dir, base: RunConfig, *, formula: str, gemm_m: str, bench_data_dir, fit_cap: int | None,
                   eval_cap: int | None, gpu: str | None = None, experiments: Sequence[str] = ()) -> tuple[Problem, Problem]:
    """(fitting problem, evaluation problem): the same points simulated with the fitting and
    the evaluation request caps; measured values recomputed over the simulated requests."""
    points = load_points(gt_dir)
    if experiments:
        unknown = sorted(set(experiments) - set(points["experiment"]))
        if unknown:
            raise ConfigError(f"--experiment: unknown experiment(s) {', '.join(unknown)}")
        points = points[points["experiment"].isin(experiments)].reset_index(drop=True)
    points = pd.concat([points, overload_flags(points)], axis=1)
    from .groundtruth import _gpu_name

    gpus = points.apply(_gpu_name, axis=1)
    if gpu is not None:
        from .hardware import resolve_gpu

        want = resolve_gpu(gpu).name
        points = points[gpus == want].reset_index(drop=True)
        if points.empty:
            raise ConfigError(f"--gpu: no measured point on {want}; the data has: {', '.join(sorted(set(gpus)))}")
    elif gpus.nunique() > 1:
        raise ConfigError(f"the data holds several GPUs ({', '.join(sorted(set(gpus)))}); choose one with --gpu (one calibration per GPU)")
    out = []
    for cap in (fit_cap, eval_cap):
        cfgs = [point_to_config(p, base, gt_dir=gt_dir, formula=formula, gemm_m=gemm_m, bench_data_dir=bench_data_dir,
                                max_requests_per_point=cap) for _, p in points.iterrows()]
        meas = [measured_for_point(p, gt_dir, cfgs[i])[0] for i, (_, p) in enumerate(points.iterrows())]
        out.append(Problem(points.copy(), cfgs, meas))
    return out[0], out[1]


# ---------------------------------------------------------------------------- the whole procedure


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


def calibrate_formula(fit_pb: Problem, eval_pb: Problem, summaries: SummariesFn, *, names=DEFAULT_FIT_KNOBS,
                      fixed: dict[str, float] | None = None, maxfev: int = DEFAULT_MAXFEV, n_boot: int = DEFAULT_BOOTSTRAP, level: float = 0.9,
                      boot_seed: int = 0, formula: str = "", log: Callable[[str], None] = lambda s: None,
                      cv_refit_maxfev: int = 0) -> FormulaResult:
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
    seed_cfgs = [
        c.model_copy(update={"cost": c.cost.model_copy(update=dict.fromkeys(CALIBRATION_SETTINGS))}) for c in seed_cfgs
    ]
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
            rows.append({
                "formula": formula, "point_id": p["point_id"], "experiment": p["experiment"], "dataset": p.get("dataset"),
                "strategy": p["strategy"], "overloaded": bool(p["overloaded"]), "metric": metric, "meas": meas[i, j],
                "seed": sims_seed[i, j], "fit": sims_fit[i, j], "cv": sims_cv[i, j], "lo": lo, "hi": hi,
                "ape_seed": ape(sims_seed[i, j], meas[i, j]), "ape_fit": ape(sims_fit[i, j], meas[i, j]),
                "ape_cv": ape(sims_cv[i, j], meas[i, j]),
            })
    table = pd.DataFrame(rows)
    resid_out = {m: [float(x) for x in resid[mask, j] if math.isfinite(x)] for j, (m, _, _) in enumerate(REPORT_METRICS)}
    return FormulaResult(formula, fit.knobs, fit.objective, folds, boot, table, resid_out, t, fit.nfev)


# ---------------------------------------------------------------------------- summaries


def mape_summary(table: pd.DataFrame, by: str | None = None, subset: str = "not_overloaded") -> pd.DataFrame:
    """MAPE of seed / in-sample fit / CV per metric (and group), plus 90 % interval coverage."""
    d = table if subset == "all" else table[~table["overloaded"]]
    d = d[np.isfinite(d["meas"].astype(float))]
    keys = (["formula"] + ([by] if by else []) + ["metric"])
    d = d.assign(inside=(d["meas"] >= d["lo"]) & (d["meas"] <= d["hi"]))
    g = d.groupby(keys, sort=True)
    return g.agg(n=("meas", "size"), seed=("ape_seed", "mean"), fit=("ape_fit", "mean"), cv=("ape_cv", "mean"),
                 coverage=("inside", "mean")).reset_index()


def _pct(x) -> str:
    return "-" if x is None or not math.isfinite(float(x)) else f"{100 * float(x):.1f}%"


def md_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def render_report(results: list[FormulaResult], settings: dict) -> str:
    lines = ["# Calibration report", "", f"Command: `{settings['command']}`", "",
             f"Data: `{settings['ground_truth']}` ({settings['n_points']} points, {settings['n_experiments']} experiments, "
             f"{settings['n_overloaded']} overloaded points excluded from fitting and from the headline figures); GPU {settings['gpu']}; "
             f"fit cap {settings['fit_max_requests']} requests/point, evaluation cap {settings['eval_max_requests']}; "
             f"{settings['n_bootstrap']} bootstrap replicates; level {settings['level']:.0%}; wall {settings['wall_s']:.0f} s. "
             f"Cost model: gemm_m {settings['gemm_m']}, MFU lookup {settings['mfu_lookup']}, decode attention at the "
             f"{settings['decode_attention_context']} context, decode KV read fraction {settings['decode_kv_read_fraction']:g}, "
             f"LM head {'read every step' if settings.get('lm_head_reads') else 'not read (layers only)'}. "
             + (f"LOEO folds refitted by simulation ({settings['cv_refit_maxfev']} simulations each, from the linearised fold knobs)."
                if settings.get("cv_refit_maxfev") else "LOEO folds from the linearised refit (one-step jackknife)."), ""]
    lines += ["## Fitted knobs", ""]
    hdr = ["knob", "seed"] + [r.formula for r in results] + ["meaning"]
    seed = seed_knobs(settings["gpu"])
    rows = []
    for k in KNOB_NAMES:
        sk = f"{seed[k]:.4g}" if k in seed else "none"
        rows.append([k, sk] + [(f"{r.knobs[k]:.4g}" if k in r.knobs else sk) + ("" if k in settings["knobs"] else " (fixed)") for r in results] + [KNOBS[k].meaning])
    lines += [md_table(hdr, rows), ""]
    lines += ["## Overall (not overloaded points): seed model, in-sample fit, leave-one-experiment-out CV", ""]
    hdr = ["formula", "metric", "n", "seed MAPE", "fit MAPE (in-sample)", "CV MAPE", "target", f"{settings['level']:.0%} PI coverage"]
    rows = []
    for r in results:
        s = mape_summary(r.table)
        for _, x in s.iterrows():
            rows.append([r.formula, x["metric"], x["n"], _pct(x["seed"]), _pct(x["fit"]), _pct(x["cv"]),
                         _pct(TARGETS.get(x["metric"], math.nan)), _pct(x["coverage"])])
    lines += [md_table(hdr, rows), ""]
    for r in results:
        t = r.table
        nov = t[~t["overloaded"]]
        cov, n = coverage(nov["meas"], nov["lo"], nov["hi"])
        worst = mape_summary(t, "experiment")
        e2e = worst[worst["metric"] == "e2e_mean"].sort_values("cv", ascending=False)
        lines += [f"## {r.formula}: per experiment (CV, not overloaded points)", "",
                  f"Interval coverage over all metrics and not-overloaded points: {_pct(cov)} of {n}. "
                  f"Experiments with CV E2E MAPE > 20 %: {', '.join(f'{x.experiment} ({_pct(x.cv)})' for x in e2e.itertuples() if x.cv > 0.2) or 'none'}.", ""]
        hdr = ["experiment", "n", "TTFT seed", "TTFT CV", "TPOT seed", "TPOT CV", "E2E seed", "E2E CV", "E2E/out seed", "E2E/out CV"]
        rows = []
        for e in dict.fromkeys(t["experiment"]):
            def g(metric, col):
                x = worst[(worst["experiment"] == e) & (worst["metric"] == metric)]
                return _pct(x[col].iloc[0]) if len(x) else "-"
            n_e = int(((t["experiment"] == e) & ~t["overloaded"] & (t["metric"] == "e2e_mean")).sum())
            rows.append([e, n_e, g("ttft_mean", "seed"), g("ttft_mean", "cv"), g("tpot_mean", "seed"), g("tpot_mean", "cv"),
                         g("e2e_mean", "seed"), g("e2e_mean", "cv"), g("tpot_incl_ttft_mean", "seed"), g("tpot_incl_ttft_mean", "cv")])
        lines += [md_table(hdr, rows), ""]
        ov = t[t["overloaded"] & (t["metric"] == "e2e_mean")]
        if len(ov):
            lines += ["Overloaded points (not fitted; E2E seed / CV APE): " + ", ".join(
                f"`{x.point_id}` {_pct(x.ape_seed)} / {_pct(x.ape_cv)}" for x in ov.itertuples()), ""]
        lines += [f"Fold knobs ({r.formula}):", ""]
        hdr = ["held-out experiment"] + list(settings["knobs"])
        rows = [[f.experiment] + [f"{f.knobs[k]:.4g}" for k in settings["knobs"]] for f in r.folds]
        lines += [md_table(hdr, rows), ""]
    return "\n".join(lines)


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
            "data": settings["ground_truth"], "date": settings["date"], "command": settings["command"],
            "n_points": settings["n_points"], "n_experiments": settings["n_experiments"],
            "fit_max_requests_per_point": settings["fit_max_requests"], "eval_max_requests_per_point": settings["eval_max_requests"],
            "cv_refit_maxfev": settings.get("cv_refit_maxfev", 0),
            "mfu_tables": settings["bench_data"], "servesim_version": settings["version"],
        },
        "cross_validation": first["cross_validation"],
        "residuals_log": first["residuals_log"],
        "bootstrap": first["bootstrap"],
    }
    if len(results) > 1:
        doc["formulas"] = {r.formula: _formula_section(r, settings) for r in results[1:]}
    return doc


def plot_cv(table: pd.DataFrame, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for ax, (metric, _, _) in zip(axes, FIT_METRICS):
        d = table[(table["metric"] == metric) & np.isfinite(table["meas"]) & np.isfinite(table["cv"])]
        for ov, mk in ((False, "o"), (True, "x")):
            g = d[d["overloaded"] == ov]
            if g.empty:
                continue
            err = np.vstack([np.maximum(g["cv"] - g["lo"], 0), np.maximum(g["hi"] - g["cv"], 0)])
            ax.errorbar(g["meas"], g["cv"], yerr=err, fmt=mk, ms=4, alpha=0.8, capsize=2,
                        label="overloaded" if ov else "CV prediction ± interval")
            ax.scatter(g["meas"], g["seed"], s=10, c="grey", alpha=0.6, label=None if ov else "seed model")
        from .plots import identity_loglog

        identity_loglog(ax, pd.concat([d["meas"], d["cv"]]))
        ax.set_xlabel(f"measured {metric} (ms)")
        ax.set_ylabel(f"simulated {metric} (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------- run/sweep helper


def intervals_for_configs(cfgs: Sequence[RunConfig], centers: Sequence[dict], summaries: SummariesFn,
                          level: float = 0.9, n_boot: int | None = None) -> list[dict[str, tuple[float, float]]]:
    """For ``run``/``sweep --intervals``: one interval dict (summary key → (lo, hi)) per config,
    from its point run's summary (``centers``), its bootstrap replicates (simulated here in one
    batch) and the calibration's CV residuals. ConfigError if a config names no calibration."""
    reps_cfgs, owner, cals = [], [], []
    for i, cfg in enumerate(cfgs):
        if not cfg.cost.calibration:
            raise ConfigError("--intervals needs a calibration (cost.calibration, e.g. --set cost.calibration=h100)")
        cal = calibration_for(cfg)
        cals.append(cal)
        for c in interval_configs(cfg, cal, n_boot):
            reps_cfgs.append(c)
            owner.append(i)
    reps = summaries(reps_cfgs) if reps_cfgs else []
    out = []
    for i in range(len(cfgs)):
        mine = [s for s, o in zip(reps, owner) if o == i]
        out.append(summary_intervals(centers[i], mine, cals[i], level))
    return out


# ---------------------------------------------------------------------------- command


@click.command()
@click.option("--ground-truth", "ground_truth", help="Measured data directory (points.csv, requests/).")
@click.option("--bench-data", type=click.Path(file_okay=False), help="bench_data/ for MFU tables (default: <ground-truth>/bench_data if present).")
@click.option("--formula", "formulas", multiple=True, help="Mixed-batch formula(s) to calibrate (repeatable; default smooth-wa, the best cross-validated). Each is saved; the first is the primary.")
@click.option("--gemm-m", type=click.Choice(["tokens", "requests"]), default="tokens", show_default=True)
@click.option("--knob", "knobs", multiple=True, help=f"Knobs to fit (repeatable; default {', '.join(DEFAULT_FIT_KNOBS)}).")
@click.option("--mfu-lookup", type=click.Choice(["interpolate", "nearest"]), default="interpolate", show_default=True,
              help="MFU table lookup the calibration uses (nearest = the seed's floor rows, which price a GEMM at M=63 twice M=64).")
@click.option("--decode-attention-context", type=click.Choice(["mean", "max"]), default="mean", show_default=True,
              help="Context at which decode attention is priced (max = the seed's: every request at the batch's longest context).")
@click.option("--decode-kv-read-fraction", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="Share of each request's KV a decode step reads (κ; the seed's 0.8 is a re-use discount, 1 streams it all).")
@click.option("--lm-head-reads/--no-lm-head-reads", default=False, show_default=True,
              help="Every step reads the LM head's weights besides the layers' (off: the layers only, as the seed; "
                   "on cross-validated worse on the H100 data, docs/calibration.md).")
@click.option("--fix", "fixes", multiple=True, metavar="KNOB=VALUE",
              help="Hold a knob at a value instead of fitting it (repeatable), e.g. allreduce_bw_gbps=450.")
@click.option("--gpu", help="Calibrate the points of this GPU only (required when the data mixes GPUs).")
@click.option("--experiment", "experiments", multiple=True, help="Only these experiments (repeatable).")
@click.option("--fit-max-requests", type=int, default=DEFAULT_FIT_MAX_REQUESTS, show_default=True, help="Request cap per point while fitting.")
@click.option("--max-requests-per-point", "eval_max", type=int, default=DEFAULT_EVAL_MAX_REQUESTS, show_default=True, help="Request cap per point for the reported errors.")
@click.option("--maxfev", type=int, default=DEFAULT_MAXFEV, show_default=True, help="Simulation budget of the optimiser.")
@click.option("--cv-refit-maxfev", type=click.IntRange(min=0), default=0, show_default=True,
              help="Refit every LOEO fold by simulation with this budget (0: the linearised refit only; ~21 folds x N simulations).")
@click.option("--bootstrap", "n_boot", type=int, default=DEFAULT_BOOTSTRAP, show_default=True, help="Bootstrap replicates (over experiments).")
@click.option("--level", type=float, default=0.9, show_default=True, help="Prediction-interval level.")
@click.option("--name", default=None, help="Calibration name written into the YAML (default: the GPU, lower case).")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--executor", type=click.Choice(["process", "serial", "ray"]), default="process", show_default=True)
@click.option("--workers", type=int)
@click.option("--output-dir", "-o", type=click.Path(file_okay=False), default="results/calibrate", show_default=True)
@click.option("--list", "list_only", is_flag=True, help="List the shipped calibrations and exit.")
@click.option("--no-plots", is_flag=True)
@click.option("--quiet", "-q", is_flag=True)
def calibrate(ground_truth, bench_data, formulas, gemm_m, mfu_lookup, decode_attention_context, decode_kv_read_fraction, lm_head_reads, knobs, fixes, gpu, experiments, fit_max_requests, eval_max, maxfev,
              cv_refit_maxfev, n_boot, level, name, seed, executor, workers, output_dir, list_only, no_plots, quiet) -> None:
    """Fit the cost model's calibration knobs to GROUND_TRUTH (one set per GPU), cross-validate
    leave-one-experiment-out, bootstrap prediction intervals, and save the calibration."""
    from .cli import err_console, handle_errors, out_console

    @handle_errors
    def body() -> None:
        if list_only:
            for n in available_calibrations():
                cal = load_calibration(n)
                head = f"{n:10s} gpu {cal.get('gpu')}"
                for f in calibration_formulas(cal):
                    sec = calibration_section(cal, f, n)
                    cv = (sec.get("cross_validation") or {}).get("not_overloaded", {})
                    out_console.print(f"{head}  formula {f}  CV " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in cv.items()))
                    head = " " * len(head)
            return
        if not ground_truth:
            raise ConfigError("--ground-truth is required (e.g. ../shared/ground_truth)")
        for opt, v in (("--fit-max-requests", fit_max_requests), ("--max-requests-per-point", eval_max), ("--maxfev", maxfev)):
            if v < 1:
                raise ConfigError(f"{opt}: must be >= 1, got {v}")
        if n_boot < 0:
            raise ConfigError(f"--bootstrap: must be >= 0, got {n_boot}")
        if not 0 < level < 1:
            raise ConfigError(f"--level: must be in (0, 1), got {level}")
        fixed: dict[str, float] = {}
        for item in fixes:
            key, sep, val = item.partition("=")
            key = key.strip()
            if not sep or key not in KNOBS:
                raise ConfigError(f"--fix {item!r}: expected KNOB=VALUE with a knob among {', '.join(KNOB_NAMES)}")
            try:
                fixed[key] = float(val)
            except ValueError:
                raise ConfigError(f"--fix {item!r}: {val!r} is not a number") from None
            if not KNOBS[key].lo <= fixed[key] <= KNOBS[key].hi:
                raise ConfigError(f"--fix {item!r}: outside the knob's range [{KNOBS[key].lo:g}, {KNOBS[key].hi:g}]")
        names = tuple(k for k in (tuple(knobs) or DEFAULT_FIT_KNOBS) if k not in fixed)
        bad = sorted(set(names) - set(KNOB_NAMES))
        if bad:
            raise ConfigError(f"--knob: unknown knob(s) {', '.join(bad)}; known: {', '.join(KNOB_NAMES)}")
        from .cost.combine import FORMULAS

        fl = tuple(formulas) or (DEFAULT_CALIBRATE_FORMULA,)
        for f in fl:
            FORMULAS.get(f, "--formula")
        bd = bench_data
        if bd is None and (Path(ground_truth) / "bench_data").is_dir():
            bd = str(Path(ground_truth) / "bench_data")
        from .executor import run_many

        def summaries(cfgs):
            return [r.summary for r in run_many(cfgs, executor, workers)] if cfgs else []

        base = parse_run_config(
            {"seed": seed, "cost": {"model": "roofline", "mfu_lookup": mfu_lookup, "decode_attention_context": decode_attention_context,
                                     "decode_kv_read_fraction": decode_kv_read_fraction, "lm_head_reads": lm_head_reads}}
        )
        t_start = time.perf_counter()
        results = []
        gpu_name = None
        pts = None
        for f in fl:
            fit_pb, eval_pb = build_problems(ground_truth, base, formula=f, gemm_m=gemm_m, bench_data_dir=bd,
                                             fit_cap=fit_max_requests, eval_cap=eval_max, gpu=gpu, experiments=experiments)
            gpu_name, pts = fit_pb.configs[0].gpu, fit_pb.points
            if len(fit_pb.experiments) < 2:
                raise ConfigError("calibration needs at least two experiments (leave-one-experiment-out)")
            results.append(calibrate_formula(fit_pb, eval_pb, summaries, names=names, fixed=fixed, maxfev=maxfev, n_boot=n_boot, cv_refit_maxfev=cv_refit_maxfev,
                                             level=level, formula=f, log=(lambda s: None) if quiet else err_console.print))
        from . import __version__

        settings = {
            "command": "servesim calibrate " + " ".join(sys.argv[2:]) if len(sys.argv) > 1 else "servesim calibrate",
            "ground_truth": str(ground_truth), "bench_data": bd, "gpu": gpu_name, "gemm_m": gemm_m, "mfu_lookup": mfu_lookup,
            "decode_attention_context": decode_attention_context, "decode_kv_read_fraction": decode_kv_read_fraction,
            "lm_head_reads": lm_head_reads, "knobs": list(names), "fixed": fixed,
            "n_points": len(pts), "n_experiments": pts["experiment"].nunique(), "n_overloaded": int(pts["overloaded"].sum()),
            "fit_max_requests": fit_max_requests, "eval_max_requests": eval_max, "n_bootstrap": n_boot, "level": level,
            "cv_refit_maxfev": cv_refit_maxfev,
            "wall_s": time.perf_counter() - t_start, "date": _dt.date.today().isoformat(), "version": __version__,
        }
        from .cli_output import atomic_write_bytes, write_figure, write_yaml

        out = Path(output_dir)
        cal_name = name or str(gpu_name).lower()
        write_yaml(out / f"calibration-{cal_name}.yaml", calibration_document(results, settings, cal_name))
        atomic_write_bytes(out / "report.md", render_report(results, settings).encode())
        buf = io.StringIO()
        pd.concat([r.table for r in results]).to_csv(buf, index=False, float_format="%.6g")
        atomic_write_bytes(out / "cv_points.csv", buf.getvalue().encode())
        if not no_plots:
            for r in results:
                write_figure(out / "plots" / f"cv_{r.formula}.png", plot_cv(r.table, f"leave-one-experiment-out predictions — {r.formula}"))
        for r in results:
            s = mape_summary(r.table)
            out_console.print(f"{r.formula}: " + ", ".join(f"{x.metric} seed {_pct(x.seed)} → CV {_pct(x.cv)} (PI cov {_pct(x.coverage)})" for x in s.itertuples()))
        out_console.print(f"calibration: {out}/calibration-{cal_name}.yaml; report: {out}/report.md")
        err_console.print(f"calibrate: {settings['wall_s']:.0f} s wall")

    body()
