"""Validation against measured runs: errors per point and MAPE per group (pure logic, no I/O).

Per point and metric: ``ape = |sim − meas| / meas`` (NaN when either side is unknown or the
measured value is not > 0). Metrics (simulated summary key ← measured points.csv column):

============================  ===============================  ============================
metric                        simulated                        measured
============================  ===============================  ============================
ttft_mean, _p50, _p90, _p99   ttft_*_ms                        ttft_*_ms
tpot_mean, _p50, _p90, _p99   tpot_*_ms  (vLLM: (e2e−ttft)/(out−1))  tpot_*_ms
tpot_incl_ttft_mean           time_per_output_token_mean_ms    tpot_incl_ttft_mean_ms (guidellm
                              (mean e2e/output)                ``time_per_output_token``; set A's only TPOT)
e2e_mean, _p50, _p90, _p99    e2e_*_ms                         e2e_*_ms
output_tok_per_s              output_tokens_per_s              output_tok_per_s
requests_per_s                requests_per_s                   requests_per_s
============================  ===============================  ============================

MAPE of a group = mean APE over its points with a finite APE (the study's definition:
averaged over points); a point that did not measure a metric (NaN) is left out of that metric's
MAPE and count, never scored as zero error. Groups: experiment, workload, strategy, load level, dataset, overall;
each also without the points flagged ``overloaded`` (see :func:`overload_flags`).

Failed requests are counts, compared by absolute difference, not APE (:func:`failure_table`):
simulated failures = ``num_timed_out`` (client timeouts; 0 in a run without one) +
``num_rejected`` (admission refusals); measured failures = ``n_errored + n_incomplete`` of
points.csv (unknown when either is blank). They take no part in MAPE.

The per-step check (:func:`step_check`) compares, request by request, the simulated prefill
time (first scheduled → first token) and decode time (first token → finish) with vLLM's
server-side spans (``prefill_ms``, ``decode_ms``) of set B, matching requests by their
(prompt, output) lengths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

# (metric, simulated summary key, measured column)
METRICS: tuple[tuple[str, str, str], ...] = (
    ("ttft_mean", "ttft_mean_ms", "ttft_mean_ms"),
    ("ttft_p50", "ttft_p50_ms", "ttft_p50_ms"),
    ("ttft_p90", "ttft_p90_ms", "ttft_p90_ms"),
    ("ttft_p99", "ttft_p99_ms", "ttft_p99_ms"),
    ("tpot_mean", "tpot_mean_ms", "tpot_mean_ms"),
    ("tpot_p50", "tpot_p50_ms", "tpot_p50_ms"),
    ("tpot_p90", "tpot_p90_ms", "tpot_p90_ms"),
    ("tpot_p99", "tpot_p99_ms", "tpot_p99_ms"),
    ("tpot_incl_ttft_mean", "time_per_output_token_mean_ms", "tpot_incl_ttft_mean_ms"),
    ("e2e_mean", "e2e_mean_ms", "e2e_mean_ms"),
    ("e2e_p50", "e2e_p50_ms", "e2e_p50_ms"),
    ("e2e_p90", "e2e_p90_ms", "e2e_p90_ms"),
    ("e2e_p99", "e2e_p99_ms", "e2e_p99_ms"),
    ("output_tok_per_s", "output_tokens_per_s", "output_tok_per_s"),
    ("requests_per_s", "requests_per_s", "requests_per_s"),
)
METRIC_NAMES = tuple(m for m, _, _ in METRICS)
HEADLINE_METRICS = ("ttft_mean", "tpot_mean", "tpot_incl_ttft_mean", "e2e_mean", "output_tok_per_s", "requests_per_s")
GROUP_BYS = ("experiment", "workload", "strategy", "load_level", "dataset", "overall")
POINT_ID_COLUMNS = ("point_id", "experiment", "dataset", "workload", "strategy", "load_level", "benchmark_index", "rate")

# overload heuristics
ACHIEVED_RATE_SHORTFALL = 0.9  # an open-loop point that achieved < 90 % of its offered rate
TTFT_BLOWUP_VS_SYNC = 5.0  # mean TTFT > 5x that of the experiment's synchronous point


def ape(sim: float, meas: float) -> float:
    """Absolute percentage error as a fraction, |sim − meas|/meas; NaN if undefined."""
    try:
        s, m = float(sim), float(meas)
    except (TypeError, ValueError):
        return math.nan
    if not (math.isfinite(s) and math.isfinite(m)) or m <= 0:
        return math.nan
    return abs(s - m) / m


def mape(apes: Sequence[float] | np.ndarray | pd.Series) -> float:
    """Mean of the finite APEs (fraction); NaN if there are none."""
    a = np.asarray(apes, dtype=float)
    a = a[np.isfinite(a)]
    return float(a.mean()) if len(a) else math.nan


def overload_flags(points: pd.DataFrame) -> pd.DataFrame:
    """``overloaded`` (bool) and ``overload_reason`` per point, from the measurements only.

    A point is overloaded when it is a ``throughput`` point (all requests at t0: queueing by
    design), an open-loop point whose achieved rate fell below 90 % of the offered rate, or
    one whose mean TTFT exceeds 5x that of its experiment's synchronous point. Calibration
    should exclude these: their latency is dominated by queueing, not step cost.
    """
    sync_ttft = points[points["strategy"] == "synchronous"].groupby("experiment")["ttft_mean_ms"].first()
    flags, reasons = [], []
    for _, p in points.iterrows():
        why = []
        if p["strategy"] == "throughput":
            why.append("throughput point (all requests at t0)")
        if p["strategy"] in ("constant", "poisson"):
            rate, ach = _f(p.get("rate")), _f(p.get("achieved_rps"))
            if rate > 0 and ach > 0 and ach < ACHIEVED_RATE_SHORTFALL * rate:
                why.append(f"achieved {ach:.3g} of {rate:.3g} req/s offered")
            s = _f(sync_ttft.get(p["experiment"], math.nan))
            t = _f(p.get("ttft_mean_ms"))
            if s > 0 and t > TTFT_BLOWUP_VS_SYNC * s:
                why.append(f"TTFT {t:.0f} ms > {TTFT_BLOWUP_VS_SYNC:g}x synchronous {s:.0f} ms")
        flags.append(bool(why))
        reasons.append("; ".join(why))
    return pd.DataFrame({"overloaded": flags, "overload_reason": reasons}, index=points.index)


def _f(x) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v


def compare_points(
    points: pd.DataFrame,
    summaries: Sequence[dict],
    measured: Sequence[dict] | None = None,
    extra: dict[str, Sequence] | None = None,
) -> pd.DataFrame:
    """Long table, one row per (point, metric): identity columns, ``overloaded``, ``sim``,
    ``meas``, ``ape``. ``summaries[i]`` is the simulated summary of ``points.iloc[i]``;
    ``measured[i]`` (optional) replaces points.csv's values for that point (e.g. recomputed
    over the simulated subset of requests). ``extra`` adds per-point columns (e.g. formula)."""
    if len(summaries) != len(points):
        raise ValueError(f"{len(summaries)} summaries for {len(points)} points")
    if measured is not None and len(measured) != len(points):
        raise ValueError(f"{len(measured)} measured dicts for {len(points)} points")
    flags = overload_flags(points)
    rows = []
    for i, (idx, p) in enumerate(points.iterrows()):
        ident = {c: p.get(c) for c in POINT_ID_COLUMNS if c in points.columns}
        ident["overloaded"] = bool(flags.at[idx, "overloaded"])
        if extra:
            for k, v in extra.items():
                ident[k] = v[i]
        meas_src = measured[i] if measured is not None else {}
        for metric, skey, mcol in METRICS:
            s = _f(summaries[i].get(skey, math.nan))
            m = _f(meas_src[mcol]) if mcol in meas_src else _f(p.get(mcol))
            rows.append({**ident, "metric": metric, "sim": s, "meas": m, "ape": ape(s, m)})
    return pd.DataFrame(rows)


FAILURE_COLUMNS = (
    "point_id",
    "experiment",
    "dataset",
    "strategy",
    "request_timeout_s",
    "timeout_source",
    "sim_requests",
    "sim_timed_out",
    "sim_rejected",
    "sim_failures",
    "meas_requests",
    "meas_errored",
    "meas_incomplete",
    "meas_failures",
    "abs_err",
)


def simulated_failures(summary: dict) -> tuple[int, int]:
    """(timed out, rejected) requests of a simulated run's summary; a run without a client
    timeout has no ``num_timed_out`` key and timed out none."""
    return int(summary.get("num_timed_out", 0)), int(summary.get("num_rejected", 0))


def measured_failures(point: pd.Series | dict) -> float:
    """``n_errored + n_incomplete`` of a measured point; NaN when either count is unknown."""
    errored, incomplete = _f(point.get("n_errored")), _f(point.get("n_incomplete"))
    return errored + incomplete if math.isfinite(errored) and math.isfinite(incomplete) else math.nan


def failure_table(
    points: pd.DataFrame,
    summaries: Sequence[dict],
    timeouts: Sequence[tuple[float | None, str]],
    extra: dict[str, Sequence] | None = None,
) -> pd.DataFrame:
    """One row per point: :data:`FAILURE_COLUMNS` (after the ``extra`` per-point columns, e.g.
    formula). ``summaries[i]`` is the simulated summary of ``points.iloc[i]`` and
    ``timeouts[i]`` its client timeout (seconds or None) and that value's source.

    ``sim_failures = sim_timed_out + sim_rejected`` over the ``sim_requests`` simulated;
    ``meas_failures = meas_errored + meas_incomplete`` (:func:`measured_failures`) out of
    ``meas_requests`` (n_successful + n_errored + n_incomplete; NaN when a count is unknown);
    ``abs_err = |sim_failures − meas_failures|`` (NaN when the measured count is unknown)."""
    if len(summaries) != len(points) or len(timeouts) != len(points):
        raise ValueError(f"{len(summaries)} summaries and {len(timeouts)} timeouts for {len(points)} points")
    rows = []
    for i, (_, p) in enumerate(points.iterrows()):
        timed_out, rejected = simulated_failures(summaries[i])
        meas = measured_failures(p)
        timeout_s, source = timeouts[i]
        row = {k: v[i] for k, v in (extra or {}).items()}
        row.update({c: p.get(c) for c in ("point_id", "experiment", "dataset", "strategy")})
        row.update(
            {
                "request_timeout_s": math.nan if timeout_s is None else float(timeout_s),
                "timeout_source": source,
                "sim_requests": int(summaries[i].get("num_requests", 0)),
                "sim_timed_out": timed_out,
                "sim_rejected": rejected,
                "sim_failures": timed_out + rejected,
                "meas_requests": _f(p.get("n_successful")) + meas,
                "meas_errored": _f(p.get("n_errored")),
                "meas_incomplete": _f(p.get("n_incomplete")),
                "meas_failures": meas,
                "abs_err": abs(timed_out + rejected - meas),
            }
        )
        rows.append(row)
    return pd.DataFrame(rows, columns=[*(extra or {}), *FAILURE_COLUMNS])


def mape_table(long: pd.DataFrame, by: Sequence[str] = GROUP_BYS, keys: Sequence[str] = ()) -> pd.DataFrame:
    """MAPE (fraction) and point counts per group, metric and subset (``all`` /
    ``not_overloaded``). ``keys`` are extra columns to keep apart (e.g. formula, gemm_m).
    Only finite APEs count: ``n`` is the number of points scored on that metric, and a
    (group, metric) with none has no row."""
    out = []
    keys = list(keys)
    for subset, df in (("all", long), ("not_overloaded", long[~long["overloaded"].astype(bool)])):
        df = df[np.isfinite(df["ape"].astype(float))]
        for g in by:
            gcols = keys + ([] if g == "overall" else [g]) + ["metric"]
            if df.empty:
                continue
            agg = df.groupby(gcols, sort=True, dropna=False)["ape"].agg(["mean", "count"]).reset_index()
            agg = agg.rename(columns={"mean": "mape", "count": "n"})
            agg["group"] = "all" if g == "overall" else agg[g].astype(str)
            agg["group_by"] = g
            agg["subset"] = subset
            out.append(agg[keys + ["subset", "group_by", "group", "metric", "n", "mape"]])
    if not out:
        return pd.DataFrame(columns=keys + ["subset", "group_by", "group", "metric", "n", "mape"])
    return pd.concat(out, ignore_index=True)


def step_check(sim_requests: pd.DataFrame, spans: pd.DataFrame) -> dict:
    """Per-request prefill/decode times of one point: simulated vs vLLM's spans.

    ``sim_requests``: the SimResult's ``requests`` (request_id = send order); ``spans``: the
    point's server rows (``prompt_tokens``, ``output_tokens``, ``prefill_ms``, ``decode_ms``,
    optionally ``start_offset_s``). The client and server files number requests differently,
    so requests are matched by (prompt_tokens, output_tokens) and, among equal pairs, by send
    order. Only finished simulated requests count. Returns the matched count, means (ms), the
    APE of the means and the mean per-request APE for both phases.
    """
    sim = sim_requests[sim_requests["status"] == "finished"].sort_values("request_id", kind="stable").copy()
    sim["sim_prefill_ms"] = (sim["first_token_s"] - sim["first_scheduled_s"]) * 1e3
    sim["sim_decode_ms"] = (sim["finish_s"] - sim["first_token_s"]) * 1e3
    sp = spans.sort_values("start_offset_s", kind="stable") if "start_offset_s" in spans.columns else spans
    sp = sp[["prompt_tokens", "output_tokens", "prefill_ms", "decode_ms"]].copy()
    keys = ["prompt_tokens", "output_tokens"]
    for df in (sim, sp):
        for k in keys:
            df[k] = df[k].astype(np.int64)
        df["_occ"] = df.groupby(keys).cumcount()
    merged = sim.merge(sp, on=keys + ["_occ"], how="inner")
    out: dict = {"n_matched": int(len(merged))}
    for phase in ("prefill", "decode"):
        s = merged[f"sim_{phase}_ms"].to_numpy(dtype=float)
        m = merged[f"{phase}_ms"].to_numpy(dtype=float)
        sm, mm = (float(s.mean()) if len(s) else math.nan), (float(m.mean()) if len(m) else math.nan)
        out[f"sim_{phase}_mean_ms"] = sm
        out[f"meas_{phase}_mean_ms"] = mm
        out[f"{phase}_mean_ape"] = ape(sm, mm)
        out[f"{phase}_per_request_mape"] = mape([ape(a, b) for a, b in zip(s, m)])
    return out
