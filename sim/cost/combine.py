"""Mixed-batch formulas: how a step's prefill and decode phase times combine.

A formula is a plain function ``f(terms: PhaseTerms) -> float`` (seconds of GPU time, before
the CPU overhead) registered in :data:`FORMULAS`. Adding one is one function plus its
``@FORMULAS.register(name)``. :func:`combine` applies the chosen formula to mixed steps only:
a single-phase step costs ``max(C, M)`` of its phase under every formula (blis-reference.md
§1.4, "One phase only").

Notation (blis-reference.md §1.4): Tp = max(Cp, Mp), Td = max(Cd, Md); Np = prefill new
tokens; Nd = decode requests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sim.registry import Registry


@dataclass(frozen=True, slots=True)
class PhaseTerms:
    """Roofline terms of one step, seconds (per GPU).

    ``prefill_compute_s``/``prefill_memory_s`` (Cp, Mp) and ``decode_compute_s``/
    ``decode_memory_s`` (Cd, Md) are each phase priced alone (weights read once per phase).
    ``num_prefill_tokens`` (Np) and ``num_decode_reqs`` (Nd) weight the averages.
    For ``additive``: ``prefill_gemm_s``/``decode_gemm_s`` are the phases' own GEMM times
    (contained in Cp/Cd), ``fused_gemm_s`` one GEMM pass over both phases' rows,
    ``mixed_memory_s`` the step's bytes with the weights read once.
    """

    prefill_compute_s: float
    prefill_memory_s: float
    decode_compute_s: float
    decode_memory_s: float
    num_prefill_tokens: int
    num_decode_reqs: int
    prefill_gemm_s: float = 0.0
    decode_gemm_s: float = 0.0
    fused_gemm_s: float = 0.0
    mixed_memory_s: float = 0.0

    @property
    def has_prefill(self) -> bool:
        return self.num_prefill_tokens > 0

    @property
    def has_decode(self) -> bool:
        return self.num_decode_reqs > 0

    @property
    def prefill_s(self) -> float:
        """Tp = max(Cp, Mp); 0 without prefill."""
        return max(self.prefill_compute_s, self.prefill_memory_s) if self.has_prefill else 0.0

    @property
    def decode_s(self) -> float:
        """Td = max(Cd, Md); 0 without decodes."""
        return max(self.decode_compute_s, self.decode_memory_s) if self.has_decode else 0.0

    @property
    def mixed_compute_s(self) -> float:
        """Cmix = fused GEMM + each phase's non-GEMM (attention) compute, clamped at 0."""
        return self.fused_gemm_s + max(0.0, self.prefill_compute_s - self.prefill_gemm_s) + max(0.0, self.decode_compute_s - self.decode_gemm_s)


Formula = Callable[[PhaseTerms], float]
FORMULAS: Registry[Formula] = Registry("mixed-batch formula")
DEFAULT_FORMULA = "weighted-average"  # the seed simulator's default (used when nothing names one)


def _token_weighted(t: PhaseTerms) -> float:
    np_, nd = t.num_prefill_tokens, t.num_decode_reqs
    return (np_ * t.prefill_s + nd * t.decode_s) / (np_ + nd)


@FORMULAS.register("weighted-average")
def weighted_average(t: PhaseTerms) -> float:
    """Seed default (v2-pre mixedBatchMode ""): 0.75/0.25 if Np > 4Nd and Np > 100; 0.35/0.65 if Nd > 2Np and Nd > 50; else token-weighted.

    The constants and thresholds are the seed simulator's (inference-sim v2-pre
    ``roofline_step.go``, mixed-batch-study.md "uncited magic constants"); kept to reproduce it.
    """
    np_, nd = t.num_prefill_tokens, t.num_decode_reqs
    if np_ > 4 * nd and np_ > 100:
        return 0.75 * t.prefill_s + 0.25 * t.decode_s
    if nd > 2 * np_ and nd > 50:
        return 0.35 * t.prefill_s + 0.65 * t.decode_s
    return _token_weighted(t)


@FORMULAS.register("smooth-wa")
def smooth_weighted_average(t: PhaseTerms) -> float:
    """Token-weighted average (Np·Tp + Nd·Td)/(Np + Nd), no branches (v2-pre ``smooth-wa``)."""
    return _token_weighted(t)


@FORMULAS.register("additive")
def additive(t: PhaseTerms) -> float:
    """max(Cmix, Mmix): one fused GEMM over both phases, per-phase attention, weights read once (v2-pre ``additive``)."""
    return max(t.mixed_compute_s, t.mixed_memory_s)


@FORMULAS.register("max")
def max_of_phases(t: PhaseTerms) -> float:
    """max(Tp, Td): the slower phase alone (v2, blis-reference.md §1.4)."""
    return max(t.prefill_s, t.decode_s)


def combine(formula: str | Formula, terms: PhaseTerms) -> float:
    """GPU seconds of the step: ``formula`` for a mixed step, max(C, M) of the one phase otherwise.

    Precondition: at least one phase present. ``formula`` is a registered name or a function.
    """
    if terms.has_prefill and terms.has_decode:
        fn = FORMULAS.get(formula, "cost.formula") if isinstance(formula, str) else formula
        return fn(terms)
    if terms.has_prefill:
        return terms.prefill_s
    if terms.has_decode:
        return terms.decode_s
    raise ValueError("combine() needs a step with prefill tokens or decode requests")
