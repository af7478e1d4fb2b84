"""Seed-replicated comparison of scheduler policies, cost formulas and fleet routers, with
paired intervals.

Every *arm* (a policy × formula × router combination; routers only for a config with a cluster) runs with the same seeds, so seed *i* gives every
arm the same workload draw and arrival times: the runs are **paired**. Per arm and metric we
report the mean over seeds and its 95 % confidence interval (Student t, n − 1 degrees of
freedom); against the baseline arm (the first) the mean **paired difference** with its own
interval and whether that interval excludes zero. With rates, the comparison is made at every
rate (open-loop arrivals of ``sweep.rate_strategy``).

Pure logic: the simulations run through a ``run_many(configs) -> results`` callable, whose
results arrive in input order, so the output does not depend on the executor or workers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from sim.config import RunConfig, with_overrides
from sim.core.simulation import SimResult
from sim.errors import ConfigError

METRICS = (
    "ttft_mean_ms",
    "ttft_p99_ms",
    "tpot_mean_ms",
    "tpot_p99_ms",
    "itl_p99_ms",
    "e2e_mean_ms",
    "e2e_p99_ms",
    "output_tokens_per_s",
    "requests_per_s",
)
COUNTS = ("num_finished", "num_rejected")  # a latency gain bought by refusing requests shows here
FLEET_METRICS = ("load_imbalance_requests", "load_imbalance_busy")
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Arm:
    policy: str
    formula: str
    router: str | None = None  # a fleet's router; None = the config's

    def label(self, vary_policy: bool, vary_formula: bool, vary_router: bool = False) -> str:
        parts = ([self.policy] if vary_policy else []) + ([self.formula] if vary_formula else []) + ([str(self.router)] if vary_router else [])
        return "/".join(parts) or self.policy


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval of the mean; (x, x, x) for one value, NaNs ignored."""
    v = np.asarray([x for x in values if x == x], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    m = float(v.mean())
    if len(v) == 1:
        return m, m, m
    half = float(stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return m, m - half, m + half


def arm_configs(
    cfg: RunConfig, arms: Sequence[Arm], seeds: Sequence[int], rates: Sequence[float] | None, set_formula: bool = True
) -> list[tuple[Arm, float | None, int, RunConfig]]:
    """Every (arm, rate, seed) run, in a fixed order. ``set_formula``: write each arm's formula
    into its config (when formulas are compared or the config names one)."""
    out = []
    for rate in rates if rates else [None]:
        for arm in arms:
            for seed in seeds:
                over: dict = {"seed": seed, "scheduler": {"policy": arm.policy}}
                if set_formula:  # only a compared formula is set: a whole-step cost model has none
                    over["cost"] = {"formula": arm.formula}
                if arm.router is not None:
                    over["cluster"] = {"router": {"policy": arm.router}}
                if rate is not None:
                    over["arrival"] = {"strategy": cfg.sweep.rate_strategy, "rate_rps": rate, "concurrency": None}
                    if cfg.sweep.duration_s is not None:
                        over["workload"] = {"num_requests": max(1, int(round(rate * cfg.sweep.duration_s)))}
                out.append((arm, rate, seed, with_overrides(cfg, over)))
    return out


def compare(
    cfg: RunConfig,
    run_many: Callable[[Sequence[RunConfig]], list[SimResult]],
    policies: Sequence[str],
    formulas: Sequence[str],
    num_seeds: int,
    rates: Sequence[float] | None = None,
    routers: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run the comparison. Returns (per-run metrics, per-arm statistics).

    The statistics table has one row per (rate, arm, metric) with ``mean, ci_low, ci_high``
    and, for non-baseline arms, ``diff_mean, diff_low, diff_high, diff_excludes_zero``.
    """
    if num_seeds < 2:
        raise ConfigError(f"--seeds: need at least 2 seeds for an interval, got {num_seeds}")
    if not policies or not formulas:
        raise ConfigError("compare: give at least one policy and one formula")
    if routers is not None and cfg.cluster is None:
        raise ConfigError("--routers: the config has no cluster to route in; add --replicas N or a cluster section")
    for name, values in (("--policies", policies), ("--formulas", formulas), ("--routers", routers or [])):
        dup = sorted({v for v in values if list(values).count(v) > 1})
        if dup:
            raise ConfigError(f"{name}: {dup[0]!r} is listed twice; each arm must be distinct")
    router_choices: Sequence[str | None] = list(routers) if routers is not None else [None]
    arms = [Arm(p, f, r) for p in policies for f in formulas for r in router_choices]
    if len(arms) < 2:
        raise ConfigError(
            "compare: needs at least two arms (e.g. --policies vllm-v1,sarathi, --formulas weighted-average,additive or --routers round-robin,least-outstanding)"
        )
    vary_p, vary_f = len(set(policies)) > 1, len(set(formulas)) > 1
    vary_r = routers is not None and len(set(routers)) > 1
    seeds = [cfg.seed + i for i in range(num_seeds)]
    plan = arm_configs(cfg, arms, seeds, rates, set_formula=vary_f or cfg.cost.formula is not None)
    results = run_many([c for *_, c in plan])
    counts = COUNTS + (("num_timed_out",) if cfg.arrival.request_timeout_s is not None else ())
    metrics = METRICS + counts + (FLEET_METRICS if cfg.cluster is not None else ())
    rows = []
    for (arm, rate, seed, _), res in zip(plan, results):
        row = {"rate_rps": rate, "arm": arm.label(vary_p, vary_f, vary_r), "policy": arm.policy, "formula": arm.formula, "seed": seed}
        if routers is not None:
            row["router"] = arm.router
        row.update({m: res.summary.get(m, math.nan) for m in metrics})
        rows.append(row)
    runs = pd.DataFrame(rows)
    baseline = arms[0].label(vary_p, vary_f, vary_r)
    stat_rows = []
    for rate in rates if rates else [None]:
        sub = runs[runs["rate_rps"].isna()] if rate is None else runs[runs["rate_rps"] == rate]
        base = sub[sub["arm"] == baseline].set_index("seed")
        for arm in arms:
            label = arm.label(vary_p, vary_f, vary_r)
            cur = sub[sub["arm"] == label].set_index("seed")
            for m in metrics:
                mean, lo, hi = mean_ci([float(v) for v in cur[m].tolist()])
                rec = {"rate_rps": rate, "arm": label, "metric": m, "mean": mean, "ci_low": lo, "ci_high": hi, "n": int(cur[m].notna().sum())}
                if label != baseline:
                    d = (cur[m] - base[m]).loc[seeds]
                    dm, dlo, dhi = mean_ci(d.tolist())
                    rec.update(diff_mean=dm, diff_low=dlo, diff_high=dhi, diff_excludes_zero=bool(dlo > 0 or dhi < 0))
                stat_rows.append(rec)
    return runs, pd.DataFrame(stat_rows)
