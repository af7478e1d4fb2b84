"""The fewest replicas that meet the SLOs at a given request rate (``capacity --find replicas``).

Each *shape* is searched on its own: for a fleet of mixed groups, every group is a shape (a
fleet of only that group's GPU, TP and server settings, behind the config's router); a config
without a cluster section is one shape (its server); a prefill/decode fleet is one shape whose
two pool sizes are searched in turn (prefill replicas with the decode pool at the first size
that passes, then decode replicas with that prefill pool).

The search for one count doubles from 1 until a fleet passes, then bisects between the last
failing and the first passing count, so the answer ``n`` comes with ``n − 1`` checked and
failing (or ``n = 1``). It assumes a count that passes is not followed by a larger one that
fails; simulated latencies are noisy, so a count near the boundary may be one off from what
another seed gives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sim.config import OPEN_LOOP_STRATEGIES, RunConfig, SloConfig, with_overrides
from sim.core.result import SimResult
from sim.errors import ConfigError
from sim.studies.sweep import TOO_SHORT, capacity_violations, point_config, require_aggregate_slo

RunMany = Callable[[Sequence[RunConfig]], list[SimResult]]

DEFAULT_MAX_REPLICAS = 256


@dataclass
class ShapeResult:
    """One shape's answer. ``counts`` maps group name → replicas of the fewest passing fleet
    (None: even ``max_replicas`` per group failed); ``tried`` lists (counts, meets SLOs,
    violations) in the order run."""

    shape: str
    counts: dict[str, int] | None
    result: SimResult | None
    tried: list[tuple[dict[str, int], bool, list[str]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def num_gpus(self) -> int | None:
        if self.counts is None or self.result is None or self.result.replicas is None:
            return None
        tp = self.result.replicas.groupby("group", sort=False)["tensor_parallel_size"].first()
        return int(sum(n * int(tp[g]) for g, n in self.counts.items()))


def _shapes(cfg: RunConfig) -> list[tuple[str, dict]]:
    """(shape label, cluster section with one or two groups) for each shape to search."""
    if cfg.cluster is None:
        name = f"{cfg.gpu.lower()}-tp{cfg.tensor_parallel_size}"
        return [(name, {"groups": [{"name": name, "replicas": 1}]})]
    cl = cfg.cluster.model_dump(mode="json")
    groups = cl["groups"]
    for i, g in enumerate(groups):
        g["name"] = g["name"] or f"g{i}"
    if any(g["role"] != "mixed" for g in groups):
        label = " + ".join(g["name"] for g in groups)
        return [(label, cl)]
    return [(g["name"], {**cl, "groups": [g]}) for g in groups]


def _fleet(cfg: RunConfig, cluster: dict, counts: dict[str, int]) -> RunConfig:
    groups = [{**g, "replicas": counts[g["name"]]} for g in cluster["groups"]]
    return with_overrides(cfg, {"cluster": {**cluster, "groups": groups}})


def fewest_replicas(cfg: RunConfig, run_many: RunMany, slo: SloConfig | None = None, max_replicas: int = DEFAULT_MAX_REPLICAS) -> list[ShapeResult]:
    """For each shape of ``cfg`` (see module docstring), the fewest replicas meeting ``slo``
    (default ``cfg.slo``) under the config's own arrivals (an open-loop strategy with a rate:
    the load to provision for). Raises ConfigError without an aggregate SLO, or when the
    arrivals have no rate."""
    slo = slo or cfg.slo
    require_aggregate_slo(slo, "capacity --find replicas")
    a = cfg.arrival
    if a.strategy not in OPEN_LOOP_STRATEGIES or a.rate_rps is None:
        raise ConfigError(
            f"capacity --find replicas: provisions for a request rate, but the arrivals are {a.strategy!r} "
            f"{'without a rate' if a.strategy in OPEN_LOOP_STRATEGIES else '(no rate)'}; give one, e.g. --strategy poisson --rate 200"
        )
    if not 1 <= max_replicas <= 4096:
        raise ConfigError(f"--max-replicas: must be between 1 and 4096, got {max_replicas}")
    rate_rps = a.rate_rps
    base = point_config(cfg, a.strategy, rate_rps)  # sweep.duration_s, if set, sizes the run
    out = []
    for label, cluster in _shapes(base):
        names = [g["name"] for g in cluster["groups"]]
        shape = ShapeResult(label, None, None)
        results: dict[tuple[int, ...], SimResult | None] = {}

        def check(counts: dict[str, int], shape=shape, cluster=cluster, names=names, results=results) -> bool:
            key = tuple(counts[n] for n in names)
            if key not in results:
                (res,) = run_many([_fleet(base, cluster, counts)])
                viol = capacity_violations(res, slo)
                shape.tried.append((dict(counts), not viol, viol))
                results[key] = res if not viol else None
            return results[key] is not None

        # 1. the same count in every pool, doubling until a fleet passes
        n, last_fail = 1, 0
        while not check(dict.fromkeys(names, n)):
            last_fail = n
            if n >= max_replicas:
                shape.notes.append(f"{max_replicas} replicas per group do not meet the SLOs at {rate_rps:g} req/s")
                break
            n = min(2 * n, max_replicas)
        else:
            counts = dict.fromkeys(names, n)
            # 2. bisect each pool in turn, the others held at their current counts
            for name in names:
                lo, hi = 0, counts[name]  # lo fails (or is zero), hi passes
                if len(names) == 1:
                    lo = last_fail  # the doubling already saw that count fail
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if check({**counts, name: mid}):
                        hi = mid
                    else:
                        lo = mid
                counts[name] = hi
            shape.counts = counts
            shape.result = results[tuple(counts[n] for n in names)]
        if shape.counts is not None:
            below = [v for c, ok, v in shape.tried if not ok and all(c[n] <= shape.counts[n] for n in names)]
            witness = below[-1] if below else None  # the last failing count tried below the answer
            if witness and all(v.startswith(TOO_SHORT) for v in witness):
                shape.notes.append("the next smaller fleet was only too short to judge; more requests (--num-requests) may lower the answer")
        out.append(shape)
    return out
