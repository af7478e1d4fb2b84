"""Measured points → simulation configs (and the measured metrics over the same requests).

:func:`point_to_config` turns one measured point (read by :mod:`sim.studies.groundtruth`)
into a :class:`~sim.config.RunConfig` in one of two modes:

``guidellm`` (default; our semantics, architecture.md reference decision 4)
    The run's own vLLM limits (max_num_seqs, max_num_batched_tokens, max_model_len,
    block_size, prefix caching, chunked prefill, gpu_memory_utilization) and its measured KV
    size (``server.num_gpu_blocks = kv_cache_gpu_tokens // block_size``); unknown limits take
    vLLM V1 defaults (prefix caching ON, as vLLM V1 does). The workload replays the measured
    per-request lengths from ``requests/<exp>.csv`` where it exists: send times too
    (``replay``) for constant and Poisson points; ``synchronous`` (closed loop) and
    ``throughput`` (all at t0, in-flight cap = guidellm's max concurrency) keep their
    strategies with the trace's lengths. Without a trace (set A) the configured distributions
    of points.csv are used (fixed lengths when no stdev is known) with the guidellm strategy.
    inference-perf ``shared_prefix`` points (set C) send num_groups × num_prompts_per_group
    distinct prompts in a cycle (``workload.prompt_pool``; the traces show it: 98–99.7 % of
    requests have the prompt length of the request 100 before), so repeats hit vLLM's prefix
    cache for the whole prompt; a stage after the first starts with them cached
    (``prompt_pool_warm``), as the same server had just served them. Set C's server also
    ran with async scheduling (``server.async_scheduling``; its vLLM version is not recorded,
    the runs date from February 2026, after vLLM turned it on by default): its warm-cache
    TTFT is 3 ms + 2.3 TPOT at the 1st percentile and ≈ 7 ms + 2.5 TPOT at the median for
    Llama-2-7B, CodeLlama-34B and Llama-2-70B alike — one step more than a request that joins
    the next step would see — while set B (vLLM 0.11, no async scheduling) shows client TTFT
    = server TTFT + 10 ms with the server's TTFT = queue + prefill.
    The client gets the request timeout its harness used (:func:`request_timeout_for_point`):
    a non-blank points.csv ``request_timeout_s``, else the one the experiment's raw config
    states, else none (the client waits forever). No shipped experiment states one: set C's
    resolved inference-perf configs say ``load.request_timeout: null`` and guidellm's
    ``timeout`` (httpx's read timeout) is not an end-to-end bound.

``study`` (reproduces the mixed-batch study's harness, blis-reference.md §5)
    Every point becomes ``open-loop-at-measured-rate``: synchronous → n_successful/duration,
    constant/poisson → the configured rate, throughput → n_successful/duration. Set A has no
    n or duration; for a synchronous benchmark n/duration ≈ 1/mean E2E, which is used. Server:
    BLIS defaults (max_num_seqs 256, max_num_batched_tokens 2048, 1,000,000 KV blocks, block
    16, prefix caching on, max_model_len not enforced). Workload: the configured length
    distributions (normal, clipped), ``num_requests_cfg`` requests (BLIS default 100 when
    unknown). No client timeout (the study's harness had none), whatever the point states.

Large points (set C: Poisson stages of 600 s with 3,000–12,000 requests) are capped to
``max_requests_per_point`` requests (default :data:`DEFAULT_MAX_REQUESTS_PER_POINT`; ``None``
= no cap). With a trace, the first N requests by send time are replayed, and
:func:`measured_for_point` recomputes the measured metrics over exactly those requests so that
both sides describe the same requests.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from sim.catalogue.models import resolve_model
from sim.config import RunConfig, merge, parse_run_config
from sim.errors import ConfigError
from sim.load.workload import load_trace
from sim.studies.groundtruth import MEASURED_COLUMNS, harness_request_timeout, requests_path, trace_rows

Mode = Literal["guidellm", "study"]


MODES = ("guidellm", "study")


DEFAULT_MAX_REQUESTS_PER_POINT = 2000


"""Cap on simulated requests per point (set C stages hold 3,000–12,000; 2,000 at 5–20 req/s
is 100–400 s of steady state, ample for means and p99, and keeps a point to seconds)."""


DEFAULT_SYNC_REQUESTS = 20


"""Requests of a synchronous point without a trace or a configured count (set A). Lengths
are fixed there, so every request after the first (which misses the prefix cache) is alike."""


STUDY_DEFAULT_REQUESTS = 100  # BLIS --num-requests default (blis-reference.md §7)


STUDY_MAX_NUM_SEQS = 256  # BLIS --max-num-running-reqs default; the harness did not pass vLLM's


STUDY_MAX_NUM_BATCHED_TOKENS = 2048  # BLIS --max-num-scheduled-tokens default


STUDY_NUM_GPU_BLOCKS = 1_000_000  # BLIS implicit roofline path: no preemption


STUDY_MAX_MODEL_LEN = 1 << 20  # BLIS --max-model-len is unused: do not reject anything


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _int(x: Any) -> int | None:
    v = _num(x)
    return int(v) if v is not None else None


def _bool(x: Any) -> bool | None:
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, str) and x.strip().lower() in ("true", "false"):
        return x.strip().lower() == "true"
    v = _num(x)
    return None if v is None else bool(v)


def _extra(point: pd.Series | dict, key: str) -> int | None:
    text = point.get("workload_extra")
    if not isinstance(text, str):
        return None
    m = re.search(rf"\b{re.escape(key)}=(\d+)", text)
    return int(m.group(1)) if m else None


def gpu_name_of(point: pd.Series | dict) -> str:
    g = point.get("gpu")
    if isinstance(g, str) and "h100" in g.lower():
        return "H100"
    if isinstance(g, str) and g.strip():
        return g.split("(")[0].strip()
    return "H100"


def model_for_point(point: pd.Series | dict, gt_dir: str | Path) -> str:
    """The catalogue name of the point's HF model id, else the path of its ground-truth
    ``model_configs/<dir>/config.json``. ConfigError if neither resolves."""
    hf = str(point.get("model") or "")
    try:
        return resolve_model(hf).name
    except ConfigError:
        pass
    d = point.get("model_config_dir")
    if isinstance(d, str) and d:
        path = Path(gt_dir) / "model_configs" / d / "config.json"
        if path.is_file():
            return str(path)
    raise ConfigError(
        f"point {point.get('point_id', point.get('experiment'))}: model {hf!r} is not in the catalogue and no model_configs/{d}/config.json exists"
    )


def _length(mean: Any, stdev: Any, lo: Any, hi: Any, what: str, pid: str) -> dict[str, Any]:
    m = _num(mean)
    if m is None or m < 1:
        raise ConfigError(f"point {pid}: {what}_mean is unknown; cannot build its workload without a per-request file")
    s = _num(stdev)
    if not s:
        return {"dist": "fixed", "value": int(round(m))}
    d: dict[str, Any] = {"dist": "normal", "mean": m, "stdev": s}
    if lo_tokens := _int(lo):
        d["min"] = max(1, lo_tokens)
    if hi_tokens := _int(hi):
        d["max"] = hi_tokens
    return d


def _prefix(point: pd.Series | dict) -> tuple[int, int]:
    """(shared prefix tokens, number of prefix groups)."""
    tokens = _int(point.get("prefix_tokens")) or _extra(point, "system_prompt_len") or 0
    groups = _extra(point, "num_groups") or 1
    return tokens, groups


def inference_perf_harness(point: pd.Series | dict) -> bool:
    """Whether ``point`` was measured with inference-perf (set C)."""
    return "inference-perf" in str(point.get("harness", ""))


def _prompt_pool(point: pd.Series | dict) -> int | None:
    """Distinct prompts of an inference-perf ``shared_prefix`` point (num_groups ×
    num_prompts_per_group, which it sends in a cycle), else None (every prompt unique)."""
    groups, per_group = _extra(point, "num_groups"), _extra(point, "num_prompts_per_group")
    if inference_perf_harness(point) and groups and per_group:
        return groups * per_group
    return None


def request_timeout_for_point(point: pd.Series | dict, gt_dir: str | Path) -> tuple[float | None, str]:
    """(client timeout per request in seconds, its source) for ``point`` in ``guidellm`` mode.

    A non-blank ``request_timeout_s`` cell of points.csv wins (source ``points.csv``); else the
    timeout the experiment's raw harness config states (:func:`harness_request_timeout`;
    source: that file, relative to ``gt_dir``); else ``(None, "")``: nothing states one and no
    timeout is simulated.
    """
    cell = _num(point.get("request_timeout_s"))
    if cell is not None:
        return cell, "points.csv"
    stated = harness_request_timeout(gt_dir, str(point["experiment"]))
    if stated is not None:
        return stated
    return None, ""


def study_rate(point: pd.Series | dict) -> float:
    """The open-loop rate the study's harness used for ``point`` (blis-reference.md §5)."""
    strat = point["strategy"]
    pid = point.get("point_id", point.get("experiment"))
    if strat in ("constant", "poisson"):
        r = _num(point.get("rate"))
    else:  # synchronous, throughput: n_successful / duration
        n, dur = _num(point.get("n_successful")), _num(point.get("duration_s"))
        r = n / dur if n and dur else None
        if r is None and strat == "synchronous":
            e2e = _num(point.get("e2e_mean_ms"))  # set A: no n, no duration
            r = 1000.0 / e2e if e2e else None
    if not r or r <= 0:
        raise ConfigError(f"point {pid}: cannot derive the study's open-loop rate (strategy {strat})")
    return float(r)


def _configured_workload(point, num_requests: int | None, prefix_tokens: int, prefix_groups: int, pid: str) -> dict[str, Any]:
    """The workload section for a point without per-request data: its configured length
    distributions (points.csv ``*_tokens_{mean,stdev,min,max}``)."""
    return {
        "num_requests": num_requests,
        "prompt_tokens": _length(
            point.get("prompt_tokens_mean"),
            point.get("prompt_tokens_stdev"),
            point.get("prompt_tokens_min"),
            point.get("prompt_tokens_max"),
            "prompt_tokens",
            pid,
        ),
        "output_tokens": _length(
            point.get("output_tokens_mean"),
            point.get("output_tokens_stdev"),
            point.get("output_tokens_min"),
            point.get("output_tokens_max"),
            "output_tokens",
            pid,
        ),
        "prefix_tokens": prefix_tokens,
        "prefix_groups": prefix_groups,
        "trace": None,
    }


def point_to_config(
    point: pd.Series | dict,
    base: RunConfig | None = None,
    *,
    gt_dir: str | Path,
    formula: str | None = None,
    gemm_m: str | None = None,
    mode: Mode | str = "guidellm",  # checked against MODES at run time
    bench_data_dir: str | Path | None = None,
    max_requests_per_point: int | None = DEFAULT_MAX_REQUESTS_PER_POINT,
) -> RunConfig:
    """The RunConfig that simulates measured ``point`` (a row of :func:`load_points`).

    ``base`` supplies everything the point does not fix (seed, cost model and its knobs);
    default: a roofline RunConfig with seed 42. The point fixes the client's
    ``arrival.request_timeout_s`` (:func:`request_timeout_for_point` in ``guidellm`` mode, None
    in ``study`` mode), whatever the base's. ``formula``/``gemm_m``/``bench_data_dir``
    override the base's cost settings when given. See the module docstring for the modes.
    """
    if mode not in MODES:
        raise ConfigError(f"--mode: unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
    if max_requests_per_point is not None and max_requests_per_point < 1:
        raise ConfigError(f"--max-requests-per-point: must be >= 1, got {max_requests_per_point}")
    if base is None:
        base = parse_run_config({"cost": {"model": "roofline"}})
    pid = str(point.get("point_id", f"{point['experiment']}#{point['benchmark_index']}"))
    strat = str(point["strategy"])
    d: dict[str, Any] = {
        "model": model_for_point(point, gt_dir),
        "gpu": gpu_name_of(point),
        "tensor_parallel_size": int(point["tp"]),
    }
    cost: dict[str, Any] = {}
    if formula is not None:
        cost["formula"] = formula
    if gemm_m is not None:
        cost["gemm_m"] = gemm_m
    if bench_data_dir is not None:
        cost["bench_data_dir"] = str(bench_data_dir)
    if mode == "study" and base.cost.calibration is None:
        cost["calibration"] = "none"  # the study's harness ran the seed roofline
    if cost:
        d["cost"] = cost
    prefix_tokens, prefix_groups = _prefix(point)

    def cap(n: int | None) -> int | None:
        if n is None or max_requests_per_point is None:
            return n
        return min(n, max_requests_per_point)

    n: int | None
    if mode == "study":
        n = _int(point.get("num_requests_cfg")) or STUDY_DEFAULT_REQUESTS
        d["server"] = {
            "max_num_seqs": STUDY_MAX_NUM_SEQS,
            "max_num_batched_tokens": STUDY_MAX_NUM_BATCHED_TOKENS,
            "num_gpu_blocks": STUDY_NUM_GPU_BLOCKS,
            "block_size": 16,
            "enable_prefix_caching": True,
            "enable_chunked_prefill": True,
            "max_model_len": STUDY_MAX_MODEL_LEN,
            "allow_long_max_model_len": True,
            "long_prefill_token_threshold": 0,
        }
        d["workload"] = _configured_workload(point, cap(n), prefix_tokens, prefix_groups, pid)
        d["arrival"] = {"strategy": "open-loop-at-measured-rate", "rate_rps": study_rate(point), "concurrency": None, "request_timeout_s": None}
    else:
        block = _int(point.get("block_size")) or 16
        server: dict[str, Any] = {"block_size": block}
        for col in ("max_num_seqs", "max_num_batched_tokens", "max_model_len"):
            v = _int(point.get(col))
            server[col] = v if v else (256 if col == "max_num_seqs" else None)
        util = _num(point.get("gpu_memory_utilization"))
        server["gpu_memory_utilization"] = util if util else 0.9
        pc, cp = _bool(point.get("enable_prefix_caching")), _bool(point.get("enable_chunked_prefill"))
        server["enable_prefix_caching"] = True if pc is None else pc  # vLLM V1 default: on
        server["enable_chunked_prefill"] = True if cp is None else cp  # vLLM V1 default: on
        kv_tokens = _int(point.get("kv_cache_gpu_tokens"))
        server["num_gpu_blocks"] = kv_tokens // block if kv_tokens else None
        d["server"] = server
        rate = _num(point.get("rate"))
        trace_file = requests_path(gt_dir, point)
        if trace_file is not None:
            rows = len(load_trace(trace_file, int(point["benchmark_index"]), only_ok=True))
            n = cap(rows)
            d["workload"] = {
                "num_requests": n if n != rows else None,
                "prefix_tokens": prefix_tokens,
                "prefix_groups": prefix_groups,
                "trace": {"path": str(trace_file), "benchmark_index": int(point["benchmark_index"]), "only_ok": True},
            }
            if inference_perf_harness(point):
                # see the module docstring: set C's TTFT holds one more step than set B's
                d["server"]["async_scheduling"] = True
            pool = _prompt_pool(point)
            if pool is not None:
                # inference-perf cycles through its prompts, and its stages run back to back on
                # one server: a later stage starts with the pool in the prefix cache
                d["workload"]["prompt_pool"] = pool
                d["workload"]["prompt_pool_warm"] = int(point["benchmark_index"]) > 0
            strategy = {"synchronous": "synchronous", "throughput": "throughput"}.get(strat, "replay")
            arrival: dict[str, Any] = {"strategy": strategy, "rate_rps": None, "concurrency": None}
        else:
            n = _int(point.get("num_requests_cfg")) or _int(point.get("n_successful"))
            if n is None:
                n = DEFAULT_SYNC_REQUESTS if strat == "synchronous" else STUDY_DEFAULT_REQUESTS
            d["workload"] = _configured_workload(point, cap(n), prefix_tokens, prefix_groups, pid)
            arrival = {"strategy": strat, "rate_rps": rate if strat in ("constant", "poisson") else None, "concurrency": None}
        if strat == "throughput" and str(point.get("rate_unit", "")).startswith("concurrency") and rate:
            arrival["concurrency"] = int(rate)  # guidellm's max_concurrency cap
        arrival["request_timeout_s"] = request_timeout_for_point(point, gt_dir)[0]
        d["arrival"] = arrival
    return parse_run_config(merge(base.model_dump(mode="json"), d), source=f"ground-truth point {pid}")


def points_to_configs(points: pd.DataFrame, base: RunConfig | None = None, **kwargs: Any) -> list[RunConfig]:
    """:func:`point_to_config` for every row of ``points``, in order."""
    return [point_to_config(row, base, **kwargs) for _, row in points.iterrows()]


def measured_from_requests(rows: pd.DataFrame) -> dict[str, float]:
    """Measured metrics (points.csv column names) recomputed from per-request rows (ok only):
    means and linear percentiles of ttft_ms, tpot_ms, e2e_ms; mean e2e/output; throughput
    over first send → last finish."""
    r = rows[rows["ok"] == 1] if "ok" in rows.columns else rows
    out: dict[str, float] = {}
    for m in ("ttft", "tpot", "e2e"):
        v = pd.to_numeric(r[f"{m}_ms"], errors="coerce").dropna().to_numpy(dtype=float)
        out[f"{m}_mean_ms"] = float(v.mean()) if len(v) else math.nan
        for p in (50, 90, 99):
            out[f"{m}_p{p}_ms"] = float(np.percentile(v, p)) if len(v) else math.nan
    out["tpot_incl_ttft_mean_ms"] = float((r["e2e_ms"] / r["output_tokens"]).mean()) if len(r) else math.nan
    start = r["start_offset_s"].to_numpy(dtype=float)
    finish = start + r["e2e_ms"].to_numpy(dtype=float) / 1e3
    span = float(finish.max() - start.min()) if len(r) else 0.0
    out["output_tok_per_s"] = float(r["output_tokens"].sum() / span) if span > 0 else math.nan
    out["requests_per_s"] = float(len(r) / span) if span > 0 else math.nan
    return out


def measured_for_point(point: pd.Series | dict, gt_dir: str | Path, cfg: RunConfig) -> tuple[dict[str, float], str]:
    """(measured metrics, source) to compare with the simulation of ``cfg``.

    Normally points.csv's values (source ``points.csv``). When ``cfg`` replays only the first
    N of the point's requests (capped), the metrics are recomputed over exactly those rows of
    the per-request file (source ``requests[:N]``). inference-perf's own output_tok_per_s is
    based on re-tokenised counts (README) and is not used: it is recomputed from the rows when
    they exist, else left unknown.
    """
    meas: dict[str, float] = {}
    for c in MEASURED_COLUMNS:
        v = _num(point.get(c))
        meas[c] = math.nan if v is None else v
    source = "points.csv"
    inference_perf = inference_perf_harness(point)
    tr = cfg.workload.trace
    if tr is not None and (cfg.workload.num_requests is not None or inference_perf):
        rows = trace_rows(gt_dir, point, cfg.workload.num_requests)
        if rows is not None and {"ttft_ms", "e2e_ms", "tpot_ms", "start_offset_s"} <= set(rows.columns):
            meas = measured_from_requests(rows)
            source = f"requests[:{len(rows)}]"
    elif inference_perf:
        meas["output_tok_per_s"] = math.nan
    return meas, source
