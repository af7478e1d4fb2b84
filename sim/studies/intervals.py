"""Prediction intervals from a calibration: bootstrap replicates (parameter and seed spread)
combined with cross-validated log residuals (model discrepancy). Method: ``docs/calibration.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

from sim.config import RunConfig
from sim.cost.calibration import TRANSFER_LOG_SIGMA, active_calibration, calibration_for
from sim.errors import ConfigError
from sim.studies.fit import finite_or_nan, with_knobs

# Points of a standard normal at the midpoints of 15 equal-probability slices: a discrete
# stand-in for N(0, σ²) convolved with the residuals (the transfer spread).
_NORMAL_GRID = np.array([NormalDist().inv_cdf((j + 0.5) / 15) for j in range(15)])


def interval_from_samples(
    center: float,
    log_spread: Sequence[float] | np.ndarray,
    log_resid: Sequence[float] | np.ndarray,
    level: float = 0.9,
    extra_log_sigma: float = 0.0,
) -> tuple[float, float]:
    """(lo, hi): quantiles (1∓level)/2 of center·exp(r + d + t) over every combination of a
    parameter/seed spread sample r, a residual d (either set may be empty → treated as {0})
    and, when ``extra_log_sigma`` > 0, a draw t of N(0, extra_log_sigma²) (a calibration
    carried to a GPU it was not fitted on: :data:`~sim.cost.calibration.TRANSFER_LOG_SIGMA`)."""
    if not (0 < level < 1):
        raise ValueError(f"level must be in (0, 1), got {level}")
    c = finite_or_nan(center)
    if not (c > 0):
        return (math.nan, math.nan)
    r = np.asarray([x for x in log_spread if math.isfinite(x)] or [0.0], float)
    d = np.asarray([x for x in log_resid if math.isfinite(x)] or [0.0], float)
    s = (r[:, None] + d[None, :]).ravel()
    if extra_log_sigma > 0:
        s = (s[:, None] + extra_log_sigma * _NORMAL_GRID[None, :]).ravel()
    q = np.quantile(s, [(1 - level) / 2, (1 + level) / 2])
    return float(c * math.exp(q[0])), float(c * math.exp(q[1]))


def coverage(meas: Sequence[float], lo: Sequence[float], hi: Sequence[float]) -> tuple[float, int]:
    """(share of finite measured values inside [lo, hi], number of such values)."""
    m, a, b = (np.asarray(x, float) for x in (meas, lo, hi))
    ok = np.isfinite(m) & np.isfinite(a) & np.isfinite(b)
    if not ok.any():
        return (math.nan, 0)
    return float(np.mean((m[ok] >= a[ok]) & (m[ok] <= b[ok]))), int(ok.sum())


# summary keys an interval is given for, and the calibration residual metric that widens them
INTERVAL_KEYS: dict[str, str | None] = {
    "ttft_mean_ms": "ttft_mean",
    "ttft_p50_ms": "ttft_mean",
    "ttft_p90_ms": None,
    "ttft_p99_ms": None,
    "tpot_mean_ms": "tpot_mean",
    "tpot_p50_ms": "tpot_mean",
    "tpot_p90_ms": None,
    "tpot_p99_ms": None,
    "time_per_output_token_mean_ms": "tpot_incl_ttft_mean",
    "e2e_mean_ms": "e2e_mean",
    "e2e_p50_ms": "e2e_mean",
    "e2e_p90_ms": None,
    "e2e_p99_ms": None,
    "output_tokens_per_s": None,
    "requests_per_s": None,
}


def interval_configs(cfg, calibration: Mapping[str, Any], n: int | None = None) -> list:
    """Configs of the bootstrap replicates of ``calibration`` for ``cfg`` (each with its own
    knobs and seed = cfg.seed + b + 1); the knobs the user set in ``cfg`` stay fixed."""
    boots = list(calibration.get("bootstrap") or [])
    if n is not None:
        boots = boots[:n]
    out = []
    for b, k in enumerate(boots):
        free = {kk: float(v) for kk, v in k.items() if getattr(cfg.cost, kk, None) is None}
        # the calibration fills the rest; replace only the knobs the user left unset
        out.append(with_knobs(cfg, free, seed=cfg.seed + b + 1))
    return out


def summary_intervals(
    center: Mapping, replicates: Sequence[Mapping], calibration: Mapping[str, Any] | None, level: float = 0.9
) -> dict[str, tuple[float, float]]:
    """Interval per summary key (:data:`INTERVAL_KEYS`) from the point run ``center``, the
    bootstrap replicate runs and the calibration's cross-validated log residuals; widened by
    :data:`~sim.cost.calibration.TRANSFER_LOG_SIGMA` when the calibration says
    ``transferred_from`` (run on a GPU it was not fitted on)."""
    resid = (calibration or {}).get("residuals_log") or {}
    extra = TRANSFER_LOG_SIGMA if (calibration or {}).get("transferred_from") else 0.0
    out = {}
    for key, rmetric in INTERVAL_KEYS.items():
        c = finite_or_nan(center.get(key))
        spread = [math.log(finite_or_nan(r.get(key)) / c) for r in replicates if finite_or_nan(r.get(key)) > 0] if c > 0 else []
        out[key] = interval_from_samples(c, spread, resid.get(rmetric, []) if rmetric else [], level, extra)
    return out


def intervals_for_configs(
    cfgs: Sequence[RunConfig], centers: Sequence[dict], summaries: Callable[[list], list], level: float = 0.9, n_boot: int | None = None
) -> list[dict[str, tuple[float, float]]]:
    """For ``run``/``sweep --intervals``: one interval dict (summary key → (lo, hi)) per config,
    from its point run's summary (``centers``), its bootstrap replicates (simulated here in one
    batch) and the calibration's CV residuals. ConfigError if a config names no calibration."""
    reps_cfgs, owner, cals = [], [], []
    for i, cfg in enumerate(cfgs):
        if not active_calibration(cfg):
            raise ConfigError("--intervals needs a calibration (cost.calibration: the shipped h100 by default; not 'none', not a fixed or linear cost model)")
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
