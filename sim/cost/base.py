"""The cost-model contract and its registry.

A cost model is built from a run's config (``factory(ctx) -> CostModel``, registered in
:data:`COST_MODELS`) and then prices batches with ``price(batch) -> StepCost``.

Contract of ``price``: pure and deterministic (same batch ⇒ same cost, no hidden state that
changes results), ``total_s > 0`` for every non-empty batch (a zero step would stall the clock),
and it never mutates the batch.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..entities import Batch, StepCost
from ..registry import Registry


@runtime_checkable
class CostModel(Protocol):
    """Prices one engine step."""

    name: str

    def price(self, batch: Batch) -> StepCost:
        """Duration of ``batch`` in seconds. Precondition: ``len(batch) > 0``."""
        ...


COST_MODELS: Registry = Registry("cost model")
"""Registry of cost-model factories: ``factory(ctx: BuildContext) -> CostModel``."""
