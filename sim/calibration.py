"""Calibration of the roofline's free parameters against measured points (pure logic, no I/O
except reading a calibration YAML).

Method (``docs/calibration.md``):

* **Knobs** (:data:`KNOBS`): a handful of physically meaningful parameters of the step-cost
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
* **Prediction intervals** (:func:`interval_from_samples`): log-space samples
  ``r_b + d_j`` — r_b the spread of the bootstrap replicates' simulations (parameter
  uncertainty; each replicate also runs with its own seed) and d_j the cross-validated
  log residuals of the metric (model discrepancy; for a measured point only those of *other*
  experiments) — give the (1 ± level)/2 quantiles around the point prediction.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from .errors import ConfigError

# ---------------------------------------------------------------------------- knobs


@dataclass(frozen=True)
class Knob:
    name: str
    lo: float
    hi: float
    log: bool  # log-uniform in the unit cube
    meaning: str
    start: float | None = None  # the fit's starting value when the seed has none (seed_knobs)

    def to_value(self, u: float) -> float:
        u = min(1.0, max(0.0, float(u)))
        if self.log:
            return float(math.exp(math.log(self.lo) + u * (math.log(self.hi) - math.log(self.lo))))
        return float(self.lo + u * (self.hi - self.lo))

    def to_unit(self, v: float) -> float:
        v = min(self.hi, max(self.lo, float(v)))
        if self.log:
            return (math.log(v) - math.log(self.lo)) / (math.log(self.hi) - math.log(self.lo))
        return (v - self.lo) / (self.hi - self.lo)


KNOBS: dict[str, Knob] = {
    k.name: k
    for k in (
        Knob("bw_efficiency", 0.4, 1.0, True, "share of peak HBM bandwidth the memory-bound terms reach (η)"),
        Knob("per_layer_overhead_us", 0.0, 300.0, False, "CPU/launch time per layer and step, divided by TP"),
        Knob("per_step_overhead_us", 0.0, 15000.0, False, "CPU time per step not divided by TP (scheduler, sampling, input preparation)"),
        Knob("prefill_compute_scale", 0.3, 3.0, True, "1/MFU correction of prefill compute (GEMM + attention)"),
        Knob("decode_compute_scale", 0.1, 3.0, True, "1/MFU correction of decode compute (small-M GEMMs + attention)"),
        Knob("attention_scale", 0.2, 5.0, True, "extra correction of the attention cores (both phases)"),
        Knob("mixed_penalty", 0.0, 2.0, False, "relative extra GPU time of a mixed prefill+decode step"),
        Knob("frontend_latency_ms", 0.0, 30.0, False, "API-server latency before the engine sees a request (HTTP, tokenization), ms"),
        # TP-independent time per prompt token: set A's TTFTs (7B TP1/2/4, 354 vs 2048-token
        # prompts) split into ~13 µs/token that TP does not divide and the prefill that it does
        Knob("frontend_us_per_prompt_token", 0.0, 50.0, False, "API-server time per prompt token (tokenization, input processing), µs, not divided by TP"),
        # start: NCCL all-reduce bus bandwidth on 8×H100 SXM NVLink is about 450 GB/s (NVIDIA
        # nccl-tests figures); the seed has no communication term at all
        Knob("allreduce_bw_gbps", 10.0, 2000.0, True, "effective all-reduce bus bandwidth per GPU, GB/s (TP communication)", 450.0),
        # set A's Llama-2-7B chat TPOTs at TP 1/2/4 (6.2/4.4/3.2 ms) shrink less with TP than a
        # roofline divided by TP: each all-reduce has a latency floor (NCCL small messages: µs)
        Knob("allreduce_latency_us", 0.0, 50.0, False, "fixed latency of each all-reduce, µs (2 per layer and step when TP > 1)"),
    )
}
KNOB_NAMES = tuple(KNOBS)
DEFAULT_FIT_KNOBS = (
    "bw_efficiency", "per_layer_overhead_us", "per_step_overhead_us",
    "prefill_compute_scale", "decode_compute_scale", "mixed_penalty", "allreduce_bw_gbps", "frontend_latency_ms",
    "frontend_us_per_prompt_token", "allreduce_latency_us",
)

# (metric, simulated summary key, measured column)
FIT_METRICS: tuple[tuple[str, str, str], ...] = (
    ("ttft_mean", "ttft_mean_ms", "ttft_mean_ms"),
    ("tpot_mean", "tpot_mean_ms", "tpot_mean_ms"),
    ("e2e_mean", "e2e_mean_ms", "e2e_mean_ms"),
)
REPORT_METRICS = FIT_METRICS + (("tpot_incl_ttft_mean", "time_per_output_token_mean_ms", "tpot_incl_ttft_mean_ms"),)
APE_CAP = 1.0  # a point's APE counts at most 100 %: queueing blow-ups must not drive the fit


def seed_knobs(gpu: str = "H100") -> dict[str, float]:
    """The seed model's knob values (the GPU's η and per-layer overhead, neutral corrections)."""
    from .hardware import resolve_gpu

    g = resolve_gpu(gpu)
    return {
        "bw_efficiency": g.bw_efficiency, "per_layer_overhead_us": g.per_layer_overhead_us,
        "per_step_overhead_us": 0.0, "prefill_compute_scale": 1.0, "decode_compute_scale": 1.0,
        "attention_scale": 1.0, "mixed_penalty": 0.0, "frontend_latency_ms": 0.0, "frontend_us_per_prompt_token": 0.0,
        "allreduce_latency_us": 0.0,
    }  # allreduce_bw_gbps: absent = no communication term (the seed has none)


def unit_to_knobs(u: Sequence[float], names: Sequence[str], fixed: Mapping[str, float] | None = None) -> dict[str, float]:
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


# ---------------------------------------------------------------------------- shipped calibrations


def calibrations_dir() -> Path:
    return Path(str(resources.files("sim").joinpath("data/calibrations")))


def available_calibrations() -> list[str]:
    d = calibrations_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def calibration_path(name_or_path: str) -> Path:
    """Path of a shipped calibration name (``h100``) or of a YAML file; ConfigError otherwise."""
    text = str(name_or_path).strip()
    p = Path(text).expanduser()
    if text.endswith((".yaml", ".yml")) or p.is_file():
        if not p.is_file():
            raise ConfigError(f"cost.calibration: file not found: {p}")
        return p
    shipped = calibrations_dir() / f"{text.lower()}.yaml"
    if shipped.is_file():
        return shipped
    names = available_calibrations()
    raise ConfigError(
        f"cost.calibration: unknown calibration {text!r}; shipped: {', '.join(names) or '(none)'}, or give a path to a YAML file"
    )


@functools.lru_cache(maxsize=32)
def _load_calibration_cached(path: str, mtime: float) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"cost.calibration: {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("knobs"), dict):
        raise ConfigError(f"cost.calibration: {path} has no 'knobs' mapping")
    sections = data.get("formulas") or {}
    if not isinstance(sections, dict):
        raise ConfigError(f"cost.calibration: {path}: 'formulas' must map formula names to sections")
    for where, knobs in [("knobs", data["knobs"])] + [(f"formulas.{f}.knobs", (sec or {}).get("knobs")) for f, sec in sections.items()]:
        if not isinstance(knobs, dict):
            raise ConfigError(f"cost.calibration: {path}: {where} must be a mapping of knob values")
        bad = sorted(set(knobs) - set(KNOB_NAMES))
        if bad:
            raise ConfigError(f"cost.calibration: {path}: unknown knob(s) {', '.join(bad)} in {where}; known: {', '.join(KNOB_NAMES)}")
        for k, v in knobs.items():
            if not isinstance(v, (int, float)) or not math.isfinite(float(v)):
                raise ConfigError(f"cost.calibration: {path}: {where}.{k} must be a number, got {v!r}")
    return data


def load_calibration(name_or_path: str) -> dict[str, Any]:
    """The calibration mapping (``knobs``, ``gpu``, provenance, intervals data)."""
    p = calibration_path(name_or_path)
    return _load_calibration_cached(str(p.resolve()), p.stat().st_mtime)


def calibration_formulas(cal: Mapping[str, Any]) -> list[str]:
    """The mixed-batch formulas a calibration mapping was fitted for (its primary first)."""
    out = [str(cal["formula"])] if cal.get("formula") else []
    return out + [f for f in (cal.get("formulas") or {}) if f not in out]


def calibration_for(cfg) -> dict[str, Any]:
    """``cfg``'s calibration (``cost.calibration``) as fitted for its formula (:func:`effective_formula`): the
    file's top level for its primary formula, else that formula's section of ``formulas``
    laid over it (knobs, residuals, bootstrap replicates). Knobs depend on the formula they
    were fitted with, so a formula the file lacks is a ConfigError, never a silent mismatch.
    Precondition: ``cfg.cost.calibration`` is set."""
    from .cost.combine import FORMULAS

    name = cfg.cost.calibration
    formula = effective_formula(cfg)
    FORMULAS.get(formula, "cost.formula")  # an unknown formula is reported as such first
    return calibration_section(load_calibration(name), formula, name)


def calibration_section(cal: Mapping[str, Any], formula: str, name: str) -> dict[str, Any]:
    """Calibration mapping ``cal`` (named ``name`` in errors) as fitted for ``formula``: the
    top level for its primary formula, else that formula's section laid over it. ConfigError
    if ``cal`` was not fitted for ``formula``."""
    primary = cal.get("formula")
    if primary is None or formula == primary:
        return dict(cal)
    section = (cal.get("formulas") or {}).get(formula)
    if section is None:
        raise ConfigError(
            f"cost.calibration {name!r} was fitted for formula(s) {', '.join(calibration_formulas(cal))}, not for "
            f"cost.formula {formula!r}; use one of those or run `servesim calibrate --formula {formula}`"
        )
    return {**cal, **section, "formula": formula}


def effective_knobs(cfg) -> dict[str, float | None]:
    """Knob values for ``cfg``: the config's own where set, else its calibration's, else None
    (= seed behaviour). ConfigError if the calibration was fitted for another GPU."""
    c = cfg.cost
    out: dict[str, float | None] = {k: getattr(c, k) for k in KNOB_NAMES}
    name = getattr(c, "calibration", None)
    if name:
        cal = calibration_for(cfg) if c.model == "roofline" else load_calibration(name)
        gpu = str(cal.get("gpu", "")).strip()
        if gpu:
            from .hardware import resolve_gpu

            if resolve_gpu(gpu).name != resolve_gpu(cfg.gpu).name:
                raise ConfigError(f"cost.calibration {name!r} was fitted for {gpu}, not {cfg.gpu}; one calibration per GPU")
        for k, v in cal["knobs"].items():
            if out.get(k) is None:
                out[k] = float(v)
    return out


def _effective_setting(cfg, key: str, is_valid: Callable[[Any], bool], expected: str, default: Any) -> Any:
    """A cost setting that a calibration records beside its knobs: ``cfg``'s own ``cost.<key>``
    if set, else its calibration's (``<key>`` in the YAML; ConfigError naming ``expected`` if
    invalid), else ``default`` (the seed's)."""
    c = cfg.cost
    own = getattr(c, key)
    if own is not None:
        return own
    name = getattr(c, "calibration", None)
    if name:
        value = load_calibration(name).get(key)
        if value is not None:
            if not is_valid(value):
                raise ConfigError(f"calibration {name!r}: {key} must be {expected}, got {value!r}")
            return value
    return default


# Cost settings a calibration records beside its knobs (read back by the effective_* functions
# below; a config's own value wins, unset = the calibration's, else the seed's).
CALIBRATION_SETTINGS = ("mfu_lookup", "decode_attention_context", "decode_kv_read_fraction", "lm_head_reads")


def effective_formula(cfg) -> str:
    """The mixed-batch formula for ``cfg``: its own ``cost.formula`` if set, else its
    calibration's primary formula (``formula`` at the YAML's top level: the one its knobs at
    the top level were fitted with), else weighted-average (the seed's)."""
    from .cost.combine import DEFAULT_FORMULA, FORMULAS

    return _effective_setting(cfg, "formula", lambda v: isinstance(v, str) and v in FORMULAS, f"one of {', '.join(FORMULAS)}", DEFAULT_FORMULA)


def effective_mfu_lookup(cfg) -> str:
    """The MFU lookup for ``cfg``: its own ``cost.mfu_lookup`` if set, else its calibration's
    (``mfu_lookup`` in the YAML), else ``nearest`` (the seed's)."""
    return _effective_setting(cfg, "mfu_lookup", lambda v: v in ("nearest", "interpolate"), "nearest or interpolate", "nearest")


def effective_decode_attention_context(cfg) -> str:
    """The decode-attention context for ``cfg``: its own ``cost.decode_attention_context`` if
    set, else its calibration's, else ``max`` (the seed's)."""
    from .cost.roofline import DECODE_ATTENTION_CONTEXTS

    choices = DECODE_ATTENTION_CONTEXTS
    return _effective_setting(cfg, "decode_attention_context", lambda v: v in choices, " or ".join(choices), choices[0])


def effective_decode_kv_read_fraction(cfg) -> float | None:
    """κ of decode steps for ``cfg``: its own ``cost.decode_kv_read_fraction`` if set, else its
    calibration's, else None (the seed's 0.8)."""
    value = _effective_setting(
        cfg, "decode_kv_read_fraction",
        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1, "a number in (0, 1]", None,
    )
    return None if value is None else float(value)


def effective_lm_head_reads(cfg) -> bool:
    """Whether ``cfg``'s steps read the LM head: its own ``cost.lm_head_reads`` if set, else its
    calibration's, else False (the seed's: transformer layers only)."""
    return bool(_effective_setting(cfg, "lm_head_reads", lambda v: isinstance(v, bool), "true or false", False))


# ---------------------------------------------------------------------------- the problem


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
        return np.array([[_f(m.get(col)) for _, _, col in metrics] for m in self.measured], dtype=float)


SimulateFn = Callable[[list], list]  # configs -> summaries (dicts)


def _f(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def sim_matrix(summaries: Sequence[Mapping], metrics=FIT_METRICS) -> np.ndarray:
    return np.array([[_f(s.get(key)) for _, key, _ in metrics] for s in summaries], dtype=float)


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


# ---------------------------------------------------------------------------- fitting


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
    return minimize(fun, np.clip(x0, 0, 1), method="Nelder-Mead", bounds=[(0.0, 1.0)] * p,
                    options={"maxfev": maxfev, "initial_simplex": np.array(simplex), "xatol": 1e-3, "fatol": 1e-4})


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
    start = {**seed_knobs(pr.configs[0].gpu), **{n: KNOBS[n].start for n in names if KNOBS[n].start is not None},
             **(start or {})}
    fixed = {**{k: v for k, v in start.items() if k not in names}, **(fixed or {})}
    x0 = knobs_to_unit(start, names)
    best = {"f": math.inf, "u": x0}

    def fun(u):
        k = unit_to_knobs(u, names, fixed)
        f = objective(sim_matrix(ev.summaries(k, train_idx)), meas)
        f = f if math.isfinite(f) else 1e6
        if f < best["f"]:
            best.update(f=f, u=np.clip(np.asarray(u, float), 0, 1))
        return f

    res = _nelder_mead(fun, x0, maxfev, step)
    u = best["u"]
    return FitResult(unit_to_knobs(u, names, fixed), u, float(best["f"]), int(res.nfev),
                     [pr.points.at[i, "point_id"] for i in train_idx], names)


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


# ---------------------------------------------------------------------------- intervals


def interval_from_samples(center: float, log_spread: Sequence[float], log_resid: Sequence[float], level: float = 0.9) -> tuple[float, float]:
    """(lo, hi): quantiles (1∓level)/2 of center·exp(r + d) over every pair of a parameter
    /seed spread sample r and a residual d (either set may be empty → treated as {0})."""
    if not (0 < level < 1):
        raise ValueError(f"level must be in (0, 1), got {level}")
    c = _f(center)
    if not (c > 0):
        return (math.nan, math.nan)
    r = np.asarray([x for x in log_spread if math.isfinite(x)] or [0.0], float)
    d = np.asarray([x for x in log_resid if math.isfinite(x)] or [0.0], float)
    s = (r[:, None] + d[None, :]).ravel()
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
    "ttft_mean_ms": "ttft_mean", "ttft_p50_ms": "ttft_mean", "ttft_p90_ms": None, "ttft_p99_ms": None,
    "tpot_mean_ms": "tpot_mean", "tpot_p50_ms": "tpot_mean", "tpot_p90_ms": None, "tpot_p99_ms": None,
    "time_per_output_token_mean_ms": "tpot_incl_ttft_mean",
    "e2e_mean_ms": "e2e_mean", "e2e_p50_ms": "e2e_mean", "e2e_p90_ms": None, "e2e_p99_ms": None,
    "output_tokens_per_s": None, "requests_per_s": None,
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


def summary_intervals(center: Mapping, replicates: Sequence[Mapping], calibration: Mapping[str, Any] | None,
                      level: float = 0.9) -> dict[str, tuple[float, float]]:
    """Interval per summary key (:data:`INTERVAL_KEYS`) from the point run ``center``, the
    bootstrap replicate runs and the calibration's cross-validated log residuals."""
    resid = (calibration or {}).get("residuals_log") or {}
    out = {}
    for key, rmetric in INTERVAL_KEYS.items():
        c = _f(center.get(key))
        spread = [math.log(_f(r.get(key)) / c) for r in replicates if _f(r.get(key)) > 0] if c > 0 else []
        out[key] = interval_from_samples(c, spread, resid.get(rmetric, []) if rmetric else [], level)
    return out
