"""Step-cost models: price a :class:`~sim.entities.Batch` in seconds.

``base`` defines the :class:`CostModel` protocol and the registry; ``simple`` has the fixed and
linear test models; ``roofline`` the architecture/GPU roofline, with ``mfu`` (microbenchmark
tables and the built-in MFU curves) and ``combine`` (mixed-batch formulas).
"""

from . import roofline as _roofline  # noqa: F401  (registers "roofline")
from . import simple as _simple  # noqa: F401  (registers "fixed", "linear")
from .base import COST_MODELS, CostModel

__all__ = ["COST_MODELS", "CostModel"]
