"""Measured vLLM runs (the ground truth) and their mapping to simulation configs.

Reads a ground-truth directory laid out as ``../shared/ground_truth`` (see
``ground_truth/README.md`` and ``ground_truth/manifest.yaml`` in the project)::

    points.csv                  one row per measured benchmark point
    requests/<exp>.csv          client-side per-request records (lengths, send offsets, latencies)
    requests_server/<exp>.csv   vLLM per-request spans (queue / prefill / decode), set B
    experiments/<exp>/          raw harness configs (profile.yaml, exp-config.yaml, results/config.yaml)
    model_configs/<dir>/config.json, bench_data/ (MFU microbenchmarks)

This module only reads files; :mod:`sim.studies.point_configs` turns a measured point into a
simulation config and recomputes the measured metrics it is scored against.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from sim.errors import ConfigError
from sim.load.formats import detect_format
from sim.load.workload import load_trace

REQUIRED_POINT_COLUMNS = (
    "experiment",
    "dataset",
    "model",
    "model_config_dir",
    "tp",
    "workload",
    "benchmark_index",
    "strategy",
    "rate",
)


# Columns that may be absent from a points file (then treated as unknown / not measured).
OPTIONAL_POINT_COLUMNS = (
    "harness",
    "gpu",
    "vllm_version",
    "max_num_seqs",
    "max_num_batched_tokens",
    "block_size",
    "gpu_memory_utilization",
    "enable_chunked_prefill",
    "enable_prefix_caching",
    "max_model_len",
    "kv_cache_gpu_tokens",
    "prompt_tokens_mean",
    "prompt_tokens_stdev",
    "prompt_tokens_min",
    "prompt_tokens_max",
    "output_tokens_mean",
    "output_tokens_stdev",
    "output_tokens_min",
    "output_tokens_max",
    "prefix_tokens",
    "num_requests_cfg",
    "workload_extra",
    "rate_unit",
    "achieved_rps",
    "interarrival_cv",
    "duration_s",
    "n_successful",
    "n_errored",
    "n_incomplete",
    "request_timeout_s",
    "ttft_mean_ms",
    "ttft_p50_ms",
    "ttft_p90_ms",
    "ttft_p99_ms",
    "tpot_mean_ms",
    "tpot_p50_ms",
    "tpot_p90_ms",
    "tpot_p99_ms",
    "tpot_incl_ttft_mean_ms",
    "e2e_mean_ms",
    "e2e_p50_ms",
    "e2e_p90_ms",
    "e2e_p99_ms",
    "output_tok_per_s",
    "requests_per_s",
    "per_request_file",
    "notes",
)


MEASURED_COLUMNS = (
    "ttft_mean_ms",
    "ttft_p50_ms",
    "ttft_p90_ms",
    "ttft_p99_ms",
    "tpot_mean_ms",
    "tpot_p50_ms",
    "tpot_p90_ms",
    "tpot_p99_ms",
    "tpot_incl_ttft_mean_ms",
    "e2e_mean_ms",
    "e2e_p50_ms",
    "e2e_p90_ms",
    "e2e_p99_ms",
    "output_tok_per_s",
    "requests_per_s",
)


STRATEGIES = ("synchronous", "throughput", "constant", "poisson")


SERVER_SPAN_COLUMNS = ("request_index", "benchmark_index", "prefill_ms", "decode_ms")


# Raw harness configs of experiments/<exp>/ that may state the client's request timeout, in the
# order consulted: inference-perf's resolved config (what it ran with), then its input profile,
# then the deployment description.
HARNESS_CONFIG_FILES = ("results/config.yaml", "profile.yaml", "exp-config.yaml")


def _gt_dir(gt_dir: str | Path) -> Path:
    p = Path(gt_dir).expanduser()
    if not p.is_dir():
        raise ConfigError(f"--ground-truth: directory not found: {p} (expected the measured data, e.g. ../shared/ground_truth)")
    return p


def load_points(gt_dir: str | Path) -> pd.DataFrame:
    """``points.csv`` of ``gt_dir`` as a DataFrame, one row per measured point.

    Adds ``point_id`` (``<experiment>#<benchmark_index>``) and ``load_level`` (synchronous,
    rate = constant or Poisson, throughput). Optional columns missing from the file are added
    as NaN, exactly like blank cells: every measured metric and ``per_request_file`` are
    optional, so aggregate-only points (a workload description and whichever means and
    percentiles were measured) load. ConfigError for a missing directory or file, a missing required column, an unknown
    strategy or a duplicate point.
    """
    root = _gt_dir(gt_dir)
    path = root / "points.csv"
    if not path.is_file():
        raise ConfigError(f"--ground-truth: {root} has no points.csv (one row per measured benchmark point)")
    try:
        df = pd.read_csv(path)
    except Exception as err:  # pandas raises many types for malformed CSV
        raise ConfigError(f"{path}: cannot read as CSV: {err}") from None
    missing = [c for c in REQUIRED_POINT_COLUMNS if c not in df.columns]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {', '.join(missing)}; required: {', '.join(REQUIRED_POINT_COLUMNS)}")
    if df.empty:
        raise ConfigError(f"{path}: no rows")
    for col in OPTIONAL_POINT_COLUMNS:
        if col not in df.columns:
            df[col] = np.nan
    bad = sorted(set(df["strategy"].astype(str)) - set(STRATEGIES))
    if bad:
        raise ConfigError(f"{path}: column strategy has unknown value(s) {', '.join(bad)}; expected {', '.join(STRATEGIES)}")
    for col in ("tp", "benchmark_index"):
        vals = pd.to_numeric(df[col], errors="coerce")
        if vals.isna().any() or (vals < 0).any():
            row = int(np.flatnonzero(vals.isna().to_numpy() | (vals < 0).to_numpy())[0])
            raise ConfigError(f"{path}: column {col} must hold integers >= 0; row {row} has {df[col].iloc[row]!r}")
        df[col] = vals.astype(int)
    df["request_timeout_s"] = _timeouts_column(df["request_timeout_s"], path)
    df["point_id"] = df["experiment"].astype(str) + "#" + df["benchmark_index"].astype(str)
    dup = df["point_id"][df["point_id"].duplicated()]
    if len(dup):
        raise ConfigError(f"{path}: duplicate point (experiment, benchmark_index): {dup.iloc[0]}")
    df["load_level"] = df["strategy"].map({"synchronous": "synchronous", "throughput": "throughput", "constant": "rate", "poisson": "rate"})
    return df.reset_index(drop=True)


def _timeouts_column(col: pd.Series, path: Path) -> pd.Series:
    """``request_timeout_s`` as floats (NaN = blank); ConfigError naming the first bad row."""
    blank = col.isna() | col.astype(str).str.strip().eq("")
    vals = pd.to_numeric(col.where(~blank), errors="coerce").astype(float)
    bad = ~blank & ~(np.isfinite(vals) & (vals > 0))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ConfigError(f"{path}: column request_timeout_s must be blank or a number of seconds > 0; row {row} has {col.iloc[row]!r}")
    return vals


def harness_request_timeout(gt_dir: str | Path, experiment: str) -> tuple[float, str] | None:
    """(seconds, file relative to ``gt_dir``) of the end-to-end request timeout that the raw
    harness config of ``experiment`` states, or None when none states one.

    Consults :data:`HARNESS_CONFIG_FILES` under ``experiments/<experiment>/`` in order; the
    first inference-perf config (:func:`sim.load.formats.detect_format`) that has a
    ``load.request_timeout`` key decides: a number is the timeout (aiohttp's total timeout of a
    request, as :func:`sim.load.formats.from_inference_perf` maps it), null states none
    (inference-perf then falls back on aiohttp's default, which is not applied). guidellm
    profiles and deployment descriptions state none: guidellm's backend ``timeout`` is httpx's
    read timeout, not an end-to-end bound. ConfigError for a file that is not YAML or a stated
    timeout that is not a number > 0.
    """
    root = Path(gt_dir)
    for rel in HARNESS_CONFIG_FILES:
        path = root / "experiments" / experiment / rel
        if not path.is_file():
            continue
        try:
            data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: cannot read as YAML: {err}") from None
        if detect_format(data) != "inference-perf":
            continue
        if "request_timeout" not in data["load"]:
            continue
        value = data["load"]["request_timeout"]
        if value is None:
            return None
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            seconds = math.nan
        if isinstance(value, bool) or not (math.isfinite(seconds) and seconds > 0):
            raise ConfigError(f"{path}: load.request_timeout must be a number of seconds > 0 or null, got {value!r}")
        return seconds, path.relative_to(root).as_posix()
    return None


def requests_path(gt_dir: str | Path, point: pd.Series | dict) -> Path | None:
    """The per-request file of ``point`` (``per_request_file`` or ``requests/<exp>.csv``), or None."""
    root = Path(gt_dir)
    rel = point.get("per_request_file")
    candidates = []
    if isinstance(rel, str) and rel.strip():
        candidates.append(root / rel.strip())
    candidates.append(root / "requests" / f"{point['experiment']}.csv")
    for p in candidates:
        if p.is_file():
            return p
    return None


def load_requests(gt_dir: str | Path, experiment: str) -> pd.DataFrame | None:
    """Client-side per-request rows of ``experiment`` (all benchmarks), or None if absent."""
    p = Path(gt_dir) / "requests" / f"{experiment}.csv"
    if not p.is_file():
        return None
    return pd.read_csv(p)


def load_server_spans(gt_dir: str | Path, experiment: str) -> pd.DataFrame | None:
    """vLLM per-request spans of ``experiment`` (``requests_server/<exp>.csv``), or None.

    ConfigError if the file lacks request_index, benchmark_index, prefill_ms or decode_ms.
    """
    p = Path(gt_dir) / "requests_server" / f"{experiment}.csv"
    if not p.is_file():
        return None
    df = pd.read_csv(p)
    missing = [c for c in SERVER_SPAN_COLUMNS if c not in df.columns]
    if missing:
        raise ConfigError(f"{p}: missing column(s) {', '.join(missing)}")
    return df


def trace_rows(gt_dir: str | Path, point: pd.Series | dict, limit: int | None = None) -> pd.DataFrame | None:
    """The successful request rows of ``point`` in send order, as the simulator replays them
    (row i = simulated request_id i), cut to ``limit``; None without a per-request file."""
    p = requests_path(gt_dir, point)
    if p is None:
        return None
    df = load_trace(p, int(point["benchmark_index"]), only_ok=True)
    return df.iloc[:limit].reset_index(drop=True) if limit else df
