"""The outcome of a run: per-request and per-step tables, inter-token gaps and summaries."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from sim.config import RunConfig


@dataclass
class SimResult:
    """Outcome of one run: per-request and per-step tables, ITLs and a summary."""

    config: RunConfig
    requests: pd.DataFrame
    steps: pd.DataFrame
    itls_s: np.ndarray
    summary: dict
    derived: dict = field(default_factory=dict)
    replicas: pd.DataFrame | None = None  # fleets: one row per replica (see sim.core.fleet); None for one server
    # derived data computed where the run was simulated (e.g. a pool worker) for a report built
    # later; never written as such (not part of summary.json)
    extras: dict = field(default_factory=dict)
