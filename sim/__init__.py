"""servesim: a discrete-event simulator of LLM serving with vLLM V1 semantics, on SimPy.

The public Python API (everything else is internal and may move; docs/api.md)::

    import sim
    result = sim.simulate({"model": "llama-2-7b", "arrival": {"strategy": "poisson", "rate_rps": 8}})
    result.requests, result.steps, result.summary     # DataFrames and a dict
    sw = sim.sweep(overrides={"workload": {"num_requests": 200}})   # the embedded default, smaller
    cap = sim.capacity("my.yaml", slo={"ttft_p99_ms": 200, "tpot_p99_ms": 25})
    runs, stats = sim.compare(policies=["vllm-v1", "sarathi"], seeds=3)
    table = sim.plan("llama-2-70b", rate_rps=40, slo={"ttft_p99_ms": 500, "tpot_p99_ms": 50})  # cheapest first

A ``config`` is None (the embedded default), a YAML/JSON path, a mapping or a RunConfig, read
as the command line reads CONFIG; ``overrides`` are deep-merged over it as --set would.

Names are loaded on first use, so ``import sim`` (and the CLI's start-up) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from sim.version import __version__

_API = {
    "simulate": "sim.api",
    "sweep": "sim.api",
    "capacity": "sim.api",
    "compare": "sim.api",
    "plan": "sim.api",
    "load_config": "sim.api",
    "Simulation": "sim.core.simulation",
    "SimResult": "sim.core.simulation",
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
