"""Arrival strategies: SimPy processes that release a workload's requests to an engine.

Semantics follow guidellm's scheduling strategies (``guidellm/scheduler/strategies.py``):

* ``synchronous``: closed loop, one request in flight; the next is sent when the previous
  one leaves (finished or rejected).
* ``concurrent``: ``concurrency`` closed-loop users, each sending its next request when its
  previous one leaves.
* ``throughput``: every request at t = 0; with ``concurrency`` set, at most that many in flight
  (a closed loop of that many users, as guidellm's ``max_concurrency``).
* ``constant``: fixed spacing 1/rate, first request at t = 0.
* ``poisson``: exponential gaps of mean 1/rate (stream ``arrival.poisson``), first at the
  first gap.
* ``replay``: each request at its trace send offset.
* ``open-loop-at-measured-rate``: constant spacing 1/rate with the first request at 1/rate —
  how the seed study (BLIS harness) replaced synchronous and throughput benchmarks by an
  open-loop rate. Only for reproducing that study.

A strategy is ``fn(env, submit, workload, cfg, streams) -> None``: it starts its processes.
``submit(req)`` hands a request to the engine at the current time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import simpy

from sim.config import MAX_CLOCK_S, ArrivalConfig
from sim.entities import Request
from sim.errors import ConfigError
from sim.load.workload import Workload
from sim.registry import Registry
from sim.rng import RandomStreams

Submit = Callable[[Request], None]
ARRIVALS: Registry = Registry("arrival strategy")


def _within_clock(times_s: np.ndarray, field: str, fix: str) -> np.ndarray:
    """``times_s`` (ascending send times) if the last is inside the clock's microsecond range
    (:data:`~sim.config.MAX_CLOCK_S`); else a ConfigError naming ``field`` and ``fix``."""
    if len(times_s) and float(times_s[-1]) > MAX_CLOCK_S:
        raise ConfigError(
            f"{field}: the last of {len(times_s)} requests would be sent at {float(times_s[-1]):.3g} s of simulated time, "
            f"beyond {MAX_CLOCK_S:.3g} s (2**32 s; past it the float64 clock cannot keep microsecond latencies); {fix}"
        )
    return times_s


def _open_loop(env: simpy.Environment, submit: Submit, reqs: Iterator[Request], times_s: np.ndarray):
    for req, t in zip(reqs, times_s):
        delay = float(t) - env.now
        if delay > 0:
            yield env.timeout(delay)
        submit(req)


def _closed_loop_user(env: simpy.Environment, submit: Submit, source: Iterator[Request]):
    for req in source:
        req.done_event = env.event()
        submit(req)
        yield req.done_event


def _start_closed_loop(env: simpy.Environment, submit: Submit, workload: Workload, users: int) -> None:
    source = workload.iter_requests()
    for _ in range(min(users, len(workload))):
        env.process(_closed_loop_user(env, submit, source))


def _rate_rps(cfg: ArrivalConfig) -> float:
    """The configured rate (ArrivalConfig's validation requires it for the rated strategies)."""
    if cfg.rate_rps is None:
        raise ConfigError(f"arrival.rate_rps: strategy {cfg.strategy!r} needs a rate in requests/s")
    return float(cfg.rate_rps)


def _concurrency(cfg: ArrivalConfig) -> int:
    if cfg.concurrency is None:
        raise ConfigError(f"arrival.concurrency: strategy {cfg.strategy!r} needs the number of concurrent users")
    return int(cfg.concurrency)


@ARRIVALS.register("synchronous", "Closed loop, one request in flight (guidellm synchronous).")
def synchronous(env, submit, workload: Workload, cfg: ArrivalConfig, streams: RandomStreams) -> None:
    _start_closed_loop(env, submit, workload, 1)


@ARRIVALS.register("concurrent", "N closed-loop users (guidellm concurrent).")
def concurrent(env, submit, workload: Workload, cfg: ArrivalConfig, streams: RandomStreams) -> None:
    _start_closed_loop(env, submit, workload, _concurrency(cfg))


@ARRIVALS.register("throughput", "All requests at t=0, optional in-flight cap (guidellm throughput).")
def throughput(env, submit, workload: Workload, cfg: ArrivalConfig, streams: RandomStreams) -> None:
    if cfg.concurrency is not None:
        _start_closed_loop(env, submit, workload, int(cfg.concurrency))
    else:
        env.process(_open_loop(env, submit, workload.iter_requests(), np.zeros(len(workload))))


@ARRIVALS.register("constant", "Fixed spacing 1/rate from t=0 (guidellm constant).")
def constant(env, submit, workload: Workload, cfg: ArrivalConfig, streams: RandomStreams) -> None:
    times = _within_clock(np.arange(len(workload), dtype=float) / _rate_rps(cfg), "arrival.rate_rps", "raise the rate or send fewer requests")
    env.process(_open_loop(env, submit, workload.iter_requests(), times))


@ARRIVALS.register("poisson", "Exponential gaps of mean 1/rate (guidellm poisson).")
def poisson(env, submit, workload: Workload, cfg: ArrivalConfig, streams: RandomStreams) -> None:
    gaps = streams.get("arrival.poisson").exponential(1.0 / _rate_rps(cfg), size=len(workload))
    times = _within_clock(np.cumsum(gaps), "arrival.rate_rps", "raise the rate or send fewer requests")
    env.process(_open_loop(env, submit, workload.iter_requests(), times))


@ARRIVALS.register("replay", "Send each request at its trace offset.")
def replay(env, submit, workload: Workload, cfg: ArrivalConfig, streams: RandomStreams) -> None:
    if workload.offsets_s is None:
        raise ConfigError("arrival.strategy: 'replay' needs a workload trace with a start_offset_s column")
    times = _within_clock(workload.offsets_s, "workload.trace.path", "the trace's start_offset_s values span more than 2**32 s")
    env.process(_open_loop(env, submit, workload.iter_requests(), times))


@ARRIVALS.register("open-loop-at-measured-rate", "Constant 1/rate, first at 1/rate (the seed study's harness).")
def open_loop_at_measured_rate(env, submit, workload: Workload, cfg: ArrivalConfig, streams: RandomStreams) -> None:
    times = _within_clock((np.arange(len(workload), dtype=float) + 1.0) / _rate_rps(cfg), "arrival.rate_rps", "raise the rate or send fewer requests")
    env.process(_open_loop(env, submit, workload.iter_requests(), times))
