"""``servesim validate``: simulate every measured point of a ground-truth directory and report
the errors.

Outputs in OUTDIR (atomic writes, deterministic content)::

    report.md        overall / per-dataset / per-load-level / per-experiment MAPE, per-point table,
                     failed requests (sim vs meas), per-step check (set B), caveats
    points.csv       one row per (formula, point, metric): sim, meas, ape, overloaded, meas_source
    failures.csv     one row per (formula, point): simulated failed requests (timed out + rejected)
                     vs measured (n_errored + n_incomplete), their abs_err, the client timeout used
    mape.csv         MAPE per (formula, subset, group_by, group, metric)
    step_check.csv   set B: simulated vs vLLM-span prefill/decode time per point (guidellm mode)
    plots/sim_vs_meas_<formula>.png, plots/latency_vs_rate_<experiment>.png

A metric a point did not measure (blank or absent in the ground truth's points.csv, e.g. an
aggregate-only point with means and percentiles but no per-request file) is a blank cell: not
scored for that point and left out of that metric's MAPE. The tables and settings.json are
written before report.md and the plots; should rendering those fail, the tables are kept (the
result folder is committed) and the command exits with code 1.

:func:`sim.studies.validate.run_validation` is the library form.
"""

from __future__ import annotations

import io
import math
import sys
import time
import traceback
import warnings
from pathlib import Path

import click
import pandas as pd

from sim.cli.common import ProgressBars, err_console, final_path, handle_errors, out_console, out_dir
from sim.config import parse_run_config
from sim.errors import ConfigError
from sim.plots.validation import plot_latency_vs_rate, plot_sim_vs_meas
from sim.studies.markdown import pct_cell
from sim.studies.point_configs import DEFAULT_MAX_REQUESTS_PER_POINT, MODES
from sim.studies.scoring import HEADLINE_METRICS
from sim.studies.validate import ValidationResult, run_validation
from sim.studies.validate_report import failure_summary, mape_lookup, render_report


def write_tables(out: Path, v: ValidationResult) -> None:
    """Write the validation's tables to ``out``: ``points.csv``, ``failures.csv`` (when the
    result has failure rows), ``mape.csv``, ``step_check.csv`` (when there are per-step rows)
    and ``settings.json``. Unknown values (a
    metric a point did not measure) are blank cells. Uses none of the report or plot code, so
    a rendering failure cannot keep these files from being written."""
    from sim.cli.output import atomic_write_bytes, write_json

    def csv_bytes(df: pd.DataFrame) -> bytes:
        buf = io.StringIO()
        df.to_csv(buf, index=False, float_format="%.6g")
        return buf.getvalue().encode()

    atomic_write_bytes(out / "points.csv", csv_bytes(v.long))
    if len(v.failures):
        atomic_write_bytes(out / "failures.csv", csv_bytes(v.failures))
    atomic_write_bytes(out / "mape.csv", csv_bytes(v.mape))
    if len(v.steps):
        atomic_write_bytes(out / "step_check.csv", csv_bytes(v.steps))
    write_json(out / "settings.json", v.settings)


def write_report(out: Path, v: ValidationResult, plots: bool = True) -> None:
    """Write ``report.md`` and (with ``plots``) the PNG plots of ``v`` to ``out``."""
    from sim.cli.output import atomic_write_bytes, safe_file_part, write_figure

    atomic_write_bytes(out / "report.md", render_report(v).encode())
    if plots:
        for f, g in dict.fromkeys(zip(v.long["formula"], v.long["gemm_m"])):
            sub = v.long[(v.long["formula"] == f) & (v.long["gemm_m"] == g)]
            with warnings.catch_warnings():
                # a metric no point measured leaves its panel empty (and its legend without entries)
                warnings.filterwarnings("ignore", message="No artists with labels found", category=UserWarning)
                fig = plot_sim_vs_meas(sub, f"simulated vs measured — {f}, gemm_m={g}, mode={v.settings['mode']}")
            write_figure(out / "plots" / f"sim_vs_meas_{safe_file_part(f)}_{safe_file_part(g)}.png", fig)
        counts = v.points.groupby("experiment").size()
        for exp in counts[counts > 1].index:
            write_figure(out / "plots" / f"latency_vs_rate_{safe_file_part(exp)}.png", plot_latency_vs_rate(v.long, exp))


def write_outputs(out: Path, v: ValidationResult, plots: bool = True) -> None:
    """Write every file of the validation to ``out``: the tables first (:func:`write_tables`),
    then the report and plots (:func:`write_report`), so that the tables exist even if
    rendering fails afterwards (the error then propagates)."""
    write_tables(out, v)
    write_report(out, v, plots)


@click.command()
@click.option("--ground-truth", "ground_truth", required=True, help="Measured data directory (points.csv, requests/, requests_server/).")
@click.option(
    "--formula", "formulas", multiple=True, help="Mixed-batch formula(s) to validate (repeatable; default: the calibration's, else weighted-average)."
)
@click.option("--gemm-m", type=click.Choice(["tokens", "requests"]), default="tokens", show_default=True, help="GEMM M sizing.")
@click.option(
    "--mode",
    type=click.Choice(list(MODES)),
    default="guidellm",
    show_default=True,
    help="guidellm: our arrival semantics and each run's vLLM limits; study: the mixed-batch study's harness.",
)
@click.option("--bench-data", type=click.Path(file_okay=False), help="bench_data/ directory for MFU tables (default: built-in MFU curves).")
@click.option(
    "--max-requests-per-point",
    type=int,
    default=DEFAULT_MAX_REQUESTS_PER_POINT,
    show_default=True,
    help="Cap on simulated requests per point (set C stages hold up to 12,000).",
)
@click.option("--experiment", "experiments", multiple=True, help="Only these experiments (repeatable).")
@click.option("--seed", type=int, default=42, show_default=True, help="Run seed.")
@click.option(
    "--calibration",
    help="Price with a calibration (shipped name or YAML path; default: the shipped h100; none = the seed roofline). "
    "In-sample for the data it was fitted on: the cross-validated errors are in `calibrate`'s report.",
)
@click.option(
    "--executor", type=click.Choice(["process", "serial", "ray"]), default="process", show_default=True, help="Where the independent simulations run."
)
@click.option("--workers", type=int, help="Worker processes (default: one per CPU).")
@click.option("--ray-address", help="Ray cluster address (with --executor ray).")
@click.option("--output-dir", "-o", type=click.Path(file_okay=False), default="results/validate", show_default=True, help="Results directory.")
@click.option("--no-plots", is_flag=True, help="Skip PNG plots.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def validate(
    ground_truth,
    formulas,
    gemm_m,
    mode,
    bench_data,
    max_requests_per_point,
    experiments,
    seed,
    calibration,
    executor,
    workers,
    ray_address,
    output_dir,
    no_plots,
    quiet,
) -> None:
    """Simulate every measured point of GROUND_TRUTH and report the errors (MAPE)."""

    # Returns None on success, else the message of a report/plot rendering failure: the
    # tables were written and the result folder is committed all the same, then exit 1.
    @handle_errors
    def body() -> str | None:
        from sim.studies.executor import run_many

        if max_requests_per_point is not None and max_requests_per_point < 1:
            raise ConfigError(f"--max-requests-per-point: must be >= 1, got {max_requests_per_point}")
        cost: dict = {"model": "roofline"}
        if calibration:
            from sim.cost.calibration import is_no_calibration, load_calibration

            if not is_no_calibration(calibration):
                load_calibration(calibration)  # a clear error now for an unknown name or a bad file
            cost["calibration"] = calibration
        base = parse_run_config({"seed": seed, "cost": cost})
        t0 = time.perf_counter()
        with ProgressBars(quiet, "validate") as prog:

            def many(cfgs):
                return run_many(cfgs, executor, workers, prog.phase("points", len(cfgs)), ray_address)

            from sim.cost.calibration import effective_formula

            v = run_validation(
                ground_truth,
                many,
                # the study's harness ran the seed roofline (no calibration): its weighted average
                formulas=formulas or (("weighted-average",) if mode == "study" and not calibration else (effective_formula(base),)),
                gemm_ms=(gemm_m,),
                mode=mode,
                bench_data_dir=bench_data,
                max_requests_per_point=max_requests_per_point,
                experiments=experiments,
                base=base,
            )
        out = out_dir({"output_dir": output_dir}, "validate")
        write_tables(out, v)
        try:
            write_report(out, v, plots=not no_plots)
        except OSError:
            raise  # a full disk or the like: handled (and the folder discarded) by handle_errors
        except Exception:  # a rendering bug must not lose the simulated tables: keep them, exit 1
            return f"{traceback.format_exc()}report.md / plots could not be rendered; the tables are in {final_path(out)}/ (points.csv, mape.csv)"
        lk = mape_lookup(v.mape)
        for f, g in dict.fromkeys(zip(v.long["formula"], v.long["gemm_m"])):
            cells = ", ".join(f"{m} {pct_cell(lk.get((f, g, 'all', 'overall', 'all', m), (math.nan, 0))[0])}" for m in HEADLINE_METRICS)
            out_console.print(f"{f} (gemm_m={g}, mode={mode}): MAPE {cells}")
        for (f, g), text in failure_summary(v.failures).items() if len(v.failures) else ():
            out_console.print(f"{f} (gemm_m={g}): {text}", markup=False, highlight=False)
        out_console.print(f"results: {final_path(out)}/ (report.md, points.csv, failures.csv, mape.csv)")
        err_console.print(f"{len(v.sim_summaries)} point simulations in {time.perf_counter() - t0:.1f} s wall")
        return None

    failure = body()
    if failure:
        err_console.print(failure, markup=False, highlight=False)
        sys.exit(1)
