"""QPS sweeps, the saturation point, and SLO capacity search.

A *sweep* follows guidellm's ``sweep`` profile (``guidellm/benchmark/profile.py``
``SweepProfile``): a synchronous benchmark, a throughput benchmark, then ``num_points − 2``
constant (or Poisson) rates ``linspace(sync_rps, throughput_rps, num_points − 1)[1:]``, where
``sync_rps`` and ``throughput_rps`` are the request rates those two benchmarks achieved.

**Saturation.** An open-loop rate point is *stable* when the server keeps up with it:

* the backlog (requests running or waiting, sampled at every step) grows, over the last three
  quarters of the arrival window, by at most 10 % of the offered rate (least-squares slope;
  past saturation it grows at offered − served rate), and
* queueing stays bounded: the mean queue delay of the last third of requests (by arrival) is
  at most twice that of the first third plus ten mean step durations (in a stable vLLM-like
  server waiting requests are admitted within a few steps).

The *saturation point* is the highest swept rate such that it and every lower rate point are
stable. Finite runs blur the edge: use enough requests per point (several hundred).

**Capacity.** The highest open-loop rate whose summary meets the SLOs (p99 TTFT/TPOT/E2E
bounds), found by a deterministic k-section search (4 rates a round, independent of workers).
Goodput = finished requests per second that individually met the per-request SLOs.

Pure logic: the simulations run through a ``run_many(configs) -> results`` callable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .config import RunConfig, SloConfig, with_overrides
from .errors import ConfigError
from .simulation import SimResult

RunMany = Callable[[Sequence[RunConfig]], list[SimResult]]


@dataclass
class SweepPoint:
    label: str
    strategy: str
    rate_rps: float | None
    result: SimResult
    stable: bool | None = None

    @property
    def achieved_rps(self) -> float:
        return float(self.result.summary["requests_per_s"])


@dataclass
class SweepResult:
    points: list[SweepPoint]
    saturation_rps: float | None
    max_throughput_rps: float
    notes: list[str] = field(default_factory=list)


def guidellm_rates(sync_rps: float, throughput_rps: float, num_points: int) -> list[float]:
    """guidellm's sweep rates: ``linspace(sync, throughput, num_points − 1)[1:]``."""
    if num_points < 3:
        raise ConfigError(f"sweep.num_points: must be >= 3, got {num_points}")
    if not (sync_rps > 0 and throughput_rps > 0):
        raise ConfigError("sweep: the synchronous and throughput points finished no request; cannot place rates")
    return [float(r) for r in np.linspace(sync_rps, throughput_rps, num_points - 1)[1:]]


def point_config(cfg: RunConfig, strategy: str, rate_rps: float | None = None) -> RunConfig:
    """``cfg`` with the arrival strategy (and rate) of one sweep point."""
    arrival: dict = {"strategy": strategy, "rate_rps": rate_rps, "concurrency": None}
    over: dict = {"arrival": arrival}
    if strategy == "throughput":
        arrival["concurrency"] = cfg.arrival.concurrency if cfg.arrival.strategy == "throughput" else None
    if rate_rps is not None and cfg.sweep.duration_s is not None:
        over["workload"] = {"num_requests": max(1, int(round(rate_rps * cfg.sweep.duration_s)))}
    return with_overrides(cfg, over)


BACKLOG_GROWTH_TOLERANCE = 0.10  # backlog may grow at most 10 % of the offered rate
MIN_STEPS_FOR_TREND = 20


def backlog_growth_rps(res: SimResult) -> float:
    """Least-squares slope (requests/s) of the number of requests in the server (running +
    waiting, sampled at every step) over the last three quarters of the arrival window.
    NaN when the window holds too few steps to tell."""
    df, st = res.requests, res.steps
    t0, t1 = float(df["arrival_s"].min()), float(df["arrival_s"].max())
    lo = t0 + 0.25 * (t1 - t0)
    win = st[(st["start_s"] >= lo) & (st["start_s"] <= t1)]
    if len(win) < MIN_STEPS_FOR_TREND or t1 - lo <= 0:
        return float("nan")
    x = win["start_s"].to_numpy(dtype=float)
    y = (win["num_running"] + win["num_waiting"]).to_numpy(dtype=float)
    slope = np.polyfit(x - x.mean(), y, 1)[0]
    return float(slope)


def is_stable(res: SimResult) -> bool:
    """Whether an open-loop point keeps up with its offered rate (see module docstring)."""
    if res.summary["num_in_flight"] or res.summary["num_not_sent"]:
        return False
    rate = res.config.arrival.rate_rps
    growth = backlog_growth_rps(res)
    if rate and growth == growth and growth > BACKLOG_GROWTH_TOLERANCE * rate:
        return False
    df = res.requests
    fin = df[df["status"] == "finished"].sort_values("arrival_s", kind="stable")
    if len(fin) < 6:
        return True
    third = len(fin) // 3
    first = float(fin["queue_delay_s"].iloc[:third].mean())
    last = float(fin["queue_delay_s"].iloc[-third:].mean())
    step_s = float(res.steps["duration_s"].mean()) if len(res.steps) else 0.0
    return last <= 2.0 * first + 10.0 * step_s


def run_sweep(cfg: RunConfig, run_many: RunMany) -> SweepResult:
    """Run the sweep ``cfg.sweep`` describes (see module docstring)."""
    sw = cfg.sweep
    notes: list[str] = []
    points: list[SweepPoint] = []
    if sw.rates_rps is None:
        anchors = [point_config(cfg, "synchronous"), point_config(cfg, "throughput")]
        sync_res, thr_res = run_many(anchors)
        points.append(SweepPoint("synchronous", "synchronous", None, sync_res))
        points.append(SweepPoint("throughput", "throughput", None, thr_res))
        rates = guidellm_rates(sync_res.summary["requests_per_s"], thr_res.summary["requests_per_s"], sw.num_points)
    else:
        rates = sorted(sw.rates_rps)
    rate_cfgs = [point_config(cfg, sw.rate_strategy, r) for r in rates]
    for r, res in zip(rates, run_many(rate_cfgs)):
        points.append(SweepPoint(f"{sw.rate_strategy}@{r:.4g}", sw.rate_strategy, r, res, stable=is_stable(res)))
    saturation = None
    for p in sorted((p for p in points if p.rate_rps is not None), key=lambda p: p.rate_rps):
        if not p.stable:
            break
        saturation = p.rate_rps
    if saturation is None:
        notes.append("every rate point queued without bound: the lowest swept rate is already past saturation")
    elif saturation == max(rates):
        notes.append("the highest swept rate is still stable: saturation lies above the swept range")
    max_thr = max(p.achieved_rps for p in points if not math.isnan(p.achieved_rps)) if points else math.nan
    return SweepResult(points, saturation, max_thr, notes)


# ------------------------------------------------------------------ capacity


def slo_violations(summary: dict, slo: SloConfig) -> list[str]:
    """Names of the aggregate SLOs ``summary`` misses (empty = meets all)."""
    out = []
    for key in ("ttft_p99_ms", "tpot_p99_ms", "e2e_p99_ms"):
        bound = getattr(slo, key)
        if bound is not None:
            v = summary.get(key, math.nan)
            if math.isnan(v) or v > bound:
                out.append(f"{key} {v:.1f} > {bound:g}")
    if summary.get("num_in_flight") or summary.get("num_rejected"):
        out.append("requests unfinished or rejected")
    return out


def goodput_rps(res: SimResult, slo: SloConfig) -> float:
    """Finished requests per second that met the per-request SLOs (ttft_ms, tpot_ms; falling
    back to the p99 bounds as per-request bounds)."""
    df = res.requests
    ok = df["status"] == "finished"
    ttft = slo.ttft_ms if slo.ttft_ms is not None else slo.ttft_p99_ms
    tpot = slo.tpot_ms if slo.tpot_ms is not None else slo.tpot_p99_ms
    if ttft is not None:
        ok &= df["ttft_s"] * 1e3 <= ttft
    if tpot is not None:
        ok &= (df["tpot_s"].isna()) | (df["tpot_s"] * 1e3 <= tpot)
    span = res.summary["duration_s"]
    return float(ok.sum() / span) if span > 0 else math.nan


@dataclass
class CapacityResult:
    capacity_rps: float | None
    goodput_rps: float | None
    result: SimResult | None
    tried: list[tuple[float, bool, list[str]]]
    upper_bound_rps: float
    notes: list[str] = field(default_factory=list)


CAPACITY_POINTS_PER_ROUND = 4
CAPACITY_ROUNDS = 5


def find_capacity(cfg: RunConfig, run_many: RunMany, slo: SloConfig | None = None) -> CapacityResult:
    """Highest open-loop rate meeting the SLOs (k-section search between 0 and the
    throughput point's achieved rate, refined ``CAPACITY_ROUNDS`` times)."""
    slo = slo or cfg.slo
    if all(getattr(slo, k) is None for k in ("ttft_p99_ms", "tpot_p99_ms", "e2e_p99_ms")):
        raise ConfigError("capacity: give at least one SLO, e.g. --slo ttft_p99=500,tpot_p99=50 (milliseconds)")
    strategy = cfg.sweep.rate_strategy
    (thr,) = run_many([point_config(cfg, "throughput")])
    hi = float(thr.summary["requests_per_s"])
    if not hi > 0:
        raise ConfigError("capacity: the throughput run finished no request; check the workload and server limits")
    upper = hi
    lo = 0.0
    best: tuple[float, SimResult] | None = None
    tried: list[tuple[float, bool, list[str]]] = []
    notes: list[str] = []
    k = CAPACITY_POINTS_PER_ROUND
    for round_index in range(CAPACITY_ROUNDS):
        if round_index == 0:  # the first round spans (0, upper], upper included
            rates = [upper * (i + 1) / k for i in range(k)]
        else:  # later rounds split the open interval (lo, hi)
            rates = [lo + (hi - lo) * (i + 1) / (k + 1) for i in range(k)]
        results = run_many([point_config(cfg, strategy, r) for r in rates])
        outcome = []
        for r, res in zip(rates, results):
            viol = slo_violations(res.summary, slo)
            tried.append((r, not viol, viol))
            outcome.append((r, not viol, res))
        failing = [r for r, ok, _ in outcome if not ok]
        if failing:
            hi = min(failing)
        passing = [(r, res) for r, ok, res in outcome if ok and (not failing or r < hi)]
        if passing:
            r, res = max(passing, key=lambda x: x[0])
            if r > lo:
                lo, best = r, (r, res)
        if not failing and round_index == 0:
            notes.append("the SLOs hold up to the server's maximum throughput (the throughput point's achieved rate)")
            break
        if hi - lo <= 0.01 * hi:
            break
    tried.sort()
    if best is None:
        notes.append("no rate tried met the SLOs; they may be tighter than even an idle server achieves")
        return CapacityResult(None, None, None, tried, upper, notes)
    return CapacityResult(best[0], goodput_rps(best[1], slo), best[1], tried, upper, notes)
