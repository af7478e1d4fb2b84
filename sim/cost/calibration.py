"""Calibration data of the roofline: the knobs, shipped calibration files, and the resolution
of a run's cost settings.

* **Knobs** (:data:`KNOBS`): a handful of physically meaningful parameters of the step-cost
  model, each a :class:`~sim.config.CostConfig` field whose unset value reproduces the seed
  model, with the range a fit may move it in.
* **Calibrations**: YAML files (shipped in ``sim/data/calibrations/`` or given by path) that
  record fitted knob values per mixed-batch formula, the cost settings they were fitted with
  (:data:`CALIBRATION_SETTINGS`), and the data for prediction intervals.
* **Resolution** (:func:`resolve_cost_settings`): a run's effective cost settings — the
  config's own value where set, else its calibration's, else the seed's — computed once when
  a simulation is assembled and handed to the cost model's factory as a :class:`CostSettings`.
  Cost models never look a calibration up themselves.

Fitting the knobs is :mod:`sim.studies.fit`; intervals are :mod:`sim.studies.intervals`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sim.catalogue.hardware import resolve_gpu
from sim.cost.base import DECODE_ATTENTION_CONTEXTS
from sim.cost.combine import DEFAULT_FORMULA, FORMULAS
from sim.errors import ConfigError


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
        # nccl-tests figures); the seed has no communication term at all. An absolute figure:
        # it does not travel to another GPU (allreduce_efficiency does); a user's override
        Knob(
            "allreduce_bw_gbps",
            10.0,
            2000.0,
            True,
            "effective all-reduce bus bandwidth per GPU, GB/s (TP communication); overrides allreduce_efficiency",
            450.0,
        ),
        # start 1.0: 450 GB/s of H100 SXM's 450 GB/s per direction (NVLink 4 with NVLS in-switch
        # reduction reaches the link rate in nccl-tests); PCIe parts reach less of theirs
        Knob(
            "allreduce_efficiency",
            0.05,
            1.0,
            True,
            "all-reduce bus bandwidth as a share of the GPU's interconnect bandwidth per direction (TP communication)",
            1.0,
        ),
        # set A's Llama-2-7B chat TPOTs at TP 1/2/4 (6.2/4.4/3.2 ms) shrink less with TP than a
        # roofline divided by TP: each all-reduce has a latency floor (NCCL small messages: µs)
        Knob("allreduce_latency_us", 0.0, 50.0, False, "fixed latency of each all-reduce, µs (2 per layer and step when TP > 1)"),
    )
}


KNOB_NAMES = tuple(KNOBS)


def seed_knobs(gpu: str = "H100") -> dict[str, float]:
    """The seed model's knob values (the GPU's η and per-layer overhead, neutral corrections)."""
    g = resolve_gpu(gpu)
    return {
        "bw_efficiency": g.bw_efficiency,
        "per_layer_overhead_us": g.per_layer_overhead_us,
        "per_step_overhead_us": 0.0,
        "prefill_compute_scale": 1.0,
        "decode_compute_scale": 1.0,
        "attention_scale": 1.0,
        "mixed_penalty": 0.0,
        "frontend_latency_ms": 0.0,
        "frontend_us_per_prompt_token": 0.0,
        "allreduce_latency_us": 0.0,
    }  # allreduce_bw_gbps / allreduce_efficiency: absent = no communication term (the seed has none)


DEFAULT_CALIBRATION = "h100"
"""The shipped calibration a roofline run uses when ``cost.calibration`` is unset."""

NO_CALIBRATION = "none"
"""``cost.calibration: none``: the seed roofline, no fitted knobs."""


def is_no_calibration(name: str | None) -> bool:
    """Whether a ``cost.calibration`` value is :data:`NO_CALIBRATION` (any case, spaces)."""
    return name is not None and str(name).strip().lower() == NO_CALIBRATION


def active_calibration(cfg) -> str | None:
    """The calibration ``cfg`` runs with: its ``cost.calibration`` if set (None for ``none``),
    else :data:`DEFAULT_CALIBRATION` for the roofline and None for other cost models (they have
    no knobs to fill)."""
    name = getattr(cfg.cost, "calibration", None)
    if name is None:
        return DEFAULT_CALIBRATION if cfg.cost.model == "roofline" else None
    return None if is_no_calibration(name) else name


def calibration_origin(cfg) -> tuple[str | None, str | None]:
    """(the calibration ``cfg`` runs with, the GPU it was fitted on when that is not ``cfg``'s):
    :func:`active_calibration` and :func:`transferred_from` together; (None, None) without one."""
    name = active_calibration(cfg)
    return name, (transferred_from(load_calibration(name), cfg.gpu) if name else None)


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
        f"cost.calibration: unknown calibration {text!r}; shipped: {', '.join(names) or '(none)'}; or give a path to a YAML file, or 'none' for the seed roofline"
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
    The result says ``transferred_from`` (the GPU it was fitted on) when ``cfg``'s GPU is
    another one. Precondition: ``cfg`` has a calibration (:func:`active_calibration`)."""
    name = active_calibration(cfg)
    assert name is not None, "calibration_for needs a config with a calibration"
    formula = effective_formula(cfg)
    FORMULAS.get(formula, "cost.formula")  # an unknown formula is reported as such first
    section = calibration_section(load_calibration(name), formula, name)
    fitted = transferred_from(section, cfg.gpu)
    if fitted:
        section["transferred_from"] = fitted
    return section


def transferred_from(cal: Mapping[str, Any], gpu: str) -> str | None:
    """The GPU calibration ``cal`` was fitted on when ``gpu`` is another one, else None.
    Its knobs are GPU-independent (host times) or shares of the GPU's own peaks, so they
    apply to any GPU; the prediction intervals widen (:data:`TRANSFER_LOG_SIGMA`)."""
    fitted = str(cal.get("gpu", "") or "").strip()
    if not fitted:
        return None
    try:
        same = resolve_gpu(fitted).name == resolve_gpu(gpu).name
    except ConfigError:  # a GPU file or a name this catalogue lacks: compare as written
        same = fitted.lower() == str(gpu).strip().lower()
    return None if same else fitted


# Log-scale spread added to prediction intervals when a calibration runs on a GPU it was not
# fitted on. Justification (docs/calibration.md, "Transfer"): BLIS's physics model fitted on
# H100 predicts held-out A100/L40S runs with a median E2E error of 6.7 % (and TTFT 17.6 %);
# a median absolute error of 6.7 % is a log-normal σ of 0.10 (median |N(0, σ)| = 0.674 σ).
TRANSFER_LOG_SIGMA = 0.10


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
    """Knob values for ``cfg``: the config's own where set, else its calibration's
    (:func:`active_calibration`), else None (= seed behaviour). A calibration applies to any
    GPU (its knobs are host times or shares of the GPU's own peaks)."""
    c = cfg.cost
    out: dict[str, float | None] = {k: getattr(c, k) for k in KNOB_NAMES}
    name = active_calibration(cfg)
    if name:
        cal = calibration_for(cfg) if c.model == "roofline" else load_calibration(name)
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
    name = active_calibration(cfg)
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
    return _effective_setting(cfg, "formula", lambda v: isinstance(v, str) and v in FORMULAS, f"one of {', '.join(FORMULAS)}", DEFAULT_FORMULA)


def effective_mfu_lookup(cfg) -> str:
    """The MFU lookup for ``cfg``: its own ``cost.mfu_lookup`` if set, else its calibration's
    (``mfu_lookup`` in the YAML), else ``nearest`` (the seed's)."""
    return _effective_setting(cfg, "mfu_lookup", lambda v: v in ("nearest", "interpolate"), "nearest or interpolate", "nearest")


def effective_decode_attention_context(cfg) -> str:
    """The decode-attention context for ``cfg``: its own ``cost.decode_attention_context`` if
    set, else its calibration's, else ``max`` (the seed's)."""
    choices = DECODE_ATTENTION_CONTEXTS
    return _effective_setting(cfg, "decode_attention_context", lambda v: v in choices, " or ".join(choices), choices[0])


def effective_decode_kv_read_fraction(cfg) -> float | None:
    """κ of decode steps for ``cfg``: its own ``cost.decode_kv_read_fraction`` if set, else its
    calibration's, else None (the seed's 0.8)."""
    value = _effective_setting(
        cfg,
        "decode_kv_read_fraction",
        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1,
        "a number in (0, 1]",
        None,
    )
    return None if value is None else float(value)


def effective_lm_head_reads(cfg) -> bool:
    """Whether ``cfg``'s steps read the LM head: its own ``cost.lm_head_reads`` if set, else its
    calibration's, else False (the seed's: transformer layers only)."""
    return bool(_effective_setting(cfg, "lm_head_reads", lambda v: isinstance(v, bool), "true or false", False))


@dataclass(frozen=True)
class CostSettings:
    """A run's effective cost settings, resolved once (:func:`resolve_cost_settings`).

    ``knobs`` maps every name of :data:`KNOB_NAMES` to its value, or None for the seed's
    behaviour. ``formula`` … ``lm_head_reads`` are the settings a calibration records beside
    its knobs (:data:`CALIBRATION_SETTINGS`, and the formula the knobs were fitted with).
    """

    knobs: Mapping[str, float | None]
    formula: str
    mfu_lookup: str
    decode_attention_context: str
    decode_kv_read_fraction: float | None
    lm_head_reads: bool
    calibration: str | None = None  # the calibration used (None: the seed's knobs)
    transferred_from: str | None = None  # the GPU it was fitted on, when that is not this run's

    def knob(self, name: str) -> float | None:
        return self.knobs.get(name)


def resolve_cost_settings(cfg) -> CostSettings:
    """``cfg``'s cost settings: its own ``cost.*`` where set, else its calibration's
    (``cost.calibration``), else the seed's. Only the roofline reads a calibration's knobs;
    other cost models keep the config's own (the frontend knobs apply to every model).
    ConfigError for an unknown or mismatched calibration, naming the field."""
    if cfg.cost.model == "roofline":
        knobs = effective_knobs(cfg)
    else:
        knobs = {k: getattr(cfg.cost, k) for k in KNOB_NAMES}
    name, fitted = calibration_origin(cfg) if cfg.cost.model == "roofline" else (None, None)
    return CostSettings(
        knobs=knobs,
        formula=effective_formula(cfg),
        mfu_lookup=effective_mfu_lookup(cfg),
        decode_attention_context=effective_decode_attention_context(cfg),
        decode_kv_read_fraction=effective_decode_kv_read_fraction(cfg),
        lm_head_reads=effective_lm_head_reads(cfg),
        calibration=name,
        transferred_from=fitted,
    )
