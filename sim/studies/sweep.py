"""QPS sweeps, the saturation point, and SLO capacity search.

A *sweep* follows guidellm's ``sweep`` profile (``guidellm/benchmark/profile.py``
``SweepProfile``): a synchronous benchmark, a throughput benchmark, then ``num_points − 2``
constant (or Poisson) rates ``linspace(sync_rps, throughput_rps, num_points − 1)[1:]``, where
``sync_rps`` and ``throughput_rps`` are the request rates those two benchmarks achieved; then
(``sweep.overload_factor``, default 1.25) one rate beyond ``throughput_rps``, because the
throughput point's achieved rate includes its drain and sits at or below capacity, so
guidellm's points alone rarely show the overloaded side.

**Saturation.** An open-loop rate point is *stable* when the server keeps up with it:

* the admission queue (requests waiting, sampled at every step) does not grow, over the
  arrival window after its ramp-up (the first quarter, or the first mean E2E latency if
  longer), by more than 10 % of the requests offered in that window or than the random
  fluctuation of a stable queue, 3·√(mean queue) + 1 (least-squares slope × window; past
  saturation it grows at offered − served rate);
* queueing stays bounded: the mean queue delay of the last third of requests (by arrival) is
  at most twice that of the first third plus ten mean step durations (in a stable vLLM-like
  server waiting requests are admitted within a few steps); and
* when the sweep ran a throughput benchmark, the rate does not exceed the *full-batch
  capacity*: the completion rate of that benchmark while its batch held at least 90 % of its
  peak number of running requests. Below the seat and KV limits a vLLM-like server does not
  queue but grows its batch, and every step slows with it; the batch converges only when the
  rate is below the full-batch completion rate, and the approach takes about E2E/(1 − ρ), often
  longer than a finite run. The queue criteria alone would call such points stable; and
* with a client timeout (``arrival.request_timeout_s``), no request timed out.

A rate point whose arrivals span under 3 mean E2E latencies is *inconclusive* (neither stable
nor unstable: too short to show a queue growing), unless its rate is above the full-batch
capacity. The *saturation point* is the highest swept rate such that it and every lower rate
point are stable; an inconclusive point ends the chain with a note saying how many requests
would decide it. Finite runs blur the edge: use enough requests per point (several hundred).

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

from sim.config import RunConfig, SloConfig, with_overrides
from sim.core.simulation import SimResult
from sim.errors import ConfigError

RunMany = Callable[[Sequence[RunConfig]], list[SimResult]]


@dataclass
class SweepPoint:
    label: str
    strategy: str
    rate_rps: float | None
    result: SimResult
    stable: bool | None = None  # None: not a rate point, or inconclusive
    inconclusive: bool = False  # a rate point too short to judge (see too_short)

    @property
    def achieved_rps(self) -> float:
        return float(self.result.summary["requests_per_s"])


@dataclass
class SweepResult:
    points: list[SweepPoint]
    saturation_rps: float | None
    max_throughput_rps: float
    notes: list[str] = field(default_factory=list)
    full_batch_capacity_rps: float = float("nan")

    def rate_points(self) -> list[tuple[float, SweepPoint]]:
        """The points with a rate (constant / poisson), as ``(rate_rps, point)`` by rate."""
        return rate_points(self.points)


def rate_points(points: Sequence[SweepPoint]) -> list[tuple[float, SweepPoint]]:
    """``(rate_rps, point)`` for the points with a rate, in increasing rate (stable order for ties)."""
    return sorted(((p.rate_rps, p) for p in points if p.rate_rps is not None), key=lambda rp: rp[0])


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


QUEUE_GROWTH_TOLERANCE = 0.10  # the queue may grow by at most 10 % of the requests offered
MIN_STEPS_FOR_TREND = 20
FULL_BATCH_FRACTION = 0.9  # "full batch": running requests at least 90 % of the run's peak
SATURATED_SHARE = 0.5  # ... and requests waiting in at least half of those steps (else no capacity was measured)
MIN_FINISHED_FOR_CAPACITY = 10


def queue_growth(res: SimResult) -> tuple[float, float, float]:
    """Least-squares slope (requests/s) of the number of waiting requests (sampled at every
    step) over the arrival window after its ramp-up (the first quarter, or the first mean E2E
    latency if longer), with the window's length (s) and mean queue (requests). Slope NaN
    when too few steps remain. For a fleet (steps with a ``replica`` column) the queue is the
    fleet's: the sum over replicas of each replica's fitted slope and mean queue."""
    df, st = res.requests, res.steps
    t0, t1 = float(df["arrival_s"].min()), float(df["arrival_s"].max())
    finished = df["status"] == "finished"
    # skip the ramp-up: the server fills for about one mean latency (Little's law) first
    e2e_s = float(df.loc[finished, "e2e_s"].mean()) if finished.any() else 0.0
    lo = t0 + max(0.25 * (t1 - t0), e2e_s if e2e_s == e2e_s else 0.0)
    win = st[(st["start_s"] >= lo) & (st["start_s"] <= t1)]
    if len(win) < MIN_STEPS_FOR_TREND or t1 - lo <= 0:
        return float("nan"), 0.0, 0.0
    parts = [g for _, g in win.groupby("replica", sort=True)] if "replica" in win.columns else [win]
    slope = queue = 0.0
    for part in parts:
        if len(part) < 2:
            continue
        x = part["start_s"].to_numpy(dtype=float)
        y = part["num_waiting"].to_numpy(dtype=float)
        if x[-1] > x[0]:
            slope += float(np.polyfit(x - x.mean(), y, 1)[0])
        queue += float(y.mean())
    span_s = float(win["start_s"].max() - win["start_s"].min())
    return slope, span_s, queue


def full_batch_capacity_rps(res: SimResult) -> float:
    """Completions per second of a run while its batch held at least ``FULL_BATCH_FRACTION``
    of its peak number of running requests: the server's sustainable rate at full batch.
    NaN when fewer than ``MIN_FINISHED_FOR_CAPACITY`` requests finished in that period, or
    when requests waited in fewer than ``SATURATED_SHARE`` of its steps (the batch was the
    run's whole supply of requests, not the server's limit). For a
    fleet, the sum of its replicas' full-batch rates (a replica that never filled adds none)."""
    st, df = res.steps, res.requests
    if not len(st):
        return float("nan")
    if "replica" in st.columns:
        rates = [_full_batch_rps(g, df[df["replica"] == i]) for i, g in st.groupby("replica", sort=True)]
        known = [r for r in rates if r == r]
        return float(sum(known)) if known else float("nan")
    return _full_batch_rps(st, df)


def _full_batch_rps(st, df) -> float:
    full = st[st["num_running"] >= FULL_BATCH_FRACTION * float(st["num_running"].max())]
    if not float((full["num_waiting"] > 0).mean()) >= SATURATED_SHARE:
        # requests did not wait while the batch was full: the run never saturated the server
        # (every request fit the batch at once), so its completion rate is no capacity
        return float("nan")
    t0 = float(full["start_s"].min())
    t1 = float((full["start_s"] + full["duration_s"]).max())
    n = int(((df["status"] == "finished") & (df["finish_s"] > t0) & (df["finish_s"] <= t1)).sum())
    if n < MIN_FINISHED_FOR_CAPACITY or t1 <= t0:
        return float("nan")
    return n / (t1 - t0)


def is_stable(res: SimResult, capacity_rps: float = float("nan")) -> bool:
    """Whether an open-loop point keeps up with its offered rate (see module docstring);
    ``capacity_rps`` is the full-batch capacity (NaN: unknown, criterion skipped)."""
    if res.summary["num_in_flight"] or res.summary["num_not_sent"] or res.summary.get("num_timed_out"):
        return False  # left unfinished, or clients gave up waiting
    rate = res.config.arrival.rate_rps
    if rate and capacity_rps == capacity_rps and rate > capacity_rps:
        return False
    slope, span_s, queue = queue_growth(res)
    # growth over the window must exceed both 10 % of the arrivals and the random
    # fluctuation of a stable queue (about its square root, Poisson-like)
    allowed = max(QUEUE_GROWTH_TOLERANCE * (rate or 0.0) * span_s, 3.0 * math.sqrt(queue) + 1.0)
    if rate and slope == slope and slope * span_s > allowed:
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
    if sw.concurrencies is not None:
        return _concurrency_sweep(cfg, run_many)
    if sw.rates_rps is None:
        anchors = [point_config(cfg, "synchronous"), point_config(cfg, "throughput")]
        sync_res, thr_res = run_many(anchors)
        points.append(SweepPoint("synchronous", "synchronous", None, sync_res))
        points.append(SweepPoint("throughput", "throughput", None, thr_res))
        rates = guidellm_rates(sync_res.summary["requests_per_s"], thr_res.summary["requests_per_s"], sw.num_points)
        if sw.overload_factor is not None:
            # guidellm stops at the throughput point's achieved rate, which includes the drain
            # and so sits at or below capacity; one rate beyond it shows the overloaded side
            rates.append(rates[-1] * sw.overload_factor)
    else:
        rates = sorted(sw.rates_rps)
    capacity_rps = full_batch_capacity_rps(points[1].result) if points else float("nan")
    if capacity_rps == capacity_rps:
        notes.append(
            f"full-batch capacity {capacity_rps:.3g} req/s (throughput benchmark, completions while "
            f"the batch held >= {FULL_BATCH_FRACTION:.0%} of its peak); higher rates count as unstable"
        )
    labels = [f"{sw.rate_strategy}@{r:.4g}" for r in rates]
    if len(set(labels)) != len(labels):
        dup = next(lab for lab in labels if labels.count(lab) > 1)
        same = [r for r, lab in zip(rates, labels) if lab == dup]
        raise ConfigError(
            f"sweep rates {', '.join(f'{r:g}' for r in same)} are one point ({dup}) to 4 significant digits; give distinct rates (each point has its own tables)"
        )
    rate_cfgs = [point_config(cfg, sw.rate_strategy, r) for r in rates]
    for label, r, res in zip(labels, rates, run_many(rate_cfgs)):
        above = capacity_rps == capacity_rps and r > capacity_rps
        short = "" if above else too_short(res)
        # a run too short to show its queue growing is no verdict either way (an overloaded
        # server looks as fast as an idle one for about one E2E latency); above the full-batch
        # capacity the verdict is certain however short the run
        stable = None if short else is_stable(res, capacity_rps)
        points.append(SweepPoint(label, sw.rate_strategy, r, res, stable=stable, inconclusive=bool(short)))
    saturation = None
    ended_by: SweepPoint | None = None
    for rate, p in rate_points(points):
        if p.stable is not True:
            ended_by = p
            break
        saturation = rate
    if ended_by is not None and ended_by.inconclusive:
        short = too_short(ended_by.result)
        notes.append(
            f"{ended_by.label} is inconclusive, {short.removeprefix(TOO_SHORT + ': ')}; the saturation point is the highest rate judged stable below it"
        )
    elif saturation is None:
        notes.append("every rate point queued without bound: the lowest swept rate is already past saturation")
    elif saturation == max(rates):
        notes.append("the highest swept rate is still stable: saturation lies above the swept range")
    max_thr = max(p.achieved_rps for p in points if not math.isnan(p.achieved_rps)) if points else math.nan
    return SweepResult(points, saturation, max_thr, notes, capacity_rps)


def _concurrency_sweep(cfg: RunConfig, run_many: RunMany) -> SweepResult:
    """guidellm's ``concurrent`` profile with several rates: one closed-loop point per number of
    users. A closed loop cannot queue without bound (the users wait for their answers), so there
    is no saturation point; the notes name the throughput plateau instead."""
    sw = cfg.sweep
    if sw.rates_rps is not None:
        raise ConfigError("sweep: give rates_rps or concurrencies, not both")
    users = list(sw.concurrencies or [])
    cfgs = [with_overrides(cfg, {"arrival": {"strategy": "concurrent", "concurrency": n, "rate_rps": None}}) for n in users]
    points = [SweepPoint(f"concurrent@{n}", "concurrent", None, res) for n, res in zip(users, run_many(cfgs))]
    max_thr = max((p.achieved_rps for p in points if not math.isnan(p.achieved_rps)), default=math.nan)
    notes = ["closed-loop points (concurrent users): the queue is bounded by the users, so there is no saturation point"]
    best = max(points, key=lambda p: p.achieved_rps if not math.isnan(p.achieved_rps) else -1.0)
    notes.append(f"highest throughput {max_thr:.3g} req/s at {best.label}")
    return SweepResult(points, None, max_thr, notes)


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
    if summary.get("num_timed_out"):
        out.append("requests timed out")
    return out


def goodput_rps(res: SimResult, slo: SloConfig) -> float:
    """Finished requests per second that met the per-request SLOs (ttft_ms, tpot_ms; falling
    back to the p99 bounds as per-request bounds)."""
    ok = meets_per_request_slo(res, slo)
    span = res.summary["duration_s"]
    return float(ok.sum() / span) if span > 0 else math.nan


def meets_per_request_slo(res: SimResult, slo: SloConfig):
    """Boolean Series over ``res.requests``: finished and within the per-request SLOs (see
    :func:`goodput_rps`)."""
    df = res.requests
    ok = df["status"] == "finished"
    ttft = slo.ttft_ms if slo.ttft_ms is not None else slo.ttft_p99_ms
    tpot = slo.tpot_ms if slo.tpot_ms is not None else slo.tpot_p99_ms
    if ttft is not None:
        ok &= df["ttft_s"] * 1e3 <= ttft
    if tpot is not None:
        ok &= (df["tpot_s"].isna()) | (df["tpot_s"] * 1e3 <= tpot)
    return ok


# An open-loop run shorter than this many mean E2E latencies never reaches a steady state:
# every request can be in the server at once (Little's law, L = rate x E2E), so an overloaded
# server looks as fast as an idle one.
MIN_WINDOW_E2E = 3.0
TOO_SHORT = "too short to tell"


def require_aggregate_slo(slo: SloConfig, command: str) -> None:
    """ConfigError (naming ``command``) unless ``slo`` bounds a p99 latency: a search needs one."""
    if all(getattr(slo, k) is None for k in ("ttft_p99_ms", "tpot_p99_ms", "e2e_p99_ms")):
        raise ConfigError(
            f"{command}: give at least one aggregate SLO (ttft_p99, tpot_p99 or e2e_p99), e.g. --slo ttft_p99=500,tpot_p99=50 "
            "(milliseconds); per-request ttft / tpot only count goodput"
        )


def too_short(res: SimResult) -> str:
    """Why an open-loop run is too short to judge (``TOO_SHORT: …`` with the requests it would
    need), or '': its arrivals span under ``MIN_WINDOW_E2E`` mean E2E latencies."""
    rate = res.config.arrival.rate_rps
    df = res.requests
    fin = df[df["status"] == "finished"]
    if not rate or not len(fin):
        return ""
    window_s = float(df["arrival_s"].max() - df["arrival_s"].min())
    e2e_s = float(fin["e2e_s"].mean())
    if window_s >= MIN_WINDOW_E2E * e2e_s:
        return ""
    need = int(math.ceil(MIN_WINDOW_E2E * e2e_s * rate))
    return (
        f"{TOO_SHORT}: arrivals span {window_s:.3g} s, under {MIN_WINDOW_E2E:g}x the mean E2E latency ({e2e_s:.3g} s); "
        f"raise workload.num_requests to at least {need} (or set sweep.duration_s)"
    )


def capacity_violations(res: SimResult, slo: SloConfig, capacity_rps: float = float("nan")) -> list[str]:
    """What keeps ``res`` from counting as sustainable under ``slo``: its missed aggregate SLOs,
    a queue that grows without bound (:func:`is_stable`; a rate above ``capacity_rps``, the
    full-batch capacity when known, cannot converge), and an arrival window shorter than
    ``MIN_WINDOW_E2E`` mean E2E latencies (a short run of an overloaded server can meet
    latency bounds before its queue has grown)."""
    out = slo_violations(res.summary, slo)
    if res.derived.get("stopped_early"):
        out.insert(0, f"stopped early: {res.derived['stopped_early']}")
    rate = res.config.arrival.rate_rps
    if not rate:
        return out
    if capacity_rps == capacity_rps and rate > capacity_rps:
        out.append(f"unstable: above the full-batch capacity ({capacity_rps:.4g} req/s from the throughput run)")
    elif not is_stable(res):
        out.append("unstable: the queue grows without bound at this rate")
    short = too_short(res)
    if short:
        out.append(short)
    return out


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
CAPACITY_EXTENSIONS = 4  # doublings beyond the throughput point's rate when every rate passes


def find_capacity(cfg: RunConfig, run_many: RunMany, slo: SloConfig | None = None) -> CapacityResult:
    """Highest open-loop rate meeting the SLOs (k-section search between 0 and the
    throughput point's achieved rate, refined ``CAPACITY_ROUNDS`` times)."""
    slo = slo or cfg.slo
    require_aggregate_slo(slo, "capacity")
    strategy = cfg.sweep.rate_strategy
    (thr,) = run_many([point_config(cfg, "throughput")])
    hi = float(thr.summary["requests_per_s"])
    if not hi > 0:
        raise ConfigError("capacity: the throughput run finished no request; check the workload and server limits")
    upper = hi
    # rates above what a full batch completes cannot converge, however short the run
    batch_capacity_rps = full_batch_capacity_rps(thr)
    lo = 0.0
    best: tuple[float, SimResult] | None = None
    tried: list[tuple[float, bool, list[str]]] = []
    notes: list[str] = []
    k = CAPACITY_POINTS_PER_ROUND

    def trial(rates: list[float]) -> list[tuple[float, bool, SimResult]]:
        results = run_many([point_config(cfg, strategy, r) for r in rates])
        outcome = []
        for r, res in zip(rates, results):
            viol = capacity_violations(res, slo, batch_capacity_rps)
            tried.append((r, not viol, viol))
            outcome.append((r, not viol, res))
        return outcome

    for round_index in range(CAPACITY_ROUNDS):
        if round_index == 0:  # the first round spans (0, upper], upper included
            rates = [upper * (i + 1) / k for i in range(k)]
        else:  # later rounds split the open interval (lo, hi)
            rates = [lo + (hi - lo) * (i + 1) / (k + 1) for i in range(k)]
        outcome = trial(rates)
        failing = [r for r, ok, _ in outcome if not ok]
        if failing:
            hi = min(failing)
        passing = [(r, res) for r, ok, res in outcome if ok and (not failing or r < hi)]
        if passing:
            r, res = max(passing, key=lambda x: x[0])
            if r > lo:
                lo, best = r, (r, res)
        if not failing and round_index == 0:
            # the throughput point's achieved rate includes its drain (and, for a fleet, the
            # split of one burst): the capacity may lie above it; double until a rate fails
            rate = upper
            for _ in range(CAPACITY_EXTENSIONS):
                rate *= 2
                ((r, ok, res),) = trial([rate])
                if not ok:
                    hi = r
                    break
                lo, best = r, (r, res)
            else:
                notes.append(f"the SLOs hold up to {rate:.4g} req/s, the highest rate tried ({2**CAPACITY_EXTENSIONS}x the throughput point's achieved rate)")
                break
        if hi - lo <= 0.01 * hi:
            break
    first_fail = min(((r, v) for r, ok, v in tried if not ok), default=None)
    if first_fail is not None and all(v.startswith(TOO_SHORT) for v in first_fail[1]):
        notes.append(
            f"the lowest failing rate ({first_fail[0]:.4g} req/s) was only too short to judge (arrivals spanning under {MIN_WINDOW_E2E:g} "
            "mean E2E latencies); more requests (--num-requests) or sweep.duration_s may raise the capacity"
        )
    tried.sort()
    if best is None:
        notes.append("no rate tried met the SLOs; they may be tighter than even an idle server achieves")
        return CapacityResult(None, None, None, tried, upper, notes)
    return CapacityResult(best[0], goodput_rps(best[1], slo), best[1], tried, upper, notes)
