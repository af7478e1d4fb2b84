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
from itertools import repeat

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


def _beyond_clock(field: str, n: int, last_s: float, fix: str) -> ConfigError:
    return ConfigError(
        f"{field}: the last of {n} requests would be sent at {last_s:.3g} s of simulated time, "
        f"beyond {MAX_CLOCK_S:.3g} s (2**32 s; past it the float64 clock cannot keep microsecond latencies); {fix}"
    )


def _within_clock(times_s: np.ndarray, field: str, fix: str) -> np.ndarray:
    """``times_s`` (ascending send times) if the last is inside the clock's microsecond range
    (:data:`~sim.config.MAX_CLOCK_S`); else a ConfigError naming ``field`` and ``fix``."""
    if len(times_s) and float(times_s[-1]) > MAX_CLOCK_S:
        raise _beyond_clock(field, len(times_s), float(times_s[-1]), fix)
    return times_s


_CHUNK = 65536  # send times computed at a time (a run that ends at a horizon computes no more)
_RATE_FIX = "raise the rate or send fewer requests"


def _chunked_times(n: int, piece, field: str, fix: str) -> Iterator[float]:
    """Send times ``piece(lo, hi)`` for ids ``lo..hi-1``, a chunk at a time, each chunk
    checked against the clock's range (the first chunk before the run starts)."""
    for lo in range(0, n, _CHUNK):
        times = piece(lo, min(n, lo + _CHUNK))
        if len(times) and float(times[-1]) > MAX_CLOCK_S:
            raise _beyond_clock(field, n, float(times[-1]), fix)
        yield from times.tolist()


def _poisson_times(n: int, rate_rps: float, rng: np.random.Generator) -> Iterator[float]:
    """Cumulated exponential gaps, drawn a chunk at a time: the same floats as one
    ``np.cumsum`` of all ``n`` gaps (numpy's cumsum adds in order; each chunk continues from
    the last time)."""
    last = [0.0]

    def piece(lo: int, hi: int) -> np.ndarray:
        gaps = rng.exponential(1.0 / rate_rps, size=hi - lo)
        times = np.cumsum(np.concatenate(([last[0]], gaps)))[1:] if lo else np.cumsum(gaps)
        if len(times):
            last[0] = float(times[-1])
        return times

    return _chunked_times(n, piece, "arrival.rate_rps", _RATE_FIX)


def _open_loop(env: simpy.Environment, submit: Submit, reqs: Iterator[Request], times_s):
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
        env.process(_open_loop(env, submit, workload.iter_requests(), repeat(0.0, len(workload))))


@ARRIVALS.register("constant", "Fixed spacing 1/rate from t=0 (guidellm constant).")
def constant(env, submit, workload: Workload, cfg: ArrivalConfig, streams: RandomStreams) -> None:
    rate, n = _rate_rps(cfg), len(workload)
    if n and (n - 1) / rate > MAX_CLOCK_S:
        raise _beyond_clock("arrival.rate_rps", n, (n - 1) / rate, _RATE_FIX)
    times = _chunked_times(n, lambda lo, hi: np.arange(lo, hi, dtype=float) / rate, "arrival.rate_rps", _RATE_FIX)
    env.process(_open_loop(env, submit, workload.iter_requests(), times))


@ARRIVALS.register("poisson", "Exponential gaps of mean 1/rate (guidellm poisson).")
def poisson(env, submit, workload: Workload, cfg: ArrivalConfig, streams: RandomStreams) -> None:
    rate, n = _rate_rps(cfg), len(workload)
    if n and n / rate > MAX_CLOCK_S:  # the expected last send; a later one is caught as it is drawn
        raise _beyond_clock("arrival.rate_rps", n, n / rate, _RATE_FIX)
    times = _poisson_times(n, rate, streams.get("arrival.poisson"))
    env.process(_open_loop(env, submit, workload.iter_requests(), times))


@ARRIVALS.register("replay", "Send each request at its trace offset.")
def replay(env, submit, workload: Workload, cfg: ArrivalConfig, streams: RandomStreams) -> None:
    if workload.offsets_s is None:
        raise ConfigError("arrival.strategy: 'replay' needs a workload trace with a start_offset_s column")
    times = _within_clock(workload.offsets_s, "workload.trace.path", "the trace's start_offset_s values span more than 2**32 s")
    env.process(_open_loop(env, submit, workload.iter_requests(), times))


@ARRIVALS.register("open-loop-at-measured-rate", "Constant 1/rate, first at 1/rate (the seed study's harness).")
def open_loop_at_measured_rate(env, submit, workload: Workload, cfg: ArrivalConfig, streams: RandomStreams) -> None:
    rate, n = _rate_rps(cfg), len(workload)
    if n and n / rate > MAX_CLOCK_S:
        raise _beyond_clock("arrival.rate_rps", n, n / rate, _RATE_FIX)
    times = _chunked_times(n, lambda lo, hi: (np.arange(lo, hi, dtype=float) + 1.0) / rate, "arrival.rate_rps", _RATE_FIX)
    env.process(_open_loop(env, submit, workload.iter_requests(), times))
