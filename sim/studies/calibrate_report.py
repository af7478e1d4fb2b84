"""The Markdown report of a calibration (``report.md``): fitted values, CV MAPE per metric and
experiment beside the seed model for each formula, interval coverage."""

from __future__ import annotations

import math
from typing import Any

from sim.cost.calibration import KNOB_NAMES, KNOBS, seed_knobs
from sim.studies.calibrate import TARGETS, FormulaResult, mape_summary
from sim.studies.intervals import coverage
from sim.studies.markdown import md_table


def pct_or_dash(x) -> str:
    return "-" if x is None or not math.isfinite(float(x)) else f"{100 * float(x):.1f}%"


def render_report(results: list[FormulaResult], settings: dict) -> str:
    lines = [
        "# Calibration report",
        "",
        f"Command: `{settings['command']}`",
        "",
        f"Data: `{settings['ground_truth']}` ({settings['n_points']} points, {settings['n_experiments']} experiments, "
        f"{settings['n_overloaded']} overloaded points excluded from fitting and from the headline figures); GPU {settings['gpu']}; "
        f"fit cap {settings['fit_max_requests']} requests/point, evaluation cap {settings['eval_max_requests']}; "
        f"{settings['n_bootstrap']} bootstrap replicates; level {settings['level']:.0%}; wall {settings['wall_s']:.0f} s. "
        f"Cost model: gemm_m {settings['gemm_m']}, MFU lookup {settings['mfu_lookup']}, decode attention at the "
        f"{settings['decode_attention_context']} context, decode KV read fraction {settings['decode_kv_read_fraction']:g}, "
        f"LM head {'read every step' if settings.get('lm_head_reads') else 'not read (layers only)'}. "
        + (
            f"LOEO folds refitted by simulation ({settings['cv_refit_maxfev']} simulations each, from the linearised fold knobs)."
            if settings.get("cv_refit_maxfev")
            else "LOEO folds from the linearised refit (one-step jackknife)."
        ),
        "",
    ]
    lines += ["## Fitted knobs", ""]
    hdr = ["knob", "seed"] + [r.formula for r in results] + ["meaning"]
    seed = seed_knobs(settings["gpu"])
    rows: list[list[Any]] = []
    for k in KNOB_NAMES:
        sk = f"{seed[k]:.4g}" if k in seed else "none"
        rows.append(
            [k, sk] + [(f"{r.knobs[k]:.4g}" if k in r.knobs else sk) + ("" if k in settings["knobs"] else " (fixed)") for r in results] + [KNOBS[k].meaning]
        )
    lines += [md_table(hdr, rows), ""]
    lines += ["## Overall (not overloaded points): seed model, in-sample fit, leave-one-experiment-out CV", ""]
    hdr = ["formula", "metric", "n", "seed MAPE", "fit MAPE (in-sample)", "CV MAPE", "target", f"{settings['level']:.0%} PI coverage"]
    rows = []
    for r in results:
        s = mape_summary(r.table)
        for _, x in s.iterrows():
            rows.append(
                [
                    r.formula,
                    x["metric"],
                    x["n"],
                    pct_or_dash(x["seed"]),
                    pct_or_dash(x["fit"]),
                    pct_or_dash(x["cv"]),
                    pct_or_dash(TARGETS.get(x["metric"], math.nan)),
                    pct_or_dash(x["coverage"]),
                ]
            )
    lines += [md_table(hdr, rows), ""]
    for r in results:
        t = r.table
        nov = t[~t["overloaded"]]
        cov, n = coverage(nov["meas"], nov["lo"], nov["hi"])
        worst = mape_summary(t, "experiment")
        e2e = worst[worst["metric"] == "e2e_mean"].sort_values("cv", ascending=False)
        lines += [
            f"## {r.formula}: per experiment (CV, not overloaded points)",
            "",
            f"Interval coverage over all metrics and not-overloaded points: {pct_or_dash(cov)} of {n}. "
            f"Experiments with CV E2E MAPE > 20 %: {', '.join(f'{x.experiment} ({pct_or_dash(x.cv)})' for x in e2e.itertuples() if x.cv > 0.2) or 'none'}.",
            "",
        ]
        hdr = ["experiment", "n", "TTFT seed", "TTFT CV", "TPOT seed", "TPOT CV", "E2E seed", "E2E CV", "E2E/out seed", "E2E/out CV"]
        rows = []
        for e in dict.fromkeys(t["experiment"]):

            def g(metric, col):
                x = worst[(worst["experiment"] == e) & (worst["metric"] == metric)]
                return pct_or_dash(x[col].iloc[0]) if len(x) else "-"

            n_e = int(((t["experiment"] == e) & ~t["overloaded"] & (t["metric"] == "e2e_mean")).sum())
            rows.append(
                [
                    e,
                    n_e,
                    g("ttft_mean", "seed"),
                    g("ttft_mean", "cv"),
                    g("tpot_mean", "seed"),
                    g("tpot_mean", "cv"),
                    g("e2e_mean", "seed"),
                    g("e2e_mean", "cv"),
                    g("tpot_incl_ttft_mean", "seed"),
                    g("tpot_incl_ttft_mean", "cv"),
                ]
            )
        lines += [md_table(hdr, rows), ""]
        ov = t[t["overloaded"] & (t["metric"] == "e2e_mean")]
        if len(ov):
            lines += [
                "Overloaded points (not fitted; E2E seed / CV APE): "
                + ", ".join(f"`{x.point_id}` {pct_or_dash(x.ape_seed)} / {pct_or_dash(x.ape_cv)}" for x in ov.itertuples()),
                "",
            ]
        lines += [f"Fold knobs ({r.formula}):", ""]
        hdr = ["held-out experiment"] + list(settings["knobs"])
        rows = [[f.experiment] + [f"{f.knobs[k]:.4g}" for k in settings["knobs"]] for f in r.folds]
        lines += [md_table(hdr, rows), ""]
    return "\n".join(lines)
