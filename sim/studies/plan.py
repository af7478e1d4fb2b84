"""The planner: the cheapest deployment — GPU type × tensor parallelism × server limits ×
replica count — that meets latency SLOs at a request rate, with the calibration's uncertainty.

For each *shape* (GPU, TP, optionally ``max_num_seqs`` / ``max_num_batched_tokens``):

1. **Fit** (no simulation): the shape must hold the model's weights and the KV cache of the
   workload's longest request, and TP must divide the attention heads; otherwise it is
   ``excluded`` with the reason the server gives.
2. **Batch-size-1 bound** (closed form from the cost model): every request's TTFT is at least
   the API-server delay plus its prefill steps priced alone, and every TPOT at least one decode
   step of that request alone (a step never gets cheaper by holding more work). The p99 of
   these per-request lower bounds is a lower bound of the p99 the simulation can give (if
   ``x_i ≥ y_i`` for every request, every order statistic of ``x`` is ≥ that of ``y``), so a
   shape whose bound already misses an SLO is ``pruned`` without simulating it.
3. **One replica's capacity under the SLOs**: the throughput run bounds it (rates above its
   full-batch capacity cannot converge and are failed without simulating them), then
   ``CAPACITY_POINTS`` rates per round bisect it to ``CAPACITY_TOLERANCE``.
4. **The fewest replicas on the point estimate**: from ``n0 = ceil(rate / capacity)``, fleets
   of the chosen router are simulated at the rate until ``n`` passes and ``n − 1`` fails (or
   ``n = 1``). Every fleet run sends enough requests for its arrival window to span
   ``WINDOW_BATCH1_E2E`` batch-1 E2E latencies.
5. **The bound**: at that count, ``interval_replicates`` of the calibration's bootstrap
   replicates (other knobs, other seeds) are simulated too and each aggregate SLO metric gets
   the upper end of its prediction interval (:mod:`sim.studies.intervals`: replicate spread
   combined with the cross-validated residuals; p99 metrics take the residuals of the
   matching mean, since they measure the step-cost model's error, which moves tail and mean
   alike; widened when the calibration is transferred to another GPU). The deployment
   ``meets`` the SLOs only if the upper bounds do. Otherwise the point-estimate count is
   ``at risk``: the fewest larger count whose bounds pass — the spread measured at the
   point-estimate count standing for its neighbours — is searched with point runs, then
   checked with its own replicates (up to ``SAFE_SEARCH_ROUNDS`` times).

All shapes advance together: each search is a generator that yields the configs it needs
next, and the driver simulates the union in one batch (a process pool is kept busy), never
the same config twice. Prices come last (:func:`rank`), so re-pricing needs no simulation.
The library does no I/O: prices arrive as a mapping (the CLI reads the YAML).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sim.config import OPEN_LOOP_STRATEGIES, RunConfig, SloConfig, with_overrides
from sim.core.result import SimResult
from sim.cost.calibration import active_calibration, calibration_for
from sim.entities import Batch, BatchItem
from sim.errors import ConfigError
from sim.studies.intervals import interval_configs, interval_from_samples
from sim.studies.sweep import (
    MIN_WINDOW_E2E,
    TOO_SHORT,
    capacity_violations,
    full_batch_capacity_rps,
    meets_per_request_slo,
    point_config,
    require_aggregate_slo,
)

RunMany = Callable[[Sequence[RunConfig]], list[SimResult]]

CAPACITY_POINTS = 4  # rates per round of the one-replica search (a pool of 2–4 workers stays busy)
CAPACITY_ROUNDS = 4
CAPACITY_TOLERANCE = 0.05  # stop when the bracket is within 5 % of its upper end: the fleet check decides the count
CAPACITY_EXTENSIONS = 4  # doublings beyond the throughput run's rate when every rate passes
# A fleet run's arrival window spans at least this many batch-1 E2E latencies: under the SLOs a
# request's E2E is at most a few times its batch-1 time, and sweep.capacity_violations still
# fails a run whose window is under 3 mean E2Es ("too short to tell").
WINDOW_BATCH1_E2E = 8.0
DEFAULT_MAX_REPLICAS = 256
THROUGHPUT_SEATS_FACTOR = 4  # the throughput run sends at least 4x max_num_seqs requests
TOO_SHORT_RERUNS = 2  # a fleet failing only "too short to tell" is rerun with more requests, at most twice
SAFE_SEARCH_ROUNDS = 3  # replicate batches (the spread re-measured at a new count) before a shape is left "at risk"
DEFAULT_INTERVAL_REPLICATES = 4  # bootstrap replicates per spread measurement (the shipped calibration has 8)
DEFAULT_LEVEL = 0.9  # two-sided prediction interval; its upper end is the 95th percentile
DEFAULT_GPUS = ("H100", "A100", "L40S")
DEFAULT_TP = (1, 2, 4, 8)

SLO_KEYS = ("ttft_p99_ms", "tpot_p99_ms", "e2e_p99_ms")
# residual metric of the calibration (cross-validated log errors) that widens each bound
BOUND_RESIDUALS = {"ttft_p99_ms": "ttft_mean", "tpot_p99_ms": "tpot_mean", "e2e_p99_ms": "e2e_mean"}

STATUSES = ("meets", "at risk", "dominated", "misses", "pruned", "excluded")


class _Ready(list):
    """What a shape's search yields when its fleet stage may start (no configs)."""


READY = _Ready()


@dataclass(frozen=True)
class Shape:
    """One replica's shape: GPU, TP and (None = the config's) server limits."""

    gpu: str  # as the config takes it: a catalogue name or a GPU file
    tensor_parallel_size: int
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    name: str = ""  # the GPU's own name (a GPU file's ``name``), for labels and prices; "" = ``gpu``

    @property
    def gpu_name(self) -> str:
        return self.name or self.gpu

    @property
    def label(self) -> str:
        text = f"{self.gpu_name}-tp{self.tensor_parallel_size}"
        if self.max_num_seqs is not None:
            text += f"-seqs{self.max_num_seqs}"
        if self.max_num_batched_tokens is not None:
            text += f"-mbt{self.max_num_batched_tokens}"
        return text


@dataclass
class Evaluation:
    """One simulated deployment: ``kind`` capacity (one replica at a trial rate), fleet (the
    target rate) or replicate (a calibration bootstrap replicate of a fleet)."""

    shape: str
    kind: str
    replicas: int
    rate_rps: float
    meets_slo: bool
    violations: list[str]
    summary: dict[str, Any]


@dataclass
class ShapePlan:
    """A shape's answer. ``replicas``: fewest whose interval upper bounds meet the SLOs (None
    if not found); ``replicas_point``: fewest meeting them on the point estimate."""

    shape: Shape
    status: str
    reason: str = ""
    replicas: int | None = None
    replicas_point: int | None = None
    capacity_rps: float | None = None  # one replica's highest rate meeting the SLOs
    full_batch_capacity_rps: float | None = None  # one replica's completions/s at full batch
    batch1: dict[str, float] = field(default_factory=dict)
    fleet: dict[int, dict[str, Any]] = field(default_factory=dict)  # count → fleet summary (+ goodput)
    bounds: dict[int, dict[str, tuple[float, float]]] = field(default_factory=dict)  # count → key → (lo, hi)
    evaluations: list[Evaluation] = field(default_factory=list)
    results: dict[int, SimResult] = field(default_factory=dict)  # count → the fleet run
    notes: list[str] = field(default_factory=list)


@dataclass
class PlanResult:
    """Every shape's answer, and what it was asked."""

    rate_rps: float
    slo: SloConfig
    level: float
    router: str
    shapes: list[ShapePlan]
    base: RunConfig
    calibration: str | None
    num_simulations: int
    notes: list[str] = field(default_factory=list)


def parse_prices(data: Any, source: str = "prices") -> dict[str, float]:
    """USD per GPU-hour by GPU name from a prices mapping::

        gpus:
          H100: {usd_per_gpu_hour: 2.99, source: "…", as_of: "2026-03"}

    (``usd_per_gpu_hour`` may also be given bare: ``H100: 2.99``). Unknown keys, a missing or
    non-positive price are ConfigErrors naming the entry."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping with a 'gpus' section, got {type(data).__name__}")
    unknown = set(data) - {"gpus", "currency", "note"}
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; expected gpus (and optional currency, note)")
    if str(data.get("currency", "USD")).upper() != "USD":
        raise ConfigError(f"{source}: currency {data.get('currency')!r} is not supported; give prices in USD")
    gpus = data.get("gpus")
    if not isinstance(gpus, Mapping) or not gpus:
        raise ConfigError(f"{source}: 'gpus' must map GPU names to prices, e.g. gpus: {{H100: {{usd_per_gpu_hour: 2.99}}}}")
    out = {}
    for name, entry in gpus.items():
        where = f"{source}: gpus.{name}"
        if isinstance(entry, Mapping):
            extra = set(entry) - {"usd_per_gpu_hour", "source", "as_of", "note"}
            if extra:
                raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, extra)))}; expected usd_per_gpu_hour, source, as_of, note")
            value = entry.get("usd_per_gpu_hour")
        else:
            value = entry
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{where}: usd_per_gpu_hour must be a positive number of US dollars, got {value!r}")
        out[str(name).strip().upper()] = float(value)
    return out


def price_for(prices: Mapping[str, float], gpu: str) -> float:
    """The price of ``gpu`` (names compared case-insensitively). ConfigError when missing."""
    key = str(gpu).strip().upper()
    if key not in prices:
        raise ConfigError(f"prices: no price for GPU {gpu!r}; add it to the prices file (gpus.{gpu}.usd_per_gpu_hour) or drop it from --gpus")
    return prices[key]


def batch1_bounds(simulation) -> dict[str, float]:
    """Lower bounds (ms) of the p99 TTFT, TPOT and E2E any run of this server and workload can
    show, and the mean batch-1 E2E (s): each request's prefill chunks and decode step priced
    alone (see the module docstring). ``simulation``: a built, not yet run, single-server
    :class:`~sim.core.simulation.Simulation`."""
    server, cost = simulation.server, simulation.cost_model
    limits, scfg = simulation.limits, simulation.cfg.server
    chunk_cap = limits["max_num_batched_tokens"]
    if scfg.long_prefill_token_threshold:
        chunk_cap = min(chunk_cap, scfg.long_prefill_token_threshold)
    if not scfg.enable_chunked_prefill:
        chunk_cap = max(chunk_cap, limits["max_model_len"])
    block = scfg.block_size
    prefill_cache: dict[tuple[int, int], float] = {}
    decode_cache: dict[int, float] = {}

    def prefill_s(prompt: int, cached: int) -> float:
        key = (prompt, cached)
        if key not in prefill_cache:
            total, done = 0.0, cached
            while done < prompt:
                n = min(chunk_cap, prompt - done)
                total += cost.price(Batch.of([BatchItem(0, n, done, False)])).total_s
                done += n
            prefill_cache[key] = total
        return prefill_cache[key]

    def decode_s(context: int) -> float:
        if context not in decode_cache:
            decode_cache[context] = cost.price(Batch.of([BatchItem(0, 1, context, True)])).total_s
        return decode_cache[context]

    workload = simulation.workload
    ttft, tpot, e2e = [], [], []
    for i in range(len(workload)):
        req = workload.make_request(i)
        cached = 0
        if scfg.enable_prefix_caching:  # the most a prefix cache could hold (vLLM recomputes the last token)
            cached = req.prompt_tokens - 1 if req.prompt_id >= 0 else (min(req.prefix_tokens, req.prompt_tokens - 1) // block) * block
        t = server.frontend_latency_s + server.frontend_s_per_prompt_token * req.prompt_tokens + prefill_s(req.prompt_tokens, cached)
        d = decode_s(req.prompt_tokens) if req.output_tokens > 1 else math.nan
        ttft.append(t)
        tpot.append(d)
        e2e.append(t + (req.output_tokens - 1) * (d if d == d else 0.0))
    tp = np.asarray(tpot)
    return {
        "ttft_p99_ms": float(np.quantile(ttft, 0.99) * 1e3),
        "tpot_p99_ms": float(np.quantile(tp[np.isfinite(tp)], 0.99) * 1e3) if np.isfinite(tp).any() else math.nan,
        "e2e_p99_ms": float(np.quantile(e2e, 0.99) * 1e3),
        "e2e_mean_s": float(np.mean(e2e)),
    }


def _longest_request_reason(simulation) -> str:
    """Why the workload's longest request cannot be served (max_model_len, KV cache), or ''."""
    reqs = (simulation.workload.make_request(i) for i in range(len(simulation.workload)))
    return simulation.engine.reject_reason(max(reqs, key=lambda r: r.prompt_tokens + r.output_tokens))


Needs = Generator[list[RunConfig], list[SimResult], None]


def _log_ratios(center: Any, values: Sequence[Any]) -> list[float]:
    """log(value / center) for each finite positive value (empty when ``center`` is not > 0)."""
    c = float(center) if center is not None else math.nan
    if not c > 0:
        return []
    return [math.log(float(v) / c) for v in values if v is not None and float(v) > 0 and math.isfinite(float(v))]


class Planner:
    """Searches every shape (see module docstring). Build, then :meth:`run` with a RunMany."""

    def __init__(
        self,
        base: RunConfig,
        shapes: Sequence[Shape],
        *,
        slo: SloConfig | None = None,
        level: float = DEFAULT_LEVEL,
        interval_replicates: int | None = DEFAULT_INTERVAL_REPLICATES,
        max_replicas: int = DEFAULT_MAX_REPLICAS,
        prices: Mapping[str, float] | None = None,
        concurrent_shapes: int = 2,
        early_stop: bool = True,
        exhaustive: bool = False,
    ) -> None:
        """``base``: the workload, server and cost settings, with the target rate in
        ``arrival.rate_rps`` (open-loop strategy) and the SLOs in ``slo`` (default
        ``base.slo``); its own gpu/TP are replaced by each shape's. ConfigError on a config
        the planner cannot search (no rate, no aggregate SLO, a prefill/decode cluster).

        With ``prices`` (USD per GPU-hour by GPU name) the search is branch and bound: fleet
        searches start in order of estimated cost (``ceil(rate / one replica's capacity)`` ×
        GPUs × price), ``concurrent_shapes`` at a time, and a shape is ``dominated`` — not
        searched further — once even the fewest replicas it could need (the rate over its
        full-batch capacity), or the next count to try, costs more than the cheapest
        deployment already found to meet the SLOs with its bounds. Without prices every shape
        is searched to the end (:func:`rank` prices them afterwards); ``exhaustive`` does the
        same with ``prices`` given (they are still checked for every shape). ``early_stop``: capacity
        and fleet runs end once certain to miss the TTFT SLO (same verdicts, less simulation)."""
        self.slo = slo or base.slo
        require_aggregate_slo(self.slo, "plan")
        a = base.arrival
        if a.strategy not in OPEN_LOOP_STRATEGIES or a.rate_rps is None:
            raise ConfigError("plan: provisions for a request rate; give one with --rate (arrivals constant or poisson)")
        if not 0 < level < 1:
            raise ConfigError(f"--level: the prediction interval's level must be in (0, 1), got {level}")
        if not 1 <= max_replicas <= 4096:
            raise ConfigError(f"--max-replicas: must be between 1 and 4096, got {max_replicas}")
        if interval_replicates is not None and interval_replicates < 0:
            raise ConfigError(f"--interval-replicates: must be >= 0, got {interval_replicates}")
        if not shapes:
            raise ConfigError("plan: no shape to search; give --gpus and --tp")
        self.router: dict[str, Any] = {}
        self.admission: dict[str, Any] | None = None
        if base.cluster is not None:
            cl = base.cluster
            if len(cl.groups) != 1 or cl.groups[0].role != "mixed" or cl.groups[0].gpu or cl.groups[0].tensor_parallel_size:
                raise ConfigError(
                    "plan: searches GPUs, TP and replica counts itself over identical mixed replicas; remove the cluster's groups "
                    "(keep cluster.router / cluster.admission) — prefill/decode pools are not planned"
                )
            if cl.groups[0].server or cl.groups[0].cost:
                raise ConfigError("plan: cluster.groups[0].server / .cost: give server and cost settings at the top level for plan")
            self.router = cl.router.model_dump(mode="json")
            self.admission = cl.admission.model_dump(mode="json")
        # a run certain to miss the TTFT SLO stops there: its pass/fail verdict is the same as
        # run to the end (sim.records.metrics.TtftWatch), so the search is unchanged, only faster
        stop = early_stop and self.slo.ttft_p99_ms is not None
        self.base = with_overrides(base, {"cluster": None, "slo": self.slo.model_dump(), "stop_when_slo_missed": stop})
        self.rate_rps = float(a.rate_rps)
        self.strategy = a.strategy
        self.level = level
        self.max_replicas = max_replicas
        self.interval_replicates = interval_replicates
        self.shapes = list(dict.fromkeys(shapes))  # unique, in order
        self.calibration_name = active_calibration(self.base)
        self.num_simulations = 0
        if prices is not None:
            for sh in self.shapes:
                price_for(prices, sh.gpu_name)  # a missing price stops before any simulation
        # the prices the search bounds cost with (none: every shape searched to its answer)
        self.prices = dict(prices) if prices is not None and not exhaustive else None
        if concurrent_shapes < 1:
            raise ConfigError(f"concurrent_shapes: must be >= 1, got {concurrent_shapes}")
        self.concurrent_shapes = concurrent_shapes
        self.best_usd_per_hour: float | None = None

    def _usd_per_hour(self, shape: Shape, replicas: int) -> float:
        assert self.prices is not None
        return replicas * shape.tensor_parallel_size * price_for(self.prices, shape.gpu_name)

    def _affordable(self, shape: Shape) -> int:
        """The most replicas of ``shape`` that cost no more than the cheapest deployment found
        so far (``max_replicas`` without prices or before one is found)."""
        if self.prices is None or self.best_usd_per_hour is None:
            return self.max_replicas
        per_replica = self._usd_per_hour(shape, 1)
        return min(self.max_replicas, int(math.floor(self.best_usd_per_hour / per_replica * (1 + 1e-12))))

    # ------------------------------------------------------------------ configs
    def shape_config(self, shape: Shape) -> RunConfig:
        server: dict[str, Any] = {}
        if shape.max_num_seqs is not None:
            server["max_num_seqs"] = shape.max_num_seqs
        if shape.max_num_batched_tokens is not None:
            server["max_num_batched_tokens"] = shape.max_num_batched_tokens
        return with_overrides(self.base, {"gpu": shape.gpu, "tensor_parallel_size": shape.tensor_parallel_size, "server": server})

    def fleet_config(self, one: RunConfig, shape: Shape, replicas: int, num_requests: int) -> RunConfig:
        cluster: dict[str, Any] = {"groups": [{"name": shape.label, "replicas": replicas}]}
        if self.router:
            cluster["router"] = self.router
        if self.admission:
            cluster["admission"] = self.admission
        over = {"cluster": cluster, "arrival": {"strategy": self.strategy, "rate_rps": self.rate_rps}, "workload": {"num_requests": num_requests}}
        return with_overrides(one, over)

    # ------------------------------------------------------------------ search
    def _search(self, shape: Shape, out: ShapePlan) -> Needs:
        from sim.core.simulation import Simulation

        label = shape.label
        try:
            one = self.shape_config(shape)
            probe = Simulation(one)
        except ConfigError as err:
            out.status, out.reason = "excluded", str(err)
            return
        reason = _longest_request_reason(probe)
        if reason:
            out.status, out.reason = "excluded", f"the workload's longest request cannot be served: {reason}"
            return
        out.batch1 = b1 = batch1_bounds(probe)
        missed = [f"{k} >= {b1[k]:.1f} > {getattr(self.slo, k):g}" for k in SLO_KEYS if getattr(self.slo, k) is not None and b1[k] > getattr(self.slo, k)]
        if missed:
            out.status, out.reason = "pruned", "even one request alone misses the SLOs (batch-1 bound): " + "; ".join(missed)
            return
        slo = self.slo

        def requests_for(rate_rps: float) -> int:
            """Requests of a run at ``rate_rps``: the config's, or more, so that the arrival
            window spans ``WINDOW_BATCH1_E2E`` batch-1 E2E latencies (one replica and fleets alike)."""
            return max(int(one.workload.num_requests or 0), int(math.ceil(WINDOW_BATCH1_E2E * b1["e2e_mean_s"] * rate_rps)))

        # one replica's capacity under the SLOs
        # enough requests to hold the seats full for a while: its full-batch capacity bounds every rate
        thr_requests = max(int(one.workload.num_requests or 0), THROUGHPUT_SEATS_FACTOR * one.server.max_num_seqs)
        thr_cfg = with_overrides(point_config(one, "throughput"), {"workload": {"num_requests": thr_requests}, "stop_when_slo_missed": False})
        (thr,) = yield [thr_cfg]
        hi = float(thr.summary["requests_per_s"])
        if not hi > 0:
            out.status, out.reason = "misses", "the throughput run finished no request"
            return
        batch_cap = full_batch_capacity_rps(thr)
        lo, best = 0.0, None

        def trial(rates: list[float]) -> Generator[list[RunConfig], list[SimResult], list[tuple[float, bool]]]:
            run = [r for r in rates if not (batch_cap == batch_cap and r > batch_cap)]
            results = (yield [with_overrides(point_config(one, self.strategy, r), {"workload": {"num_requests": requests_for(r)}}) for r in run]) if run else []
            by_rate = dict(zip(run, results))
            outcome = []
            for r in rates:
                if r in by_rate:
                    viol = capacity_violations(by_rate[r], slo, batch_cap)
                    out.evaluations.append(Evaluation(label, "capacity", 1, r, not viol, viol, by_rate[r].summary))
                else:
                    viol = [f"above the full-batch capacity ({batch_cap:.4g} req/s); not simulated"]
                outcome.append((r, not viol))
            return outcome

        upper = hi
        for round_index in range(CAPACITY_ROUNDS):
            k = CAPACITY_POINTS
            rates = [upper * (i + 1) / k for i in range(k)] if round_index == 0 else [lo + (hi - lo) * (i + 1) / (k + 1) for i in range(k)]
            outcome = yield from trial(rates)
            failing = [r for r, ok in outcome if not ok]
            if failing:
                hi = min(failing)
            passing = [r for r, ok in outcome if ok and (not failing or r < hi)]
            if passing and max(passing) > lo:
                lo = best = max(passing)
            if not failing and round_index == 0:
                rate = upper
                for _ in range(CAPACITY_EXTENSIONS):
                    rate *= 2
                    ((r, ok),) = yield from trial([rate])
                    if not ok:
                        hi = r
                        break
                    lo = best = r
                else:
                    out.notes.append(f"one replica meets the SLOs up to {rate:.4g} req/s, the highest rate tried")
                    break
            if hi - lo <= CAPACITY_TOLERANCE * hi:
                break
        if best is None:
            out.status, out.reason = "misses", "one replica meets the SLOs at no rate tried"
            return
        out.capacity_rps = best
        out.full_batch_capacity_rps = batch_cap if batch_cap == batch_cap else None
        yield READY  # the driver resumes the fleet stage in order of estimated cost

        # the fewest replicas on the point estimate, checked by fleet simulations
        num_requests = requests_for(self.rate_rps)
        passed: dict[int, bool] = {}
        sizes: dict[int, int] = {}  # requests of each count's fleet run (more after a too-short rerun)

        def check(counts: list[int]) -> Generator[list[RunConfig], list[SimResult], None]:
            todo = [n for n in dict.fromkeys(counts) if n not in passed]
            results = (yield [self.fleet_config(one, shape, n, num_requests) for n in todo]) if todo else []
            for n, res in zip(todo, results):
                viol = capacity_violations(res, slo)
                for _ in range(TOO_SHORT_RERUNS):
                    if not viol or not all(v.startswith(TOO_SHORT) for v in viol):
                        break
                    # failing only for a window too short to judge is no verdict: rerun longer
                    fin = res.requests["status"] == "finished"
                    e2e_s = float(res.requests.loc[fin, "e2e_s"].mean())
                    more = max(2 * int(res.config.workload.num_requests or 0), int(math.ceil(2 * MIN_WINDOW_E2E * e2e_s * self.rate_rps)))
                    (res,) = yield [self.fleet_config(one, shape, n, more)]
                    viol = capacity_violations(res, slo)
                sizes[n] = int(res.config.workload.num_requests or num_requests)
                passed[n] = not viol
                out.evaluations.append(Evaluation(label, "fleet", n, self.rate_rps, not viol, viol, res.summary))
                # goodput at the offered rate: the share of requests meeting the per-request
                # SLOs, times the rate (a run's own span includes its drain)
                share = float(meets_per_request_slo(res, slo).mean()) if len(res.requests) else math.nan
                df = res.requests
                served = float(df.loc[df["status"] == "finished", "output_tokens"].sum() / len(df)) if len(df) else math.nan
                out.fleet[n] = {**res.summary, "goodput_rps": self.rate_rps * share, "served_output_tokens_per_s": self.rate_rps * served}
                out.results[n] = res

        def fewest(crit: Callable[[int], bool], n0: int, floor: int) -> Generator[list[RunConfig], list[SimResult], int | None]:
            """The fewest count >= ``floor`` meeting ``crit`` (counts below ``floor`` are known to
            fail), assuming a count that passes is not followed by a larger one that fails:
            ``n0`` and ``n0 − 1`` together, then bisection below them, or doubling steps up and
            bisection back. The answer comes with the count below it checked and failing (or
            at the floor). None when no count up to the limit (``max_replicas``, or what costs
            no more than the cheapest deployment found) passes."""
            limit = min(self.max_replicas, self._affordable(shape))
            if floor > limit:
                return None
            n0 = min(n0, limit)
            yield from check([n0, n0 - 1] if n0 - 1 >= floor else [n0])
            # bracket the answer: lo_n fails (or is below the floor), hi_n passes
            if crit(n0):
                if n0 - 1 < floor or not crit(n0 - 1):
                    return n0
                lo_n, hi_n = floor - 1, n0 - 1
            else:
                lo_n, step = n0, 1
                while True:
                    if lo_n >= limit:
                        return None
                    hi_n = min(limit, lo_n + step)
                    yield from check([hi_n])
                    if crit(hi_n):
                        break
                    lo_n, step = hi_n, step * 2
            while hi_n - lo_n > 1:
                mid = (lo_n + hi_n) // 2
                yield from check([mid])
                if crit(mid):
                    hi_n = mid
                else:
                    lo_n = mid
            return hi_n

        n0 = min(self.max_replicas, max(1, math.ceil(self.rate_rps / best)))
        n = yield from fewest(lambda m: passed[m], n0, 1)
        if n is None:
            afford = self._affordable(shape)
            if afford < self.max_replicas:
                out.status = "dominated"
                out.reason = (
                    f"{afford} replicas (the most that cost no more than the cheapest deployment found, ${self.best_usd_per_hour:,.2f}/h) miss the SLOs"
                )
            else:
                out.status, out.reason = "misses", f"{self.max_replicas} replicas do not meet the SLOs at {self.rate_rps:g} req/s"
            return
        out.replicas_point = n

        # the upper bounds of the prediction intervals
        cal = calibration_for(one) if self.calibration_name else None
        n_boot = self.interval_replicates
        if cal is None or (not cal.get("bootstrap") and not cal.get("residuals_log")):
            out.notes.append("no prediction intervals (no calibration): the point estimate decides")
            out.status, out.replicas = "meets", n
            out.bounds[n] = {k: (out.fleet[n][k], out.fleet[n][k]) for k in SLO_KEYS}
            return

        def spread_at(m: int) -> Generator[list[RunConfig], list[SimResult], dict[str, list[float]]]:
            """Log ratios replicate / point of each SLO metric, from the calibration's
            bootstrap replicates of the fleet of ``m`` (simulated here)."""
            # replicates run to the end: their p99s are samples of the spread, not verdicts
            full = with_overrides(self.fleet_config(one, shape, m, sizes[m]), {"stop_when_slo_missed": False})
            reps = interval_configs(full, cal, n_boot)
            rep_results = (yield reps) if reps else []
            for res in rep_results:
                viol = capacity_violations(res, slo)
                out.evaluations.append(Evaluation(label, "replicate", m, self.rate_rps, not viol, viol, res.summary))
            return {k: _log_ratios(out.fleet[m].get(k), [r.summary.get(k) for r in rep_results]) for k in SLO_KEYS}

        spread = yield from spread_at(n)
        m: int | None = n
        for _ in range(SAFE_SEARCH_ROUNDS):
            assert m is not None
            out.bounds[m] = self._bounds(out.fleet[m], spread, cal)
            if passed[m] and self._bounds_meet(out.bounds[m]):
                out.replicas, out.status = m, "meets"
                return
            # the spread measured at m stands for its neighbours: the fewest larger count
            # whose point run and bounds pass, then checked with its own replicates
            s_now = spread
            m = yield from fewest(lambda c: passed[c] and self._bounds_meet(self._bounds(out.fleet[c], s_now, cal)), m + 1, m + 1)
            if m is None:
                break
            spread = yield from spread_at(m)
        out.status = "at risk"
        tried = max(c for c in out.bounds) if out.bounds else n
        limit = min(self.max_replicas, self._affordable(shape))
        why = "" if limit >= self.max_replicas else f" (more would cost more than the cheapest deployment found, ${self.best_usd_per_hour:,.2f}/h)"
        out.reason = f"the point estimate meets the SLOs with {n} replicas; the {self.level:.0%} upper bounds did not with up to {max(tried, limit if why else tried)}{why}"

    def _bounds(self, center: Mapping[str, Any], spread: Mapping[str, list[float]], cal: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
        """(lo, hi) of each SLO metric: ``center``'s value × exp(replicate spread + the
        calibration's CV residual of the matching mean + the transfer spread, if any)."""
        from sim.cost.calibration import TRANSFER_LOG_SIGMA

        resid = cal.get("residuals_log") or {}
        extra = TRANSFER_LOG_SIGMA if cal.get("transferred_from") else 0.0
        return {
            key: interval_from_samples(float(center.get(key, math.nan)), spread.get(key, []), resid.get(BOUND_RESIDUALS[key], []), self.level, extra)
            for key in SLO_KEYS
        }

    def _bounds_meet(self, bounds: Mapping[str, tuple[float, float]]) -> bool:
        for key in SLO_KEYS:
            limit = getattr(self.slo, key)
            if limit is not None and not bounds[key][1] <= limit:
                return False
        return True

    # ------------------------------------------------------------------ driver
    def run(self, run_many: RunMany) -> PlanResult:
        """Search every shape; simulations go through ``run_many`` in batches (a config shared
        by two searches runs once). Deterministic: same inputs ⇒ same result, whatever the
        executor or worker count."""
        plans = [ShapePlan(s, "misses") for s in self.shapes]
        gens: dict[int, Needs] = {i: self._search(s, plans[i]) for i, s in enumerate(self.shapes)}
        needs: dict[int, list[RunConfig]] = {}
        parked: dict[int, tuple[float, str]] = {}  # ready for the fleet stage: (estimated cost, label)
        in_fleet: set[int] = set()

        def advance(i: int, value: list[SimResult] | None) -> None:
            try:
                nxt = next(gens[i]) if value is None else gens[i].send(value)
            except StopIteration:
                in_fleet.discard(i)
                p = plans[i]
                if p.status == "meets" and p.replicas is not None and self.prices is not None:
                    cost = self._usd_per_hour(p.shape, p.replicas)
                    if self.best_usd_per_hour is None or cost < self.best_usd_per_hour:
                        self.best_usd_per_hour = cost
                return
            if nxt is READY:
                p = plans[i]
                n_est = max(1, math.ceil(self.rate_rps / p.capacity_rps)) if p.capacity_rps else self.max_replicas
                cost = self._usd_per_hour(p.shape, n_est) if self.prices is not None else 0.0
                parked[i] = (cost, p.shape.label)
            else:
                needs[i] = nxt

        for i in range(len(self.shapes)):
            advance(i, None)
        while needs or parked:
            # start fleet stages, cheapest estimate first, while slots are free (all at once without prices)
            while parked and (self.prices is None or len(in_fleet) < self.concurrent_shapes or not needs):
                i = min(parked, key=lambda j: parked[j])
                del parked[i]
                p = plans[i]
                if self.prices is not None and self.best_usd_per_hour is not None:
                    fb = p.full_batch_capacity_rps
                    n_min = max(1, math.ceil(self.rate_rps / fb)) if fb else 1
                    if self._usd_per_hour(p.shape, n_min) > self.best_usd_per_hour:
                        p.status = "dominated"
                        p.reason = (
                            f"needs at least {n_min} replica{'s' if n_min != 1 else ''} (rate / full-batch capacity {fb:.3g} req/s), "
                            f"${self._usd_per_hour(p.shape, n_min):,.2f}/h: "
                            f"more than the cheapest deployment found (${self.best_usd_per_hour:,.2f}/h)"
                        )
                        gens[i].close()
                        continue
                in_fleet.add(i)
                advance(i, [])
            if not needs:
                continue
            batch = dict(needs)
            needs.clear()
            keys = {i: [c.model_dump_json() for c in cfgs] for i, cfgs in batch.items()}
            todo: dict[str, RunConfig] = {}
            for i, cfgs in batch.items():
                for k, c in zip(keys[i], cfgs):
                    todo.setdefault(k, c)
            done = dict(zip(todo, run_many(list(todo.values())))) if todo else {}
            self.num_simulations += len(todo)
            for i in sorted(batch):
                advance(i, [done[k] for k in keys[i]])
        router = self.router.get("policy", "round-robin") if self.router else "round-robin"
        return PlanResult(self.rate_rps, self.slo, self.level, router, plans, self.base, self.calibration_name, self.num_simulations)


def _row(p: ShapePlan, replicas: int, status: str, price: float, slo: SloConfig) -> dict[str, Any]:
    s = p.fleet[replicas]
    b = p.bounds.get(replicas, {})
    gpus = replicas * p.shape.tensor_parallel_size
    usd_h = gpus * price
    out_tok_s = float(s.get("served_output_tokens_per_s", math.nan))
    tpot_mean = float(s.get("tpot_mean_ms", math.nan))
    margins = []
    for key in SLO_KEYS:
        limit = getattr(slo, key)
        if limit is not None:
            hi = b.get(key, (math.nan, float(s[key])))[1]
            margins.append((limit - hi) / limit)
    return {
        "shape": p.shape.label,
        "gpu": p.shape.gpu_name,
        "tensor_parallel_size": p.shape.tensor_parallel_size,
        "max_num_seqs": p.shape.max_num_seqs,
        "max_num_batched_tokens": p.shape.max_num_batched_tokens,
        "status": status,
        "replicas": replicas,
        "num_gpus": gpus,
        "usd_per_gpu_hour": price,
        "usd_per_hour": usd_h,
        "usd_per_million_output_tokens": usd_h / (out_tok_s * 3600) * 1e6 if out_tok_s > 0 else math.nan,
        "goodput_rps": float(s["goodput_rps"]),
        "output_tokens_per_s": out_tok_s,
        "output_tokens_per_s_per_gpu": out_tok_s / gpus if gpus else math.nan,
        "output_tokens_per_s_per_user": 1e3 / tpot_mean if tpot_mean > 0 else math.nan,
        **{key: float(s[key]) for key in SLO_KEYS},
        **{f"{key.removesuffix('_ms')}_hi_ms": b[key][1] if key in b else math.nan for key in SLO_KEYS},
        "slo_margin": min(margins) if margins else math.nan,
        "single_replica_capacity_rps": p.capacity_rps,
        "reason": p.reason if status != "meets" else "",
    }


def rank(result: PlanResult, prices: Mapping[str, float]):
    """The deployments, cheapest first (a pandas DataFrame): each shape that meets the SLOs at
    its count (status ``meets``), the cheaper point-estimate count of a shape whose bound needs
    more (``at risk``), and the shapes that cannot (``misses``, ``pruned``, ``excluded``, no
    count) with their reason last. ``usd_per_hour`` = GPUs × price; ``slo_margin`` = the
    smallest (bound − upper end) / bound over the SLOs (≥ 0 when met). Ties break by shape label."""
    import pandas as pd

    rows, rest = [], []
    for p in result.shapes:
        if p.status in ("meets", "at risk") and p.replicas_point is not None:
            price = price_for(prices, p.shape.gpu_name)
            if p.status == "meets" and p.replicas is not None:
                rows.append(_row(p, p.replicas, "meets", price, result.slo))
            if p.replicas is None or p.replicas_point < p.replicas:
                rows.append(_row(p, p.replicas_point, "at risk", price, result.slo))
        else:
            rest.append(
                {
                    "shape": p.shape.label,
                    "gpu": p.shape.gpu_name,
                    "tensor_parallel_size": p.shape.tensor_parallel_size,
                    "max_num_seqs": p.shape.max_num_seqs,
                    "max_num_batched_tokens": p.shape.max_num_batched_tokens,
                    "status": p.status,
                    "single_replica_capacity_rps": p.capacity_rps,
                    "reason": p.reason,
                }
            )
    rows.sort(key=lambda r: (r["status"] != "meets", r["usd_per_hour"], r["shape"]))
    rest.sort(key=lambda r: (STATUSES.index(r["status"]), r["shape"]))
    df = pd.DataFrame(rows + rest)
    if rows and rest:
        df = df[list(rows[0])]
    return df.reset_index(drop=True)


def shapes_for(gpus: Sequence[str], tps: Sequence[int], seqs: Sequence[int | None] = (None,), mbts: Sequence[int | None] = (None,)) -> list[Shape]:
    """The cross product GPU × TP × max_num_seqs × max_num_batched_tokens (None = the config's)."""
    for tp in tps:
        if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
            raise ConfigError(f"--tp: tensor-parallel sizes must be positive integers, got {tp!r}")
    for name, vals in (("--max-num-seqs", seqs), ("--max-num-batched-tokens", mbts)):
        for v in vals:
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"{name}: values must be positive integers, got {v!r}")
    if not gpus:
        raise ConfigError("--gpus: give at least one GPU")
    if not tps:
        raise ConfigError("--tp: give at least one tensor-parallel size")
    from sim.catalogue.hardware import resolve_gpu

    named = []
    for g in gpus:
        spec = resolve_gpu(g)  # ConfigError names an unknown GPU or a bad GPU file
        is_file = str(g).lower().endswith((".yaml", ".yml"))
        named.append((g if is_file else spec.name, spec.name))
    return [Shape(g, tp, s, m, name) for g, name in named for tp in tps for s in (seqs or (None,)) for m in (mbts or (None,))]


def example_prices() -> dict[str, float]:
    """The shipped example prices (``sim/data/prices-example.yaml``: one provider's list
    prices with their source and date; they go stale)."""
    from importlib import resources

    import yaml

    text = resources.files("sim").joinpath("data/prices-example.yaml").read_text()
    return parse_prices(yaml.safe_load(text), "the shipped example prices")


def resolve_prices(prices: Mapping[str, Any] | None) -> dict[str, float]:
    """USD per GPU-hour from ``{"H100": 2.5, …}``, a prices-file mapping (``gpus: …``) or None
    (:func:`example_prices`)."""
    if prices is None:
        return example_prices()
    return parse_prices(prices if "gpus" in prices else {"gpus": dict(prices)})


def planning_config(cfg: RunConfig, router: str | None = None) -> RunConfig:
    """``cfg`` made ready for :class:`Planner`: ``router`` (if given) as its fleets' router, and
    arrivals that are not an open loop at a rate replaced by Poisson ones (the planner
    provisions for a rate)."""
    if router is not None:
        cluster = cfg.cluster.model_dump(mode="json") if cfg.cluster is not None else {"groups": [{}]}
        cluster.setdefault("router", {})["policy"] = router
        cfg = with_overrides(cfg, {"cluster": cluster})
    if cfg.arrival.strategy not in OPEN_LOOP_STRATEGIES:
        cfg = with_overrides(cfg, {"arrival": {"strategy": "poisson", "concurrency": None}})
    return cfg


def run_plan(
    cfg: RunConfig,
    shapes: Sequence[Shape],
    prices: Mapping[str, float],
    *,
    run_many: RunMany,
    level: float = DEFAULT_LEVEL,
    interval_replicates: int = DEFAULT_INTERVAL_REPLICATES,
    max_replicas: int = DEFAULT_MAX_REPLICAS,
    exhaustive: bool = False,
    concurrent_shapes: int = 2,
):
    """Plan ``cfg`` (its rate, SLOs, workload, server and cost settings) over ``shapes`` and
    rank the deployments at ``prices`` (USD per GPU-hour by GPU name): ``(PlanResult, the
    ranked DataFrame of`` :func:`rank` ``)``. A shape without a price is a ConfigError before
    anything is simulated; ``exhaustive`` searches every shape to its answer (no branch and
    bound on cost)."""
    planner = Planner(
        cfg,
        shapes,
        level=level,
        interval_replicates=interval_replicates,
        max_replicas=max_replicas,
        prices=prices,
        exhaustive=exhaustive,
        concurrent_shapes=concurrent_shapes,
    )
    result = planner.run(run_many)
    return result, rank(result, prices)
