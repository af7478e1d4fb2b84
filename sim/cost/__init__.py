"""Step-cost models: price a :class:`~sim.entities.Batch` in seconds.

``base`` defines the :class:`CostModel` protocol and the registry; ``simple`` has the fixed and
linear test models; ``roofline`` the architecture/GPU roofline, with ``mfu`` (microbenchmark
tables) and ``combine`` (mixed-batch formulas).
"""

from .base import COST_MODELS, CostModel

__all__ = ["COST_MODELS", "CostModel"]
