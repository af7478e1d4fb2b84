"""Step-cost models: price a :class:`~sim.entities.Batch` in seconds.

``base`` defines the :class:`CostModel` protocol and the registry; ``simple`` has the fixed and
linear test models; ``roofline`` the architecture/GPU roofline, with ``mfu`` (microbenchmark
tables and the built-in MFU curves) and ``combine`` (mixed-batch formulas); ``calibration``
the fitted knobs and the resolution of a run's cost settings.
"""

from sim.cost import roofline_build as _roofline  # noqa: F401  (registers "roofline")
from sim.cost import simple as _simple  # noqa: F401  (registers "fixed", "linear")
from sim.cost.base import COST_MODELS, CostModel
from sim.cost.calibration import CostSettings, resolve_cost_settings


def build_cost_model(cfg, settings: CostSettings | None = None) -> CostModel:
    """The cost model ``cfg.cost.model`` for ``cfg``, built with ``settings`` (resolved from
    ``cfg`` when not given). ConfigError for an unknown model name or bad settings."""
    factory = COST_MODELS.get(cfg.cost.model, "cost.model")
    return factory(cfg, resolve_cost_settings(cfg) if settings is None else settings)


__all__ = ["COST_MODELS", "CostModel", "CostSettings", "build_cost_model", "resolve_cost_settings"]
