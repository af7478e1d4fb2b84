"""Simple step-cost models for tests and analytic checks.

``fixed``: every non-empty step costs ``cost.fixed_step_s`` seconds, whatever it holds.
``linear``: ``base + per_prefill_token·prefill tokens + per_decode_token·decode tokens``
(the shape of BLIS's "blackbox" β model, with user-given coefficients).
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.cost.base import COST_MODELS
from sim.cost.calibration import is_no_calibration
from sim.entities import Batch, StepCost
from sim.errors import ConfigError


@dataclass(frozen=True, slots=True)
class FixedCostModel:
    """Constant step duration: ``step_s`` seconds for any non-empty batch."""

    step_s: float
    name: str = "fixed"

    def __post_init__(self) -> None:
        if not self.step_s > 0:
            raise ValueError(f"step_s must be > 0, got {self.step_s}")

    def price(self, batch: Batch) -> StepCost:
        return StepCost(total_s=self.step_s, overhead_s=self.step_s)

    def price_decode(self, n: int, context_sum: int, context_max: int) -> StepCost:
        """Price of a decode-only step (same as :meth:`price`)."""
        return StepCost(total_s=self.step_s, overhead_s=self.step_s)


@dataclass(frozen=True, slots=True)
class LinearCostModel:
    """``base_s + per_prefill_token_s·Np + per_decode_token_s·Nd`` seconds."""

    base_s: float
    per_prefill_token_s: float
    per_decode_token_s: float
    name: str = "linear"

    def __post_init__(self) -> None:
        if not self.base_s > 0 or self.per_prefill_token_s < 0 or self.per_decode_token_s < 0:
            raise ValueError("linear cost model needs base_s > 0 and non-negative per-token terms")

    def price_decode(self, n: int, context_sum: int, context_max: int) -> StepCost:
        """Price of a decode-only step of ``n`` decodes (same as :meth:`price`)."""
        decode_s = self.per_decode_token_s * n
        return StepCost(total_s=self.base_s + 0.0 + decode_s, compute_s=0.0 + decode_s, overhead_s=self.base_s, prefill_s=0.0, decode_s=decode_s)

    def price(self, batch: Batch) -> StepCost:
        prefill_s = self.per_prefill_token_s * batch.num_prefill_tokens
        decode_s = self.per_decode_token_s * batch.num_decode_tokens
        return StepCost(
            total_s=self.base_s + prefill_s + decode_s,
            compute_s=prefill_s + decode_s,
            overhead_s=self.base_s,
            prefill_s=prefill_s,
            decode_s=decode_s,
        )


def _no_roofline_settings(cfg, name: str) -> None:
    """The fixed and linear models price a step without phases or kernels: a mixed-batch
    formula or roofline setting given with them would be silently ignored, so it is an error."""
    c = cfg.cost
    given = [k for k in ("formula", "calibration") if getattr(c, k) is not None and not (k == "calibration" and is_no_calibration(c.calibration))]
    if given:
        raise ConfigError(
            f"cost.{given[0]}: the {name} cost model has no mixed-batch formula or calibration (it prices a step as a whole); "
            f"drop cost.{given[0]} or use cost.model roofline"
        )


@COST_MODELS.register("fixed", "Constant step time (cost.fixed_step_s); for tests and analytic cases.")
def _fixed_factory(cfg, settings) -> FixedCostModel:
    _no_roofline_settings(cfg, "fixed")
    return FixedCostModel(cfg.cost.fixed_step_s)


@COST_MODELS.register("linear", "base + per-prefill-token + per-decode-token seconds (cost.linear_*).")
def _linear_factory(cfg, settings) -> LinearCostModel:
    _no_roofline_settings(cfg, "linear")
    c = cfg.cost
    return LinearCostModel(c.linear_base_s, c.linear_per_prefill_token_s, c.linear_per_decode_token_s)
