"""The Markdown report of a validation (``report.md``): overall / per-dataset / per-load-level /
per-experiment MAPE, the per-point table, failed requests (simulated vs measured counts), the
per-step check and the caveats.

Rendering never requires a metric to be present: a (point, metric) that is missing from the
long table, or whose simulated or measured value is unknown, is shown as ``–`` (a metric that
no point measured, e.g. in an aggregate-only ground truth, gives a column of ``–``)."""

from __future__ import annotations

import math

import pandas as pd

from sim.studies.markdown import md_table, num_cell, pct_cell
from sim.studies.scoring import HEADLINE_METRICS
from sim.studies.validate import ValidationResult


def mape_lookup(mt: pd.DataFrame) -> dict:
    return {(r.formula, r.gemm_m, r.subset, r.group_by, r.group, r.metric): (r.mape, r.n) for r in mt.itertuples()}


_UNKNOWN = (math.nan, math.nan, math.nan)


def point_cells(long: pd.DataFrame) -> dict[tuple, tuple[float, float, float]]:
    """``(formula, gemm_m, point_id, metric) -> (sim, meas, ape)`` of a validation's long table
    (the first row of each key). A key absent from the result means the metric was not scored
    for that point; callers fall back to unknown (NaN) values."""
    out: dict[tuple, tuple[float, float, float]] = {}
    for r in long.itertuples(index=False):
        out.setdefault((r.formula, r.gemm_m, r.point_id, r.metric), (r.sim, r.meas, r.ape))
    return out


def _count(x: float) -> str:
    return num_cell(x, 0)


def _points(k: int) -> str:
    return f"{k} point{'' if k == 1 else 's'}"


def failure_cells(failures: pd.DataFrame) -> dict[tuple, str]:
    """``(formula, gemm_m, point_id) -> "sim / meas"`` failed-request counts (``–`` = unknown)."""
    return {(r.formula, r.gemm_m, r.point_id): f"{_count(r.sim_failures)} / {_count(r.meas_failures)}" for r in failures.itertuples(index=False)}


def failure_summary(failures: pd.DataFrame) -> dict[tuple[str, str], str]:
    """``(formula, gemm_m) -> one sentence``: total simulated vs measured failed requests over the
    points with measured counts, the points where the two differ (sim / meas), and the
    simulated failures of the points without measured counts."""
    out: dict[tuple[str, str], str] = {}
    for (f, g), df in failures.groupby(["formula", "gemm_m"], sort=False):
        known = df[df["meas_failures"].notna()]
        differ = known[known["sim_failures"] != known["meas_failures"]]
        text = (
            f"simulated {int(known['sim_failures'].sum())} vs measured {_count(known['meas_failures'].sum())} failed requests"
            f" over the {_points(len(known))} with measured counts"
        )
        if len(differ):
            text += f"; they differ at {len(differ)}: " + ", ".join(
                f"`{r.point_id}` ({r.sim_failures} / {_count(r.meas_failures)})" for r in differ.itertuples()
            )
        elif len(known):
            text += "; equal at every one"
        unknown = df[df["meas_failures"].isna()]
        if len(unknown):
            text += f"; {_points(len(unknown))} without measured counts (simulated failures there: {int(unknown['sim_failures'].sum())})"
        out[(str(f), str(g))] = text + "."
    return out


def _timeout_sentence(failures: pd.DataFrame) -> str:
    per_point = failures.drop_duplicates("point_id")
    with_timeout = per_point[per_point["request_timeout_s"].notna()]
    if with_timeout.empty:
        return "No point's harness config or points.csv states a request timeout: no client timeouts were simulated."
    groups = with_timeout.groupby(["request_timeout_s", "timeout_source"], sort=True).size()
    parts = [f"{t:g} s from `{src}` ({_points(k)})" for (t, src), k in groups.items()]
    return f"Client request timeouts simulated at {len(with_timeout)} of {_points(len(per_point))}: " + ", ".join(parts) + "."


def render_report(v: ValidationResult) -> str:
    s = v.settings
    lk = mape_lookup(v.mape)
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
        "`–` = unknown: a metric a point did not measure (blank or absent in points.csv) is not scored for that point"
        " and is left out of that metric's MAPE and its n.",
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
                cells.append(f"{pct_cell(val)} ({n})")
            rows.append([f, g, sub, *cells])
    lines += [md_table(hdr, rows), ""]
    for group_by, title in (("dataset", "By dataset"), ("load_level", "By load level"), ("workload", "By workload"), ("experiment", "By experiment")):
        lines += [f"## {title} (all points)", ""]
        groups = sorted(set(v.mape[(v.mape["group_by"] == group_by)]["group"]))
        hdr = [group_by, "formula", "gemm_m", "n", "TTFT", "TPOT", "E2E/out", "E2E", "out tok/s"]
        rows = []
        for grp in groups:
            for f, g in combos:

                def mape_n(metric: str) -> tuple[float, int]:
                    return lk.get((f, g, "all", group_by, grp, metric), (math.nan, 0))

                rows.append(
                    [
                        grp,
                        f,
                        g,
                        mape_n("e2e_mean")[1] or mape_n("tpot_incl_ttft_mean")[1],
                        pct_cell(mape_n("ttft_mean")[0]),
                        pct_cell(mape_n("tpot_mean")[0]),
                        pct_cell(mape_n("tpot_incl_ttft_mean")[0]),
                        pct_cell(mape_n("e2e_mean")[0]),
                        pct_cell(mape_n("output_tok_per_s")[0]),
                    ]
                )
        lines += [md_table(hdr, rows), ""]
    lines += ["## Per point (means, ms; sim / meas)", ""]
    by_point = point_cells(v.long)
    first = v.long.drop_duplicates(["formula", "gemm_m", "point_id"]).set_index(["formula", "gemm_m", "point_id"])
    fail_cells = failure_cells(v.failures) if len(v.failures) else {}
    hdr = ["point", "formula", "gemm_m", "strategy", "overloaded", "n sim", "meas source", "TTFT", "TPOT", "E2E/out", "E2E", "E2E APE", "failures"]
    rows = []
    for (f, g, pid), r in first.iterrows():

        def sm(metric: str, d: int = 1) -> str:
            sim, meas, _ = by_point.get((f, g, pid, metric), _UNKNOWN)
            return f"{num_cell(sim, d)} / {num_cell(meas, d)}"

        e2e_ape = by_point.get((f, g, pid, "e2e_mean"), _UNKNOWN)[2]
        rows.append(
            [
                pid,
                f,
                g,
                r["strategy"],
                "yes" if r["overloaded"] else "",
                r["sim_requests"],
                r["meas_source"],
                sm("ttft_mean"),
                sm("tpot_mean", 2),
                sm("tpot_incl_ttft_mean", 2),
                sm("e2e_mean", 0),
                pct_cell(e2e_ape),
                fail_cells.get((f, g, pid), "– / –"),
            ]
        )
    lines += [md_table(hdr, rows), ""]
    if len(v.failures):
        lines += [
            "## Failed requests (sim / meas)",
            "",
            "Simulated failures = requests timed out by the client's request timeout + requests rejected at admission;"
            " measured = `n_errored + n_incomplete`. Counts are compared by absolute difference (`failures.csv`, `abs_err`),"
            " not in any MAPE. " + _timeout_sentence(v.failures),
            "",
        ]
        lines += [f"- {f} / {g}: {text}" for (f, g), text in failure_summary(v.failures).items()]
        lines += [""]
    if len(v.steps):
        lines += [
            "## Per-step check (set B, vLLM server spans)",
            "",
            "Simulated prefill = first scheduled → first token; decode = first token → finish; measured = vLLM's"
            " `prefill_ms` / `decode_ms` spans of the same requests (matched by prompt and output lengths, then send order).",
            "",
        ]
        hdr = [
            "point",
            "formula",
            "gemm_m",
            "strategy",
            "matched",
            "prefill sim/meas ms",
            "prefill APE (per-req MAPE)",
            "decode sim/meas ms",
            "decode APE (per-req MAPE)",
        ]
        rows = [
            [
                r.point_id,
                r.formula,
                r.gemm_m,
                r.strategy,
                r.n_matched,
                f"{num_cell(r.sim_prefill_mean_ms)} / {num_cell(r.meas_prefill_mean_ms)}",
                f"{pct_cell(r.prefill_mean_ape)} ({pct_cell(r.prefill_per_request_mape)})",
                f"{num_cell(r.sim_decode_mean_ms, 0)} / {num_cell(r.meas_decode_mean_ms, 0)}",
                f"{pct_cell(r.decode_mean_ape)} ({pct_cell(r.decode_per_request_mape)})",
            ]
            for r in v.steps.itertuples()
        ]
        lines += [md_table(hdr, rows), ""]
    flagged = v.points[v.points["overloaded"]]
    if len(flagged):
        lines += ["## Overloaded points", ""]
        lines += [f"- `{r.point_id}`: {r.overload_reason}" for r in flagged.itertuples()]
        lines += [""]
    lines += [
        "## Caveats",
        "",
        "- Set A has synchronous means only; its lengths are the configured means (fixed lengths, the spread is unknown)."
        " The code sweep's real outputs averaged ≈ 53 tokens, not the configured 28 (README): its E2E is unreliable.",
        "- Set C: Poisson stages are capped to the first N requests; the measured metrics are then recomputed over the"
        " same requests (`meas source` = `requests[:N]`). inference-perf's own output tok/s is not used (re-tokenised counts).",
        "- Failed requests: a replayed trace holds only the requests that succeeded, so a measured failure has no"
        " simulated counterpart; a capped point simulates its first N requests while the measured counts cover the whole"
        " benchmark (`sim_requests` vs `meas_requests` in failures.csv).",
        "- Unknown server flags take vLLM V1 defaults (prefix caching and chunked prefill on); set C's CPU KV offloading is not modelled.",
        "",
    ]
    return "\n".join(lines)
