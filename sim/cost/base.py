"""The cost-model contract and its registry.

A cost model is built from a run's config and its resolved cost settings
(``factory(cfg, settings) -> CostModel``, registered in :data:`COST_MODELS`;
``settings`` is a :class:`~sim.cost.calibration.CostSettings`, resolved once when the
simulation is assembled) and then prices batches with ``price(batch) -> StepCost``.

Contract of ``price``: pure and deterministic (same batch ⇒ same cost, no hidden state that
changes results), ``total_s > 0`` for every non-empty batch (a zero step would stall the clock),
and it never mutates the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol, get_args, runtime_checkable

from sim.entities import Batch, StepCost
from sim.registry import Registry

# Settings of the roofline that a calibration records (their types live here, beside the
# contract, so that the calibration data and the cost models both read them from below).
GemmM = Literal["tokens", "requests"]
DecodeAttentionContext = Literal["max", "mean"]
DECODE_ATTENTION_CONTEXTS: tuple[str, ...] = get_args(DecodeAttentionContext)  # the seed's first


@runtime_checkable
class CostModel(Protocol):
    """Prices one engine step."""

    name: str

    def price(self, batch: Batch) -> StepCost:
        """Duration of ``batch`` in seconds. Precondition: ``len(batch) > 0``."""
        ...


class DecodePricer(Protocol):
    """Optional extension: a cost model that can price a decode-only step from its aggregates.

    ``price_decode(n, context_sum, context_max)`` must equal ``price(batch)`` for every
    decode-only batch of ``n`` decodes with those context sum and maximum. Cost models that
    have it let the engine fast-forward stretches of pure decode steps.
    """

    def price_decode(self, n: int, context_sum: int, context_max: int) -> StepCost: ...


def decode_step_fn(model: DecodePricer, n: int) -> Callable[[int, int], float]:
    """``f(context_sum, context_max) -> seconds``: the total of ``model.price_decode(n, …)``.

    A model may provide ``decode_step_fn(n)`` that computes the same float faster (constants
    of ``n`` hoisted, no StepCost built); the engine calls it once per fast-forward window.
    """
    own = getattr(model, "decode_step_fn", None)
    if own is not None:
        return own(n)
    price_decode = model.price_decode
    return lambda context_sum, context_max: price_decode(n, context_sum, context_max).total_s


COST_MODELS: Registry = Registry("cost model")
"""Registry of cost-model factories: ``factory(cfg: RunConfig, settings: CostSettings) -> CostModel``."""
