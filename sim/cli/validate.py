"""``servesim validate``: simulate every measured point of a ground-truth directory and report
the errors .

Outputs in OUTDIR (atomic writes, deterministic content)::

    report.md        overall / per-dataset / per-load-level / per-experiment MAPE, per-point table,
                     per-step check (set B), caveats
    points.csv       one row per (formula, point, metric): sim, meas, ape, overloaded, meas_source
    mape.csv         MAPE per (formula, subset, group_by, group, metric)
    step_check.csv   set B: simulated vs vLLM-span prefill/decode time per point (guidellm mode)
    plots/sim_vs_meas_<formula>.png, plots/latency_vs_rate_<experiment>.png

:func:`sim.studies.validate.run_validation` is the library form.
"""

from __future__ import annotations

import io
import math
import time
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
from sim.studies.validate_report import mape_lookup, render_report


def write_outputs(out: Path, v: ValidationResult, plots: bool = True) -> None:
    from sim.cli.output import atomic_write_bytes, safe_file_part, write_figure, write_json

    def csv_bytes(df: pd.DataFrame) -> bytes:
        buf = io.StringIO()
        df.to_csv(buf, index=False, float_format="%.6g")
        return buf.getvalue().encode()

    atomic_write_bytes(out / "report.md", render_report(v).encode())
    atomic_write_bytes(out / "points.csv", csv_bytes(v.long))
    atomic_write_bytes(out / "mape.csv", csv_bytes(v.mape))
    if len(v.steps):
        atomic_write_bytes(out / "step_check.csv", csv_bytes(v.steps))
    write_json(out / "settings.json", v.settings)
    if plots:
        for f, g in dict.fromkeys(zip(v.long["formula"], v.long["gemm_m"])):
            sub = v.long[(v.long["formula"] == f) & (v.long["gemm_m"] == g)]
            write_figure(
                out / "plots" / f"sim_vs_meas_{safe_file_part(f)}_{safe_file_part(g)}.png",
                plot_sim_vs_meas(sub, f"simulated vs measured — {f}, gemm_m={g}, mode={v.settings['mode']}"),
            )
        counts = v.points.groupby("experiment").size()
        for exp in counts[counts > 1].index:
            write_figure(out / "plots" / f"latency_vs_rate_{safe_file_part(exp)}.png", plot_latency_vs_rate(v.long, exp))


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
    help="Price with a calibration (shipped name or YAML path). In-sample for the data it was fitted on: "
    "the cross-validated errors are in `calibrate`'s report.",
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

    @handle_errors
    def body() -> None:
        from sim.studies.executor import run_many

        if max_requests_per_point is not None and max_requests_per_point < 1:
            raise ConfigError(f"--max-requests-per-point: must be >= 1, got {max_requests_per_point}")
        cost: dict = {"model": "roofline"}
        if calibration:
            from sim.cost.calibration import load_calibration

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
                formulas=formulas or (effective_formula(base),),
                gemm_ms=(gemm_m,),
                mode=mode,
                bench_data_dir=bench_data,
                max_requests_per_point=max_requests_per_point,
                experiments=experiments,
                base=base,
            )
        out = out_dir({"output_dir": output_dir}, "validate")
        write_outputs(out, v, plots=not no_plots)
        lk = mape_lookup(v.mape)
        for f, g in dict.fromkeys(zip(v.long["formula"], v.long["gemm_m"])):
            cells = ", ".join(f"{m} {pct_cell(lk.get((f, g, 'all', 'overall', 'all', m), (math.nan, 0))[0])}" for m in HEADLINE_METRICS)
            out_console.print(f"{f} (gemm_m={g}, mode={mode}): MAPE {cells}")
        out_console.print(f"results: {final_path(out)}/ (report.md, points.csv, mape.csv)")
        err_console.print(f"{len(v.long) // 15} point simulations in {time.perf_counter() - t0:.1f} s wall")

    body()
