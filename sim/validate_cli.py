"""``servesim validate``: simulate every measured point of a ground-truth directory and report
the errors (registered in :mod:`sim.cli` with ``main.add_command(validate)``).

Outputs in OUTDIR (atomic writes, deterministic content)::

    report.md        overall / per-dataset / per-load-level / per-experiment MAPE, per-point table,
                     per-step check (set B), caveats
    points.csv       one row per (formula, point, metric): sim, meas, ape, overloaded, meas_source
    mape.csv         MAPE per (formula, subset, group_by, group, metric)
    step_check.csv   set B: simulated vs vLLM-span prefill/decode time per point (guidellm mode)
    plots/sim_vs_meas_<formula>.png, plots/latency_vs_rate_<experiment>.png

:func:`run_validation` is the library form (used by ``scripts/mixed_batch_study.py``).
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import click
import pandas as pd

from .config import RunConfig, parse_run_config
from .cost.combine import DEFAULT_FORMULA
from .errors import ConfigError
from .groundtruth import (
    DEFAULT_MAX_REQUESTS_PER_POINT,
    MODES,
    load_points,
    load_server_spans,
    measured_for_point,
    point_to_config,
)
from .validate import HEADLINE_METRICS, compare_points, mape_table, overload_flags, step_check


@dataclass
class ValidationResult:
    points: pd.DataFrame  # the measured points (with overloaded flags)
    long: pd.DataFrame  # per (formula, gemm_m, point, metric)
    mape: pd.DataFrame
    steps: pd.DataFrame  # per-step check rows
    settings: dict = field(default_factory=dict)
    sim_summaries: dict = field(default_factory=dict)  # (formula, gemm_m, point_id) -> summary


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
    """Simulate every point for every (formula, gemm_m); compare with the measurements."""
    points = load_points(gt_dir)
    if experiments:
        unknown = sorted(set(experiments) - set(points["experiment"]))
        if unknown:
            raise ConfigError(f"--experiment: unknown experiment(s) {', '.join(unknown)}; the data has: {', '.join(sorted(set(points['experiment'])))}")
        points = points[points["experiment"].isin(experiments)].reset_index(drop=True)
    if base is None:
        base = parse_run_config({"cost": {"model": "roofline"}})
    from .cost.combine import FORMULAS

    for f in formulas:
        FORMULAS.get(f, "--formula")  # ConfigError listing the valid names
    combos = [(f, g) for g in gemm_ms for f in formulas]
    cfgs, keys = [], []
    for f, g in combos:
        for _, p in points.iterrows():
            cfgs.append(point_to_config(p, base, gt_dir=gt_dir, formula=f, gemm_m=g, mode=mode,
                                        bench_data_dir=bench_data_dir, max_requests_per_point=max_requests_per_point))
            keys.append((f, g, p["point_id"]))
    results = run_many(cfgs)
    n = len(points)
    longs, step_rows, sums = [], [], {}
    measured = [measured_for_point(p, gt_dir, cfgs[i]) for i, (_, p) in enumerate(points.iterrows())]
    spans_cache: dict[str, pd.DataFrame | None] = {}
    for c, (f, g) in enumerate(combos):
        res = results[c * n:(c + 1) * n]
        cf = cfgs[c * n:(c + 1) * n]
        longs.append(compare_points(
            points, [r.summary for r in res], [m for m, _ in measured],
            extra={"formula": [f] * n, "gemm_m": [g] * n, "meas_source": [s for _, s in measured],
                   "sim_requests": [int(r.summary["num_requests"]) for r in res]},
        ))
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
            step_rows.append({"formula": f, "gemm_m": g, "point_id": p["point_id"], "experiment": exp,
                              "strategy": p["strategy"], **step_check(res[i].requests, sp)})
    long = pd.concat(longs, ignore_index=True)
    mt = mape_table(long, keys=("formula", "gemm_m"))
    pts = pd.concat([points, overload_flags(points)], axis=1)
    settings = {"ground_truth": str(gt_dir), "mode": mode, "formulas": list(formulas), "gemm_m": list(gemm_ms),
                "bench_data_dir": str(bench_data_dir) if bench_data_dir else None,
                "max_requests_per_point": max_requests_per_point, "seed": base.seed, "num_points": n}
    return ValidationResult(pts, long, mt, pd.DataFrame(step_rows), settings, sums)


# ---------------------------------------------------------------------------- report


def _pct(x: Any) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "–"
    return "–" if not math.isfinite(v) else f"{100 * v:.1f}%"


def _num(x: Any, digits: int = 1) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "–"
    return "–" if not math.isfinite(v) else f"{v:.{digits}f}"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _mape_lookup(mt: pd.DataFrame) -> dict:
    return {(r.formula, r.gemm_m, r.subset, r.group_by, r.group, r.metric): (r.mape, r.n) for r in mt.itertuples()}


def render_report(v: ValidationResult) -> str:
    s = v.settings
    lk = _mape_lookup(v.mape)
    combos = list(dict.fromkeys(zip(v.long["formula"], v.long["gemm_m"])))
    lines = [
        "# servesim validation report",
        "",
        f"Ground truth: `{s['ground_truth']}` — {s['num_points']} measured points. Mode: **{s['mode']}**"
        f" ({'guidellm semantics: closed-loop synchronous, throughput at t0, trace replay' if s['mode'] == 'guidellm' else 'the study harness: every point open-loop at its measured rate, BLIS defaults'})."
        f" MFU: {'tables in `' + s['bench_data_dir'] + '`' if s['bench_data_dir'] else 'built-in curves'}."
        f" Requests per point capped at {s['max_requests_per_point']}; seed {s['seed']}.",
        "",
        "APE = |sim − meas| / meas; MAPE = mean APE over points. `not_overloaded` excludes throughput points,"
        " open-loop points that achieved < 90 % of their rate, and points whose TTFT exceeds 5× their synchronous TTFT.",
        "`tpot_mean` is vLLM's decode-only TPOT; `tpot_incl_ttft_mean` is guidellm's E2E/output (the only TPOT of set A).",
        "",
        "## Overall MAPE",
        "",
    ]
    hdr = ["formula", "gemm_m", "subset"] + [f"{m} (n)" for m in HEADLINE_METRICS]
    rows = []
    for f, g in combos:
        for sub in ("all", "not_overloaded"):
            cells = []
            for m in HEADLINE_METRICS:
                val, n = lk.get((f, g, sub, "overall", "all", m), (math.nan, 0))
                cells.append(f"{_pct(val)} ({n})")
            rows.append([f, g, sub, *cells])
    lines += [md_table(hdr, rows), ""]
    for group_by, title in (("dataset", "By dataset"), ("load_level", "By load level"), ("workload", "By workload"),
                            ("experiment", "By experiment")):
        lines += [f"## {title} (all points)", ""]
        groups = sorted(set(v.mape[(v.mape["group_by"] == group_by)]["group"]))
        hdr = [group_by, "formula", "gemm_m", "n", "TTFT", "TPOT", "E2E/out", "E2E", "out tok/s"]
        rows = []
        for grp in groups:
            for f, g in combos:
                def m(metric):
                    return lk.get((f, g, "all", group_by, grp, metric), (math.nan, 0))
                rows.append([grp, f, g, m("e2e_mean")[1] or m("tpot_incl_ttft_mean")[1], _pct(m("ttft_mean")[0]), _pct(m("tpot_mean")[0]),
                             _pct(m("tpot_incl_ttft_mean")[0]), _pct(m("e2e_mean")[0]), _pct(m("output_tok_per_s")[0])])
        lines += [md_table(hdr, rows), ""]
    lines += ["## Per point (means, ms; sim / meas)", ""]
    wide = v.long.pivot_table(index=["formula", "gemm_m", "point_id"], columns="metric", values=["sim", "meas"], aggfunc="first")
    first = v.long.drop_duplicates(["formula", "gemm_m", "point_id"]).set_index(["formula", "gemm_m", "point_id"])
    hdr = ["point", "formula", "gemm_m", "strategy", "overloaded", "n sim", "meas source", "TTFT", "TPOT", "E2E/out", "E2E", "E2E APE"]
    rows = []
    for (f, g, pid), r in first.iterrows():
        def sm(metric, d=1):
            return f"{_num(wide.loc[(f, g, pid), ('sim', metric)], d)} / {_num(wide.loc[(f, g, pid), ('meas', metric)], d)}"
        e2e_ape = v.long[(v.long.formula == f) & (v.long.gemm_m == g) & (v.long.point_id == pid) & (v.long.metric == "e2e_mean")]["ape"].iloc[0]
        rows.append([pid, f, g, r["strategy"], "yes" if r["overloaded"] else "", r["sim_requests"], r["meas_source"],
                     sm("ttft_mean"), sm("tpot_mean", 2), sm("tpot_incl_ttft_mean", 2), sm("e2e_mean", 0), _pct(e2e_ape)])
    lines += [md_table(hdr, rows), ""]
    if len(v.steps):
        lines += [
            "## Per-step check (set B, vLLM server spans)", "",
            "Simulated prefill = first scheduled → first token; decode = first token → finish; measured = vLLM's"
            " `prefill_ms` / `decode_ms` spans of the same requests (matched by prompt and output lengths, then send order).", "",
        ]
        hdr = ["point", "formula", "gemm_m", "strategy", "matched", "prefill sim/meas ms", "prefill APE (per-req MAPE)",
               "decode sim/meas ms", "decode APE (per-req MAPE)"]
        rows = [[r.point_id, r.formula, r.gemm_m, r.strategy, r.n_matched,
                 f"{_num(r.sim_prefill_mean_ms)} / {_num(r.meas_prefill_mean_ms)}", f"{_pct(r.prefill_mean_ape)} ({_pct(r.prefill_per_request_mape)})",
                 f"{_num(r.sim_decode_mean_ms, 0)} / {_num(r.meas_decode_mean_ms, 0)}", f"{_pct(r.decode_mean_ape)} ({_pct(r.decode_per_request_mape)})"]
                for r in v.steps.itertuples()]
        lines += [md_table(hdr, rows), ""]
    flagged = v.points[v.points["overloaded"]]
    if len(flagged):
        lines += ["## Overloaded points", ""]
        lines += [f"- `{r.point_id}`: {r.overload_reason}" for r in flagged.itertuples()]
        lines += [""]
    lines += [
        "## Caveats", "",
        "- Set A has synchronous means only; its lengths are the configured means (fixed lengths, the spread is unknown)."
        " The code sweep's real outputs averaged ≈ 53 tokens, not the configured 28 (README): its E2E is unreliable.",
        "- Set C: Poisson stages are capped to the first N requests; the measured metrics are then recomputed over the"
        " same requests (`meas source` = `requests[:N]`). inference-perf's own output tok/s is not used (re-tokenised counts).",
        "- Unknown server flags take vLLM V1 defaults (prefix caching and chunked prefill on); set C's CPU KV offloading is not modelled.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- plots


def plot_sim_vs_meas(long: pd.DataFrame, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4.4))
    # one colour per dataset in every panel (panels miss datasets that lack a metric)
    colours = {ds: f"C{i}" for i, ds in enumerate(sorted(long["dataset"].dropna().unique()))}
    for ax, metric, label in zip(axes, ("ttft_mean", "tpot_mean", "tpot_incl_ttft_mean", "e2e_mean"),
                                 ("TTFT mean (ms)", "TPOT mean (ms)", "E2E/output mean (ms)", "E2E mean (ms)")):
        d = long[(long["metric"] == metric) & long["sim"].notna() & long["meas"].notna()]
        for ds, grp in d.groupby("dataset", sort=True):
            ax.scatter(grp["meas"], grp["sim"], s=22, label=str(ds)[:24], alpha=0.8, color=colours[ds])
        from .plots import identity_loglog

        identity_loglog(ax, pd.concat([d["meas"], d["sim"]]))
        ax.set_xlabel(f"measured {label}")
        ax.set_ylabel(f"simulated {label}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_latency_vs_rate(long: pd.DataFrame, experiment: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = long[long["experiment"] == experiment]
    rps = d[d["metric"] == "requests_per_s"][["formula", "gemm_m", "point_id", "meas", "sim"]]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, metric, label in zip(axes, ("ttft_mean", "tpot_mean", "e2e_mean"), ("TTFT mean (ms)", "TPOT mean (ms)", "E2E mean (ms)")):
        m = d[d["metric"] == metric].merge(rps, on=["formula", "gemm_m", "point_id"], suffixes=("", "_rps"))
        meas = m.drop_duplicates("point_id").sort_values("meas_rps")
        ax.plot(meas["meas_rps"], meas["meas"], "-o", color="black", label="measured")
        for (f, g), grp in m.groupby(["formula", "gemm_m"], sort=True):
            grp = grp.sort_values("meas_rps")
            ax.plot(grp["meas_rps"], grp["sim"], "--s", markersize=4, label=f"sim {f}/{g}")
        ax.set_xlabel("measured achieved request rate (req/s)")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{experiment}: latency vs rate (x = measured achieved rate of each point)")
    fig.tight_layout()
    return fig


def write_outputs(out: Path, v: ValidationResult, plots: bool = True) -> None:
    from .cli_output import atomic_write_bytes, write_figure, write_json

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
            write_figure(out / "plots" / f"sim_vs_meas_{f}_{g}.png", plot_sim_vs_meas(sub, f"simulated vs measured — {f}, gemm_m={g}, mode={v.settings['mode']}"))
        counts = v.points.groupby("experiment").size()
        for exp in counts[counts > 1].index:
            write_figure(out / "plots" / f"latency_vs_rate_{exp}.png", plot_latency_vs_rate(v.long, exp))


# ---------------------------------------------------------------------------- command


@click.command()
@click.option("--ground-truth", "ground_truth", required=True, help="Measured data directory (points.csv, requests/, requests_server/).")
@click.option("--formula", "formulas", multiple=True, help="Mixed-batch formula(s) to validate (repeatable; default: the calibration's, else weighted-average).")
@click.option("--gemm-m", type=click.Choice(["tokens", "requests"]), default="tokens", show_default=True, help="GEMM M sizing.")
@click.option("--mode", type=click.Choice(list(MODES)), default="guidellm", show_default=True,
              help="guidellm: our arrival semantics and each run's vLLM limits; study: the mixed-batch study's harness.")
@click.option("--bench-data", type=click.Path(file_okay=False), help="bench_data/ directory for MFU tables (default: built-in MFU curves).")
@click.option("--max-requests-per-point", type=int, default=DEFAULT_MAX_REQUESTS_PER_POINT, show_default=True,
              help="Cap on simulated requests per point (set C stages hold up to 12,000).")
@click.option("--experiment", "experiments", multiple=True, help="Only these experiments (repeatable).")
@click.option("--seed", type=int, default=42, show_default=True, help="Run seed.")
@click.option("--calibration", help="Price with a calibration (shipped name or YAML path). In-sample for the data it was fitted on: "
              "the cross-validated errors are in `calibrate`'s report.")
@click.option("--executor", type=click.Choice(["process", "serial", "ray"]), default="process", show_default=True,
              help="Where the independent simulations run.")
@click.option("--workers", type=int, help="Worker processes (default: one per CPU).")
@click.option("--ray-address", help="Ray cluster address (with --executor ray).")
@click.option("--output-dir", "-o", type=click.Path(file_okay=False), default="results/validate", show_default=True, help="Results directory.")
@click.option("--no-plots", is_flag=True, help="Skip PNG plots.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def validate(ground_truth, formulas, gemm_m, mode, bench_data, max_requests_per_point, experiments, seed, calibration,
             executor, workers, ray_address, output_dir, no_plots, quiet) -> None:
    """Simulate every measured point of GROUND_TRUTH and report the errors (MAPE)."""
    from .cli import _Progress, err_console, handle_errors, out_console

    @handle_errors
    def body() -> None:
        from .executor import run_many

        if max_requests_per_point is not None and max_requests_per_point < 1:
            raise ConfigError(f"--max-requests-per-point: must be >= 1, got {max_requests_per_point}")
        cost: dict = {"model": "roofline"}
        if calibration:
            from .calibration import load_calibration

            load_calibration(calibration)  # a clear error now for an unknown name or a bad file
            cost["calibration"] = calibration
        base = parse_run_config({"seed": seed, "cost": cost})
        t0 = time.perf_counter()
        with _Progress(quiet, "validate") as prog:
            def many(cfgs):
                return run_many(cfgs, executor, workers, prog.phase("points", len(cfgs)), ray_address)

            from .calibration import effective_formula

            v = run_validation(ground_truth, many, formulas=formulas or (effective_formula(base),), gemm_ms=(gemm_m,), mode=mode,
                               bench_data_dir=bench_data, max_requests_per_point=max_requests_per_point,
                               experiments=experiments, base=base)
        out = Path(output_dir)
        write_outputs(out, v, plots=not no_plots)
        lk = _mape_lookup(v.mape)
        for f, g in dict.fromkeys(zip(v.long["formula"], v.long["gemm_m"])):
            cells = ", ".join(f"{m} {_pct(lk.get((f, g, 'all', 'overall', 'all', m), (math.nan, 0))[0])}" for m in HEADLINE_METRICS)
            out_console.print(f"{f} (gemm_m={g}, mode={mode}): MAPE {cells}")
        out_console.print(f"results: {out}/ (report.md, points.csv, mape.csv)")
        err_console.print(f"{len(v.long) // 15} point simulations in {time.perf_counter() - t0:.1f} s wall")

    body()
