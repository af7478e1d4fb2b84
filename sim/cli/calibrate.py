"""``servesim calibrate``: fit the roofline's calibration knobs to a ground-truth directory,
cross-validate them leave-one-experiment-out, bootstrap prediction intervals, and save the
result as a named calibration that ``run``/``sweep`` load with ``cost.calibration``
(``--set cost.calibration=h100`` or a path). Method: :mod:`sim.cost.calibration`,
``docs/calibration.md``.

Outputs in OUTDIR::

    calibration-<gpu>.yaml   the fitted knobs + provenance + interval data (load it by path, or
                             copy to sim/data/calibrations/<name>.yaml to ship it)
    report.md                fitted values, CV MAPE per metric / experiment next to the seed
                             model for each formula, interval coverage
    cv_points.csv            per formula × point × metric: seed, in-sample, CV value, interval
    plots/cv_<formula>.png   measured vs cross-validated prediction with 90 % intervals

The pipeline is :mod:`sim.studies.calibrate`; intervals for ``run``/``sweep --intervals`` are
:func:`sim.studies.intervals.intervals_for_configs`.
"""

from __future__ import annotations

import datetime as _dt
import io
import sys
import time
from pathlib import Path

import click

from sim.cli.common import err_console, handle_errors, out_console
from sim.errors import ConfigError
from sim.studies.calibrate_defaults import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_CALIBRATE_FORMULA,
    DEFAULT_EVAL_MAX_REQUESTS,
    DEFAULT_FIT_KNOBS,
    DEFAULT_FIT_MAX_REQUESTS,
    DEFAULT_MAXFEV,
)


@click.command()
@click.option("--ground-truth", "ground_truth", help="Measured data directory (points.csv, requests/).")
@click.option(
    "--bench-data",
    help="bench_data/ for MFU tables; default (or 'none'): the built-in MFU curves, which carry to every GPU and are what runs use unless they set cost.bench_data_dir.",
)
@click.option(
    "--formula",
    "formulas",
    multiple=True,
    help="Mixed-batch formula(s) to calibrate (repeatable; default smooth-wa, the best cross-validated). Each is saved; the first is the primary.",
)
@click.option("--gemm-m", type=click.Choice(["tokens", "requests"]), default="tokens", show_default=True)
@click.option("--knob", "knobs", multiple=True, help=f"Knobs to fit (repeatable; default {', '.join(DEFAULT_FIT_KNOBS)}).")
@click.option(
    "--mfu-lookup",
    type=click.Choice(["interpolate", "nearest"]),
    default="interpolate",
    show_default=True,
    help="MFU table lookup the calibration uses (nearest = the seed's floor rows, which price a GEMM at M=63 twice M=64).",
)
@click.option(
    "--decode-attention-context",
    type=click.Choice(["mean", "max"]),
    default="mean",
    show_default=True,
    help="Context at which decode attention is priced (max = the seed's: every request at the batch's longest context).",
)
@click.option(
    "--decode-kv-read-fraction",
    type=click.FloatRange(0, 1, min_open=True),
    default=1.0,
    show_default=True,
    help="Share of each request's KV a decode step reads (κ; the seed's 0.8 is a re-use discount, 1 streams it all).",
)
@click.option(
    "--lm-head-reads/--no-lm-head-reads",
    default=False,
    show_default=True,
    help="Every step reads the LM head's weights besides the layers' (off: the layers only, as the seed; "
    "on cross-validated worse on the H100 data, docs/calibration.md).",
)
@click.option(
    "--fix", "fixes", multiple=True, metavar="KNOB=VALUE", help="Hold a knob at a value instead of fitting it (repeatable), e.g. allreduce_bw_gbps=450."
)
@click.option("--gpu", help="Calibrate the points of this GPU only (required when the data mixes GPUs).")
@click.option("--experiment", "experiments", multiple=True, help="Only these experiments (repeatable).")
@click.option("--fit-max-requests", type=int, default=DEFAULT_FIT_MAX_REQUESTS, show_default=True, help="Request cap per point while fitting.")
@click.option(
    "--max-requests-per-point",
    "eval_max",
    type=int,
    default=DEFAULT_EVAL_MAX_REQUESTS,
    show_default=True,
    help="Request cap per point for the reported errors.",
)
@click.option("--maxfev", type=int, default=DEFAULT_MAXFEV, show_default=True, help="Simulation budget of the optimiser.")
@click.option(
    "--cv-refit-maxfev",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Refit every LOEO fold by simulation with this budget (0: the linearised refit only; ~21 folds x N simulations).",
)
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
def calibrate(
    ground_truth,
    bench_data,
    formulas,
    gemm_m,
    mfu_lookup,
    decode_attention_context,
    decode_kv_read_fraction,
    lm_head_reads,
    knobs,
    fixes,
    gpu,
    experiments,
    fit_max_requests,
    eval_max,
    maxfev,
    cv_refit_maxfev,
    n_boot,
    level,
    name,
    seed,
    executor,
    workers,
    output_dir,
    list_only,
    no_plots,
    quiet,
) -> None:
    """Fit the cost model's calibration knobs to GROUND_TRUTH (one set per GPU), cross-validate
    leave-one-experiment-out, bootstrap prediction intervals, and save the calibration."""

    # the fitting machinery loads only when a calibration runs (``--help`` stays fast)
    import pandas as pd

    from sim.config import parse_run_config
    from sim.cost.calibration import KNOB_NAMES, KNOBS, available_calibrations, calibration_formulas, calibration_section, load_calibration
    from sim.plots.calibration import plot_cv
    from sim.studies.calibrate import build_problems, calibrate_formula, calibration_document, mape_summary
    from sim.studies.calibrate_report import pct_or_dash, render_report

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
        from sim.cli.output import safe_file_part

        if name is not None and safe_file_part(name) != name:
            raise ConfigError(f"--name {name!r}: a calibration name becomes a file name; use letters, digits and . _ @ + = - only")
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
        from sim.cost.combine import FORMULAS

        fl = tuple(formulas) or (DEFAULT_CALIBRATE_FORMULA,)
        for f in fl:
            FORMULAS.get(f, "--formula")
        bd = bench_data
        if bd is not None and bd.strip().lower() == "none":
            bd = None  # the built-in curves: what runs without cost.bench_data_dir use
        elif bd is not None and not Path(bd).is_dir():
            raise ConfigError(f"--bench-data: directory not found: {bd} (or 'none' for the built-in MFU curves)")
        from sim.studies.executor import run_many

        def summaries(cfgs):
            return [r.summary for r in run_many(cfgs, executor, workers)] if cfgs else []

        base = parse_run_config(
            {
                "seed": seed,
                "cost": {
                    "model": "roofline",
                    "calibration": "none",  # fit from the seed: no shipped calibration fills unset knobs
                    "mfu_lookup": mfu_lookup,
                    "decode_attention_context": decode_attention_context,
                    "decode_kv_read_fraction": decode_kv_read_fraction,
                    "lm_head_reads": lm_head_reads,
                },
            }
        )
        t_start = time.perf_counter()
        results = []
        gpu_name = None
        pts = pd.DataFrame()  # the last formula's fit points (every formula fits the same points)
        for f in fl:
            fit_pb, eval_pb = build_problems(
                ground_truth, base, formula=f, gemm_m=gemm_m, bench_data_dir=bd, fit_cap=fit_max_requests, eval_cap=eval_max, gpu=gpu, experiments=experiments
            )
            gpu_name, pts = fit_pb.configs[0].gpu, fit_pb.points
            if len(fit_pb.experiments) < 2:
                raise ConfigError("calibration needs at least two experiments (leave-one-experiment-out)")
            results.append(
                calibrate_formula(
                    fit_pb,
                    eval_pb,
                    summaries,
                    names=names,
                    fixed=fixed,
                    maxfev=maxfev,
                    n_boot=n_boot,
                    cv_refit_maxfev=cv_refit_maxfev,
                    level=level,
                    formula=f,
                    log=(lambda s: None) if quiet else err_console.print,
                )
            )
        from sim.version import __version__

        settings = {
            "command": "servesim calibrate " + " ".join(sys.argv[2:]) if len(sys.argv) > 1 else "servesim calibrate",
            "ground_truth": str(ground_truth),
            "bench_data": bd,
            "gpu": gpu_name,
            "gemm_m": gemm_m,
            "mfu_lookup": mfu_lookup,
            "decode_attention_context": decode_attention_context,
            "decode_kv_read_fraction": decode_kv_read_fraction,
            "lm_head_reads": lm_head_reads,
            "knobs": list(names),
            "fixed": fixed,
            "n_points": len(pts),
            "n_experiments": pts["experiment"].nunique(),
            "n_overloaded": int(pts["overloaded"].sum()),
            "fit_max_requests": fit_max_requests,
            "eval_max_requests": eval_max,
            "n_bootstrap": n_boot,
            "level": level,
            "cv_refit_maxfev": cv_refit_maxfev,
            "wall_s": time.perf_counter() - t_start,
            "date": _dt.date.today().isoformat(),
            "version": __version__,
        }
        from sim.cli.output import atomic_write_bytes, write_figure, write_yaml

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
            out_console.print(
                f"{r.formula}: "
                + ", ".join(f"{x.metric} seed {pct_or_dash(x.seed)} → CV {pct_or_dash(x.cv)} (PI cov {pct_or_dash(x.coverage)})" for x in s.itertuples())
            )
        out_console.print(f"calibration: {out}/calibration-{cal_name}.yaml; report: {out}/report.md")
        err_console.print(f"calibrate: {settings['wall_s']:.0f} s wall")

    body()
