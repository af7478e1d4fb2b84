"""Calibration of the roofline's knobs against measured points (pure logic, no I/O; simulations
run through an injected function). The knobs and calibration files are :mod:`sim.cost.calibration`.

Method (``docs/calibration.md``):

* **Knobs** (:data:`~sim.cost.calibration.KNOBS`): a handful of physically meaningful parameters of the step-cost
  model, each a :class:`~sim.config.CostConfig` field whose unset value reproduces the seed
  model. The optimiser works in a unit cube ``u ∈ [0, 1]^p``; scale knobs map log-uniformly to
  their range, overheads and penalties linearly.
* **Objective** (:func:`objective`): mean over TTFT, TPOT (vLLM's decode TPOT) and E2E of
  each metric's MAPE over the *not overloaded* training points (APEs capped at
  :data:`APE_CAP` so one queueing blow-up cannot dominate). One parameter set for all points
  of a GPU, never per experiment.
* **Fit** (:func:`fit_direct`): bounded Nelder–Mead on simulated points (derivative free;
  the simulator is discrete). Set C stages are capped to a few hundred requests while fitting.
* **Leave-one-experiment-out CV and bootstrap** (:func:`fit_surrogate`): around the full fit
  θ*, each point's log TTFT/TPOT/E2E is linearised in u (forward differences, one simulation
  per knob); each fold (or bootstrap replicate over experiments) refits on that surrogate,
  restricted to its training points, inside a trust region, and moves the simulated fit by the
  surrogate's change (u_fold − u_all; this cancels the linearisation's bias, a one-step
  jackknife/bootstrap — see ``calibrate_formula``). The held-out experiment is then
  *simulated* at its fold's parameters: CV errors are real simulations, never surrogate values.
* **Prediction intervals** (:func:`~sim.studies.intervals.interval_from_samples`): log-space samples
  ``r_b + d_j`` — r_b the spread of the bootstrap replicates' simulations (parameter
  uncertainty; each replicate also runs with its own seed) and d_j the cross-validated
  log residuals of the metric (model discrepancy; for a measured point only those of *other*
  experiments) — give the (1 ± level)/2 quantiles around the point prediction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from sim.cost.calibration import KNOB_NAMES, KNOBS, seed_knobs
from sim.errors import ConfigError
from sim.studies.calibrate_defaults import DEFAULT_FIT_KNOBS  # noqa: F401  (re-exported)

# (metric, simulated summary key, measured column)
FIT_METRICS: tuple[tuple[str, str, str], ...] = (
    ("ttft_mean", "ttft_mean_ms", "ttft_mean_ms"),
    ("tpot_mean", "tpot_mean_ms", "tpot_mean_ms"),
    ("e2e_mean", "e2e_mean_ms", "e2e_mean_ms"),
)


REPORT_METRICS = FIT_METRICS + (("tpot_incl_ttft_mean", "time_per_output_token_mean_ms", "tpot_incl_ttft_mean_ms"),)
APE_CAP = 1.0  # a point's APE counts at most 100 %: queueing blow-ups must not drive the fit


def unit_to_knobs(u: Sequence[float] | np.ndarray, names: Sequence[str], fixed: Mapping[str, float] | None = None) -> dict[str, float]:
    out = dict(fixed or {})
    for x, n in zip(u, names):
        out[n] = KNOBS[n].to_value(x)
    return out


def knobs_to_unit(knobs: Mapping[str, float], names: Sequence[str]) -> np.ndarray:
    return np.array([KNOBS[n].to_unit(knobs[n]) for n in names], dtype=float)


def with_knobs(cfg, knobs: Mapping[str, float], seed: int | None = None):
    """``cfg`` with the cost knobs set (and the seed replaced when given)."""
    bad = sorted(set(knobs) - set(KNOB_NAMES))
    if bad:
        raise ConfigError(f"unknown calibration knob(s) {', '.join(bad)}; known: {', '.join(KNOB_NAMES)}")
    cost = cfg.cost.model_copy(update={k: float(v) for k, v in knobs.items()})
    upd: dict[str, Any] = {"cost": cost}
    if seed is not None:
        upd["seed"] = int(seed)
    return cfg.model_copy(update=upd)


@dataclass
class Problem:
    """Measured points and the configs that simulate them (knobs left unset).

    ``points`` needs ``point_id``, ``experiment`` and ``overloaded``; ``measured[i]`` maps
    measured column names (e.g. ``ttft_mean_ms``) to values for ``configs[i]``.
    """

    points: pd.DataFrame
    configs: list
    measured: list[dict]

    def __post_init__(self) -> None:
        if not (len(self.points) == len(self.configs) == len(self.measured)):
            raise ValueError("points, configs and measured must have the same length")
        self.points = self.points.reset_index(drop=True)

    @property
    def experiments(self) -> list[str]:
        return list(dict.fromkeys(self.points["experiment"].astype(str)))

    def fit_mask(self) -> np.ndarray:
        return ~self.points["overloaded"].astype(bool).to_numpy()

    def meas_matrix(self, metrics=FIT_METRICS) -> np.ndarray:
        return np.array([[finite_or_nan(m.get(col)) for _, _, col in metrics] for m in self.measured], dtype=float)


SimulateFn = Callable[[list], list]  # configs -> summaries (dicts)


def finite_or_nan(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def sim_matrix(summaries: Sequence[Mapping], metrics=FIT_METRICS) -> np.ndarray:
    return np.array([[finite_or_nan(s.get(key)) for _, key, _ in metrics] for s in summaries], dtype=float)


def ape_matrix(sim: np.ndarray, meas: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.abs(sim - meas) / meas
    a[~(np.isfinite(a) & (meas > 0))] = np.nan
    return a


def objective(sim: np.ndarray, meas: np.ndarray, weights: np.ndarray | None = None, cap: float = APE_CAP) -> float:
    """Mean over metrics of the (weighted) mean capped APE; rows with weight 0 are ignored."""
    a = np.minimum(ape_matrix(sim, meas), cap)
    w = np.ones(len(a)) if weights is None else np.asarray(weights, dtype=float)
    vals = []
    for j in range(a.shape[1]):
        ok = np.isfinite(a[:, j]) & (w > 0)
        if ok.any():
            vals.append(float(np.sum(a[ok, j] * w[ok]) / np.sum(w[ok])))
        elif np.any(w > 0) and np.isfinite(meas[w > 0, j]).any():
            vals.append(cap)  # measured but not simulated (e.g. nothing finished)
    return float(np.mean(vals)) if vals else math.nan


class Evaluator:
    """Simulates points at given knobs (memoised) through an injected ``simulate`` function."""

    def __init__(self, problem: Problem, simulate: SimulateFn) -> None:
        self.problem, self.simulate = problem, simulate
        self.cache: dict[tuple, dict] = {}
        self.evaluations = 0  # simulate() calls
        self.log: list[dict] = []  # one entry per call: knobs, point ids

    def summaries(self, knobs: Mapping[str, float], idx: Sequence[int], seed: int | None = None) -> list[dict]:
        key_k = tuple(sorted((k, round(float(v), 12)) for k, v in knobs.items()))
        todo = [i for i in idx if (key_k, i, seed) not in self.cache]
        if todo:
            cfgs = [with_knobs(self.problem.configs[i], knobs, seed) for i in todo]
            out = self.simulate(cfgs)
            self.evaluations += 1
            self.log.append({"knobs": dict(knobs), "point_ids": [self.problem.points.at[i, "point_id"] for i in todo]})
            for i, s in zip(todo, out):
                self.cache[(key_k, i, seed)] = s
        return [self.cache[(key_k, i, seed)] for i in idx]


@dataclass
class FitResult:
    knobs: dict[str, float]
    u: np.ndarray
    objective: float
    nfev: int
    train_point_ids: list[str]
    names: tuple[str, ...]


def _nelder_mead(fun, x0: np.ndarray, maxfev: int, step: float = 0.15):
    from scipy.optimize import minimize

    p = len(x0)
    simplex = [np.clip(x0, 0, 1)]
    for j in range(p):
        e = np.zeros(p)
        e[j] = step if x0[j] + step <= 1 else -step
        simplex.append(np.clip(x0 + e, 0, 1))
    return minimize(
        fun,
        np.clip(x0, 0, 1),
        method="Nelder-Mead",
        bounds=[(0.0, 1.0)] * p,
        options={"maxfev": maxfev, "initial_simplex": np.array(simplex), "xatol": 1e-3, "fatol": 1e-4},
    )


def fit_direct(
    ev: Evaluator,
    train_idx: Sequence[int],
    names: Sequence[str] = DEFAULT_FIT_KNOBS,
    start: Mapping[str, float] | None = None,
    fixed: Mapping[str, float] | None = None,
    maxfev: int = 60,
    step: float = 0.15,
) -> FitResult:
    """Minimise :func:`objective` over ``names`` by simulating the training points only."""
    names = tuple(names)
    pr = ev.problem
    train_idx = [int(i) for i in train_idx]
    meas = pr.meas_matrix()[train_idx]
    starts: dict[str, float] = dict(seed_knobs(pr.configs[0].gpu))
    starts.update({n: s for n in names if (s := KNOBS[n].start) is not None})
    starts.update(start or {})
    fixed = {**{k: v for k, v in starts.items() if k not in names}, **(fixed or {})}
    x0 = knobs_to_unit(starts, names)
    best_f, best_u = math.inf, x0

    def fun(u):
        k = unit_to_knobs(u, names, fixed)
        f = objective(sim_matrix(ev.summaries(k, train_idx)), meas)
        f = f if math.isfinite(f) else 1e6
        nonlocal best_f, best_u
        if f < best_f:
            best_f, best_u = f, np.clip(np.asarray(u, float), 0, 1)
        return f

    res = _nelder_mead(fun, x0, maxfev, step)
    return FitResult(unit_to_knobs(best_u, names, fixed), best_u, float(best_f), int(res.nfev), [pr.points.at[i, "point_id"] for i in train_idx], names)


@dataclass
class Linearisation:
    """log(sim) ≈ y0 + J·(u − u0) per point and fit metric, around the fitted knobs."""

    names: tuple[str, ...]
    u0: np.ndarray
    fixed: dict[str, float]
    y0: np.ndarray  # (points, metrics)
    jac: np.ndarray  # (points, metrics, knobs)

    def predict(self, u: np.ndarray) -> np.ndarray:
        return np.exp(self.y0 + self.jac @ (np.asarray(u, float) - self.u0))


def linearise(ev: Evaluator, knobs: Mapping[str, float], names: Sequence[str], idx: Sequence[int], h: float = 0.05) -> Linearisation:
    """Forward differences of log TTFT/TPOT/E2E in each unit knob (one simulation per knob)."""
    names = tuple(names)
    u0 = knobs_to_unit(knobs, names)
    fixed = {k: v for k, v in knobs.items() if k not in names}
    with np.errstate(divide="ignore", invalid="ignore"):
        y0 = np.log(sim_matrix(ev.summaries(unit_to_knobs(u0, names, fixed), idx)))
        jac = np.zeros(y0.shape + (len(names),))
        for j in range(len(names)):
            d = h if u0[j] + h <= 1 else -h
            u = u0.copy()
            u[j] += d
            y = np.log(sim_matrix(ev.summaries(unit_to_knobs(u, names, fixed), idx)))
            jac[:, :, j] = (y - y0) / d
    jac[~np.isfinite(jac)] = 0.0
    return Linearisation(names, u0, fixed, y0, jac)


def fit_surrogate(
    lin: Linearisation,
    meas: np.ndarray,
    weights: np.ndarray,
    trust: float = 0.25,
    maxfev: int = 400,
) -> np.ndarray:
    """Refit u on the linearised model with per-point ``weights`` (0 = not in the training
    data), within ``|u − u0| ≤ trust``. Returns the unit vector."""
    lo = np.clip(lin.u0 - trust, 0, 1)
    hi = np.clip(lin.u0 + trust, 0, 1)

    def fun(u):
        u = np.clip(u, lo, hi)
        return objective(lin.predict(u), meas, weights)

    best_u, best_f = lin.u0.copy(), fun(lin.u0)
    for x0 in (lin.u0, (lo + hi) / 2):
        r = _nelder_mead(fun, np.clip(x0, lo, hi), maxfev, step=min(0.1, trust))
        u = np.clip(r.x, lo, hi)
        f = fun(u)
        if f < best_f:
            best_u, best_f = u, f
    return best_u


@dataclass
class Fold:
    experiment: str
    knobs: dict[str, float]
    train_point_ids: list[str]
    test_point_ids: list[str]


def loeo_folds(
    problem: Problem,
    refit: Callable[[list[int]], Mapping[str, float]],
) -> list[Fold]:
    """One fold per experiment: ``refit(train_idx)`` sees only the not-overloaded points of the
    other experiments (the held-out experiment's points never reach it)."""
    mask = problem.fit_mask()
    exps = problem.points["experiment"].astype(str).to_numpy()
    folds = []
    for e in problem.experiments:
        train = [i for i in range(len(exps)) if exps[i] != e and mask[i]]
        test = [i for i in range(len(exps)) if exps[i] == e]
        k = dict(refit(train))
        folds.append(Fold(e, k, [problem.points.at[i, "point_id"] for i in train], [problem.points.at[i, "point_id"] for i in test]))
    return folds


def bootstrap_weights(experiments: Sequence[str], mask: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """(n, points) weights: experiments drawn with replacement, each point weighted by its
    experiment's draw count (0 for overloaded points)."""
    rng = np.random.default_rng(seed)
    exps = np.asarray(experiments, dtype=str)
    uniq = list(dict.fromkeys(exps))
    out = np.zeros((n, len(exps)))
    for b in range(n):
        draw = rng.integers(0, len(uniq), len(uniq))
        counts = np.bincount(draw, minlength=len(uniq))
        cmap = dict(zip(uniq, counts))
        out[b] = [cmap[e] for e in exps]
    out[:, ~np.asarray(mask, bool)] = 0.0
    return out
