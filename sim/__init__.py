"""servesim: a discrete-event simulator of LLM serving with vLLM V1 semantics, on SimPy.

The public Python API (everything else is internal and may move)::

    import sim
    cfg = sim.parse_run_config({"model": "llama-2-7b", "arrival": {"strategy": "poisson", "rate_rps": 8}})
    result = sim.simulate(cfg)          # SimResult: .requests, .steps (DataFrames), .summary (dict)
    table = sim.plan("llama-2-70b", rate_rps=40, slo={"ttft_p99_ms": 500, "tpot_p99_ms": 50})  # cheapest first

Names are loaded on first use, so ``import sim`` (and the CLI's start-up) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from sim.version import __version__

_API = {
    "simulate": "sim.core.simulation",
    "Simulation": "sim.core.simulation",
    "SimResult": "sim.core.simulation",
    "plan": "sim.studies.plan",
    "RunConfig": "sim.config",
    "parse_run_config": "sim.config",
    "ConfigError": "sim.errors",
    "ServesimError": "sim.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'sim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
