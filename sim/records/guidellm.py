"""Export simulation results as a guidellm-compatible benchmark report (``benchmarks.json``).

Matched schema: **guidellm 0.8.1**, ``GenerativeBenchmarksReport`` in
``guidellm/benchmark/schemas/report.py`` (report ``metadata.version == 2``), with
``GenerativeBenchmark`` (``benchmark/schemas/benchmark.py``), ``GenerativeMetrics`` and
``SchedulerMetrics`` (``benchmark/schemas/metrics.py``), ``BenchmarkConfig``
(``benchmark/schemas/base.py``), ``GenerativeRequestStats`` (``schemas/base/request_stats.py``)
and ``DistributionSummary`` / ``StatusDistributionSummary`` / ``Percentiles``
(``schemas/base/statistics.py``). Validated against the real loader:
``GenerativeBenchmarksReport.load_file`` of guidellm 0.8.1 (installed with ``--no-deps`` in a
throw-away venv, torch stubbed out in-process because only guidellm's data loader imports it)
accepts our output; see ``scripts/check_guidellm_compat.py`` and the optional test in
``tests/test_guidellm_report.py``. guidellm is *not* a dependency of servesim.

Statistics (guidellm's ``DistributionSummary`` and friends) are :mod:`sim.records.guidellm_stats`.

:func:`build_report` is pure (no I/O) and returns a JSON-serialisable dict; writing it with
``json.dumps(report)`` gives a file guidellm loads. Same run ⇒ byte-identical output.

Mapping
-------
* One :class:`~sim.core.simulation.SimResult` → one ``GenerativeBenchmark``; its index is
  ``config.run_index``; ids are deterministic (``servesim-<index>``), not random UUIDs.
* Status: finished → ``successful``; rejected → ``errored``; timed_out (the client's timeout,
  ``arrival.request_timeout_s``) → ``errored``, as guidellm records a request its HTTP client
  gave up on; in_flight (cut by the horizon) → ``incomplete``; not_sent requests were never
  issued and appear nowhere (guidellm never records unsent requests either).
* Time: simulated seconds are written as epoch timestamps with epoch 0 (so ``start_time`` is
  ``0.0`` plus the first arrival, not wall-clock time). The measurement window is first
  arrival → last finish (servesim's ``duration_s``); no warm-up/cool-down is cut.
* Per request: ``request_start`` = arrival (the request reaches the server; servesim has no
  client/network), ``first_token_iteration`` = first token, ``last_token_iteration`` =
  ``request_end`` = finish, ``token_iterations`` = output tokens (vLLM streams one token per
  step per request). Rejected requests carry ``request_end`` = ``resolve_end`` = arrival (the
  simulator rejects on admission), in-flight ones = the simulation end; timed-out ones end when
  the client gave up, with the first token (if it came) and the output tokens delivered before.
* Strategies: synchronous, constant, poisson, throughput, concurrent map 1:1
  (``rate_rps`` → ``rate``; ``concurrency`` → ``streams`` / ``max_concurrency``).
  ``replay`` → guidellm ``trace`` (send at recorded offsets, ``time_scale`` 1).
  ``open-loop-at-measured-rate`` → guidellm ``constant`` at ``rate_rps`` (the only difference:
  servesim sends the first request at 1/rate instead of 0).

Metric definitions (guidellm's, reproduced here; they are *not* always servesim's):
* Percentiles are guidellm's: values are turned into a weighted PDF and ``pXX`` is the first
  value whose cumulative probability reaches XX% (an inverted-CDF order statistic). servesim's
  ``summary`` uses numpy linear interpolation, so ``pXX`` can differ slightly; means agree.
* ``time_to_first_token_ms`` — per-request TTFT (= servesim ``ttft``; same mean).
* ``inter_token_latency_ms`` — per-request (last − first token)/(output − 1) weighted by
  output − 1 (= vLLM TPOT = servesim ``tpot_s``); its mean equals servesim's all-gaps ITL mean,
  percentiles are of per-request averages, not of individual gaps.
* ``time_per_output_token_ms`` — per-request E2E/output weighted by output tokens (so its
  mean is Σe2e/Σoutput, not servesim's unweighted ``time_per_output_token_mean_ms``).
* ``request_latency`` — seconds, E2E. Errored/incomplete contribute 0.0 as in guidellm.
* ``requests_per_second`` / ``*_tokens_per_second`` / ``request_concurrency`` — guidellm's
  time-weighted rate and concurrency distributions over the measurement window; the mean of
  ``requests_per_second.successful`` equals finished/duration (servesim ``requests_per_s``).
* No confidence intervals are reported (``config.confidence`` is ``None``), and metrics that
  a simulator cannot observe (text words/characters, images, audio, websocket round trips,
  scheduler-internal delays) are ``None``/empty or ``-1.0`` where the schema demands a number
  — the same sentinel guidellm writes when it has no measurement.
"""

from __future__ import annotations

import math
import platform
from typing import Any

import numpy as np

from sim.records.guidellm_stats import distribution_summary, rate_summary_unit_events, status_summary
from sim.rng import RandomStreams
from sim.version import __version__ as SERVESIM_VERSION

__all__ = ["DEFAULT_SAMPLE_REQUESTS", "GUIDELLM_SCHEMA_VERSION", "GUIDELLM_VERSION", "build_report", "distribution_summary"]
GUIDELLM_VERSION = "0.8.1"
GUIDELLM_SCHEMA_VERSION = 2
_STATUS_GROUP = {"finished": "successful", "in_flight": "incomplete", "rejected": "errored", "timed_out": "errored"}
_GUIDELLM_STATUS = {"finished": "completed", "in_flight": "cancelled", "rejected": "errored", "timed_out": "errored"}


def _f(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


class _Records(list):
    """Per-request records, JSON-ready as built (Python ints, finite floats, str, None):
    :func:`_jsonable` passes them through instead of walking every field again."""


class _Req:
    """One request's guidellm timings and the derived per-request metrics guidellm computes."""

    def __init__(self, row: Any, end_s: float) -> None:
        self.status = row.status
        self.id = int(row.request_id)
        self.prompt = int(row.prompt_tokens)
        self.start = float(row.arrival_s)
        if not math.isfinite(self.start):
            raise ValueError(f"request {self.id}: arrival_s {self.start} is not a finite time")
        self.first = _f(row.first_token_s) if row.status == "finished" else None
        finish = _f(row.finish_s)
        self.last: float | None
        self.end: float
        if row.status == "finished":
            self.output = int(row.output_tokens)
            self.last = finish
            self.end = finish if finish is not None else self.start  # a finished request has a finish time
        elif row.status == "rejected":
            self.output = 0
            self.last = None
            self.end = finish if finish is not None else self.start
        elif row.status == "timed_out":  # the client gave up at finish_s, keeping what it received
            self.first = _f(row.first_token_s)
            self.output = int(row.generated_tokens)
            self.last = None
            self.end = finish if finish is not None else self.start
        else:  # in flight at the horizon: cancelled by the end of the run, as guidellm does
            self.output = 0
            self.last = None
            self.end = end_s
        # a cancelled request never got a response: request_end unset, resolve_end = cancel time
        self.request_end = None if row.status == "in_flight" else self.end
        self.iterations = self.output
        self.cached = int(getattr(row, "cached_prompt_tokens", 0) or 0)
        self.reason = str(getattr(row, "reject_reason", "") or "")

    # guidellm GenerativeRequestStats computed fields
    @property
    def latency(self) -> float | None:
        return None if self.request_end is None else self.request_end - self.start

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first is None else 1000 * (self.first - self.start)

    @property
    def tpot_ms(self) -> float | None:
        last: float = self.last if self.last is not None else self.end
        return None if not self.output else 1000 * (last - self.start) / self.output

    @property
    def itl_ms(self) -> float | None:
        if self.first is None or self.last is None or self.output <= 1:
            return None
        return 1000 * (self.last - self.first) / (self.output - 1)

    @property
    def iter_tokens_per_iteration(self) -> float | None:
        if self.output <= 1 or self.iterations <= 1:
            return None
        return (self.output - 1.0) / (self.iterations - 1.0)

    def iter_tokens_timings(self) -> list[tuple[float, float]]:
        tpi = self.iter_tokens_per_iteration
        if self.first is None or self.last is None or tpi is None or self.iterations <= 1:
            return []
        times = np.linspace(self.first, self.last, num=self.iterations)[1:]
        return [(t, tpi) for t in times.tolist()]

    def output_tokens_timings(self) -> list[tuple[float, float]]:
        if self.first is None or self.last is None or self.iterations <= 1:
            return [(self.last if self.last is not None else self.end, float(self.output))]
        return [(self.first, 1.0 * bool(self.output)), *self.iter_tokens_timings()]

    def prompt_tokens_timing(self) -> tuple[float, float]:
        return (self.first if self.first is not None else self.end, float(self.prompt))

    def record(self, run_id: str, index: int) -> dict[str, Any]:
        finished = self.status == "finished"
        timings = {
            "targeted_start": self.start,
            "queued": self.start,
            "dequeued": self.start,
            "scheduled_at": self.start,
            "resolve_start": self.start,
            "request_start": self.start,
            "first_request_iteration": self.start,
            "first_token_iteration": self.first,
            "first_output_token_iteration": self.first,
            "last_token_iteration": self.last,
            "last_request_iteration": self.last,
            "request_iterations": 1,
            "token_iterations": self.iterations,
            "request_end": self.request_end,
            "resolve_end": self.end,
            "finalized": self.end,
        }
        return {
            "type_": "generative_request_stats",
            "request_id": str(self.id),
            "info": {
                "request_id": str(self.id),
                "status": _GUIDELLM_STATUS[self.status],
                "scheduler_node_id": 0,
                "scheduler_process_id": 0,
                "scheduler_start_time": 0.0,
                "timings": timings,
                "error": self._error(),
            },
            "input_metrics": {"text_tokens": self.prompt, "cached_tokens": self.cached},
            "output_metrics": {"text_tokens": self.output if finished or self.status == "timed_out" else 0},
        }

    def _error(self) -> str | None:
        if self.status == "rejected":
            return f"rejected by the simulated server: {self.reason or 'unknown'}"
        if self.status == "timed_out":
            return f"timed out by the simulated client: {self.reason}"
        return None


def _strategy(arrival: Any) -> dict[str, Any]:
    """guidellm ``SchedulingStrategy`` dict for a servesim arrival config."""
    s = arrival.strategy
    if s == "synchronous":
        return {"type_": "synchronous", "worker_count": None, "max_concurrency": None}
    if s == "concurrent":
        return {"type_": "concurrent", "worker_count": None, "max_concurrency": None, "streams": int(arrival.concurrency), "rampup_duration": 0.0}
    if s == "throughput":
        return {"type_": "throughput", "worker_count": None, "max_concurrency": arrival.concurrency, "rampup_duration": 0.0}
    if s in ("constant", "open-loop-at-measured-rate"):
        return {"type_": "constant", "worker_count": None, "max_concurrency": None, "rate": float(arrival.rate_rps), "rampup_duration": 0.0}
    if s == "poisson":
        return {"type_": "poisson", "worker_count": None, "max_concurrency": None, "rate": float(arrival.rate_rps), "random_seed": 42}
    if s == "replay":
        return {"type_": "trace", "worker_count": None, "max_concurrency": None, "time_scale": 1.0}
    raise ValueError(f"arrival.strategy {s!r} has no guidellm equivalent")


def _profile(results: list) -> dict[str, Any]:
    """guidellm ``ProfileArgs`` for the report-level ``config.spec.profile``."""
    # guidellm has one profile per report: take the first benchmark's; every benchmark
    # still carries its own exact strategy in ``config.strategy``
    kind = _strategy(results[0].config.arrival)["type_"] if results else "synchronous"
    if kind in ("constant", "poisson"):
        rates = [float(r.config.arrival.rate_rps) for r in results if _strategy(r.config.arrival)["type_"] == kind]
        prof: dict[str, Any] = {"kind": kind, "rate": rates}
    elif kind == "concurrent":
        prof = {"kind": kind, "streams": [int(r.config.arrival.concurrency) for r in results if r.config.arrival.strategy == "concurrent"]}
    elif kind == "throughput":
        prof = {"kind": kind, "max_concurrency": results[0].config.arrival.concurrency}
    elif kind == "trace":
        prof = {"kind": "replay"}
    else:
        prof = {"kind": kind}
    return prof


_NONE_SUMMARY_FIELDS = {
    "text": ("tokens", "words", "characters"),
    "image": ("tokens", "images", "pixels", "bytes"),
    "video": ("tokens", "frames", "seconds", "bytes"),
    "audio": ("tokens", "samples", "seconds", "bytes"),
}


def _token_summary(groups: dict[str, list[_Req]], start: float, end: float) -> dict[str, Any]:
    """``GenerativeMetricsSummary`` for text tokens (input = prompt, output = generated)."""

    def timed(r: _Req) -> tuple[float, float, float, float]:
        return (r.start, r.end, float(r.prompt), float(r.output))

    out: dict[str, Any] = {}
    for name, idx in (("input", 2), ("output", 3)):
        vals = {k: [timed(r)[idx] for r in v] for k, v in groups.items()}
        out[name] = status_summary("values", vals)
        out[f"{name}_per_second"] = status_summary("rate", {k: [(r.end, timed(r)[idx]) for r in v] for k, v in groups.items()}, start, end)
        out[f"{name}_concurrency"] = status_summary("concurrency", {k: [(r.start, r.end, timed(r)[idx]) for r in v] for k, v in groups.items()}, start, end)
    out["total"] = status_summary("values", {k: [float(r.prompt + r.output) for r in v] for k, v in groups.items()})
    out["total_per_second"] = status_summary("rate", {k: [(r.end, float(r.prompt + r.output)) for r in v] for k, v in groups.items()}, start, end)
    out["total_concurrency"] = status_summary(
        "concurrency", {k: [(r.start, r.end, float(r.prompt + r.output)) for r in v] for k, v in groups.items()}, start, end
    )
    return out


def _token_timings(reqs: list[_Req]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The concatenation, in request order, of each request's ``prompt_tokens_timing`` (one
    row), ``output_tokens_timings`` and ``iter_tokens_timings``, as (N, 2) arrays of (time,
    weight), and of ``[prompt, *output]`` for ``tokens_per_second`` — the same floats the
    per-request lists give (numpy ``linspace``'s own arithmetic, ``j · step + first`` with the
    last point set to ``last``), built with array operations instead of one tuple per token."""
    n = len(reqs)
    prompt = np.empty((n, 2))
    has_iter = np.zeros(n, dtype=bool)
    first = np.zeros(n)
    last = np.zeros(n)
    iters = np.zeros(n, dtype=np.int64)
    tpi = np.zeros(n)
    single = np.empty((n, 2))  # the one output row of a request without iterations
    lead = np.empty((n, 2))  # (first, 1.0 * bool(output)): the first output row with iterations
    multi = np.zeros(n, dtype=bool)  # output rows = lead + iter rows (else the single row)
    for i, r in enumerate(reqs):
        prompt[i] = (r.first if r.first is not None else r.end, float(r.prompt))
        if r.first is None or r.last is None or r.iterations <= 1:
            single[i] = (r.last if r.last is not None else r.end, float(r.output))
            continue
        multi[i] = True
        lead[i] = (r.first, 1.0 * bool(r.output))
        t = r.iter_tokens_per_iteration
        if t is not None:
            has_iter[i] = True
            first[i], last[i], iters[i], tpi[i] = r.first, r.last, r.iterations, t
    counts = np.where(has_iter, iters - 1, 0)  # iter rows per request
    total = int(counts.sum())
    owner = np.repeat(np.arange(n), counts)
    starts = np.cumsum(counts) - counts
    j = (np.arange(total) - starts[owner] + 1).astype(float)  # 1 .. iterations-1
    div = (iters - 1).astype(float)
    delta = last - first
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.where(has_iter, delta / np.where(div > 0, div, 1.0), 0.0)
    times = j * step[owner] + first[owner]
    ends = starts[counts > 0] + counts[counts > 0] - 1
    times[ends] = last[counts > 0]
    iter_tw = np.column_stack((times, tpi[owner])) if total else np.empty((0, 2))
    # output rows: per request either its single row, or its lead row then its iter rows
    out_counts = np.where(multi, 1 + counts, 1)
    out_starts = np.cumsum(out_counts) - out_counts
    out_tw = np.empty((int(out_counts.sum()), 2))
    out_tw[out_starts[~multi]] = single[~multi]
    out_tw[out_starts[multi]] = lead[multi]
    if total:
        out_tw[out_starts[owner] + 1 + (np.arange(total) - starts[owner])] = iter_tw
    # tokens_per_second: the prompt row, then the output rows, request by request
    all_tw = np.empty((len(out_tw) + n, 2))
    all_starts = out_starts + np.arange(n)
    all_tw[all_starts] = prompt
    rows = np.ones(len(all_tw), dtype=bool)
    rows[all_starts] = False
    all_tw[rows] = out_tw
    return prompt, out_tw, iter_tw, all_tw


def _iter_times(reqs: list[_Req]) -> tuple[np.ndarray, np.ndarray, bool]:
    """Of ``reqs`` (in order): one row per request of its output timings that is not an
    iteration token — ``(last or end, output)`` without iterations, else its first token
    ``(first, 1.0)`` —, the times of every iteration token (after each request's first, the
    same floats as :func:`_token_timings`), and whether every iteration token weighs 1.0
    (``iter_tokens_per_iteration``, always so for servesim's one-token iterations)."""
    n = len(reqs)
    special = np.empty((n, 2))
    first = np.zeros(n)
    last = np.zeros(n)
    iters = np.zeros(n, dtype=np.int64)
    unit = True
    for i, r in enumerate(reqs):
        if r.first is None or r.last is None or r.iterations <= 1:
            special[i] = (r.last if r.last is not None else r.end, float(r.output))
            continue
        special[i] = (r.first, 1.0 * bool(r.output))
        tpi = r.iter_tokens_per_iteration
        if tpi is not None:
            unit = unit and tpi == 1.0
            first[i], last[i], iters[i] = r.first, r.last, r.iterations
    counts = np.where(iters > 1, iters - 1, 0)
    total = int(counts.sum())
    owner = np.repeat(np.arange(n), counts)
    starts = np.cumsum(counts) - counts
    times = (np.arange(total) - starts[owner] + 1).astype(float)  # j = 1 .. iterations-1
    del starts
    div = np.where(counts > 0, counts, 1).astype(float)
    step = np.where(counts > 0, (last - first) / div, 0.0)
    times *= step[owner]
    times += first[owner]
    del owner
    ends = np.cumsum(counts)[counts > 0] - 1
    times[ends] = last[counts > 0]
    return special, times, unit


def _compact_token_metrics(groups: dict[str, list[_Req]], start: float, end: float) -> dict[str, Any] | None:
    """The four per-token metrics (output and total token rates, output and iteration tokens
    per iteration) from the iteration-token times without (N, 2) arrays: the same numbers as
    the array path when only successful requests have iteration tokens and every one weighs
    1.0 (servesim's runs); None otherwise (the caller then takes the array path)."""
    parts = {k: _iter_times(v) for k, v in groups.items()}
    if any(len(parts[k][1]) for k in ("incomplete", "errored")) or not all(p[2] for p in parts.values()):
        return None
    times = parts["successful"][1]
    times.sort()  # in place: the one large array
    n_iter = len(times)
    prompt = {k: np.array([(r.first if r.first is not None else r.end, float(r.prompt)) for r in v]).reshape(-1, 2) for k, v in groups.items()}
    special = {k: parts[k][0] for k in groups}
    empty = np.empty(0)

    def rates(extra: dict[str, np.ndarray]) -> dict[str, Any]:
        out = {k: rate_summary_unit_events(times if k == "successful" else empty, extra[k], start, end) for k in groups}
        all_extra = np.concatenate([extra[k] for k in ("successful", "incomplete", "errored")])
        if not len(groups["incomplete"]) and not len(groups["errored"]):
            out["total"] = {**out["successful"], "percentiles": dict(out["successful"]["percentiles"])}
        else:
            out["total"] = rate_summary_unit_events(times, all_extra, start, end)
        return out

    def per_iteration(values: dict[str, tuple[np.ndarray, int]]) -> dict[str, Any]:
        # (value, weight) pairs: each listed value once, the unit iteration tokens as one pair
        def pairs(vals: np.ndarray, units: int) -> np.ndarray:
            rows = np.column_stack((vals, np.ones(len(vals))))
            return np.vstack((rows, [[1.0, float(units)]])) if units else rows

        out = {k: distribution_summary(pairs(*values[k])) for k in groups}
        all_vals = np.concatenate([values[k][0] for k in ("successful", "incomplete", "errored")])
        out["total"] = distribution_summary(pairs(all_vals, sum(values[k][1] for k in groups)))
        return out

    both = {k: np.vstack((prompt[k], special[k])) for k in groups}
    return {
        "prompt_tokens_per_second": status_summary("rate", prompt, start, end),
        "output_tokens_per_second": rates(special),
        "tokens_per_second": rates(both),
        "output_tokens_per_iteration": per_iteration({k: (special[k][:, 1], n_iter if k == "successful" else 0) for k in groups}),
        "iter_tokens_per_iteration": per_iteration({k: (empty, n_iter if k == "successful" else 0) for k in groups}),
    }


def _metrics(groups: dict[str, list[_Req]], start: float, end: float) -> dict[str, Any]:
    def values(fn) -> dict[str, Any]:
        vals: dict[str, list] = {}
        for k, reqs in groups.items():
            acc: list = []
            for r in reqs:
                v = fn(r)
                if v is None:
                    continue
                acc.extend(v) if isinstance(v, list) else acc.append(v)
            vals[k] = acc
        return status_summary("values", vals)

    def rates(fn) -> dict[str, Any]:
        vals = {}
        for k, reqs in groups.items():
            acc: list = []
            for r in reqs:
                v = fn(r)
                acc.extend(v) if isinstance(v, list) else acc.append(v)
            vals[k] = acc
        return status_summary("rate", vals, start, end)

    n = {k: len(v) for k, v in groups.items()}
    token_metrics = _compact_token_metrics(groups, start, end)
    if token_metrics is None:  # general weights: the (N, 2) arrays of every token timing
        timings = {k: _token_timings(v) for k, v in groups.items()}
        token_metrics = {
            "prompt_tokens_per_second": status_summary("rate", {k: tt[0] for k, tt in timings.items()}, start, end),
            "output_tokens_per_second": status_summary("rate", {k: tt[1] for k, tt in timings.items()}, start, end),
            "tokens_per_second": status_summary("rate", {k: tt[3] for k, tt in timings.items()}, start, end),
            "output_tokens_per_iteration": status_summary("values", {k: tt[1][:, 1].copy() for k, tt in timings.items()}),
            "iter_tokens_per_iteration": status_summary("values", {k: tt[2][:, 1].copy() for k, tt in timings.items()}),
        }
        del timings
    zero = values(lambda r: 0.0)  # metrics guidellm defaults to 0.0 when unmeasured
    text = _token_summary(groups, start, end)
    return {
        "request_totals": {**n, "total": sum(n.values())},
        "requests_per_second": rates(lambda r: r.end),
        "request_concurrency": status_summary("concurrency", {k: [(r.start, r.end) for r in v] for k, v in groups.items()}, start, end),
        "request_latency": values(lambda r: r.latency or 0.0),
        "request_dispatch_delay": None,
        "request_scheduled_latency": None,
        "turn_predecessor_delay": None,
        "turn_scheduling_delay": None,
        "root_dispatch_delay": None,
        "request_streaming_iterations_count": values(lambda r: 1.0),
        "prompt_token_count": values(lambda r: float(r.prompt)),
        "output_token_count": values(lambda r: float(r.output) or 0.0),
        "total_token_count": values(lambda r: float(r.prompt + r.output)),
        "time_to_first_token_ms": values(lambda r: r.ttft_ms or 0.0),
        "time_to_first_output_token_ms": values(lambda r: r.ttft_ms or 0.0),
        "time_per_output_token_ms": values(lambda r: (r.tpot_ms or 0.0, float(r.output))),
        "inter_token_latency_ms": values(lambda r: (r.itl_ms or 0.0, float((r.output or 1) - 1))),
        "time_to_last_round_trip_ms": zero,
        "avg_round_trip_time_ms": zero,
        **token_metrics,
        "text": {"tokens": text, "words": None, "characters": None},
        "image": dict.fromkeys(_NONE_SUMMARY_FIELDS["image"]),
        "video": dict.fromkeys(_NONE_SUMMARY_FIELDS["video"]),
        "audio": dict.fromkeys(_NONE_SUMMARY_FIELDS["audio"]),
        "tool_call": {"tokens": None, "mixed_tokens": None, "count": None},
        "turns": None,
        "slo_attainment": None,
        "slo_determined_requests": 0,
        "request_goodput": None,
    }


def _grouped(res: Any) -> tuple[list[_Req], dict[str, list[_Req]], float, float, float]:
    """(sent requests, their guidellm status groups, request start, request end, measure end)."""
    df = res.requests
    end_s = float(res.derived.get("end_s", 0.0)) if res.derived else 0.0
    sent = df[df["status"] != "not_sent"]
    reqs = [_Req(row, end_s) for row in sent.itertuples(index=False)]
    groups: dict[str, list[_Req]] = {"successful": [], "incomplete": [], "errored": []}
    for r in reqs:
        groups[_STATUS_GROUP[r.status]].append(r)
    request_start = min((r.start for r in reqs), default=0.0)
    request_end = max((r.end for r in reqs), default=request_start)
    # measurement window = servesim's duration_s: first arrival → last finish
    measure_end = max((r.end for r in groups["successful"]), default=request_end)
    return reqs, groups, request_start, request_end, measure_end


EXTRAS_KEY = "guidellm_metrics"


def attach_metrics(res: Any) -> Any:
    """Compute ``res``'s guidellm metrics block now and keep it in ``res.extras`` (for pool
    workers: the report built later in the parent reuses it). Returns ``res``."""
    _, groups, start, _, end = _grouped(res)
    res.extras[EXTRAS_KEY] = _metrics(groups, start, end)
    return res


# Per-request records kept per status group and benchmark (guidellm's ``sample_requests``): the
# metrics always cover every request; past this many records a benchmark lists a uniform
# sample, so a large sweep writes megabytes, not gigabytes (a record is ~0.8 kB of JSON).
DEFAULT_SAMPLE_REQUESTS = 10_000


def _sampled(reqs: list[_Req], limit: int | None, seed: int, status: str) -> list[_Req]:
    """``reqs`` if at most ``limit`` (None: no limit), else ``limit`` of them drawn uniformly
    without replacement (stream ``report.sample.<status>`` of the run's seed), in id order."""
    if limit is None or len(reqs) <= limit:
        return reqs
    rng = RandomStreams(seed).get(f"report.sample.{status}")
    keep = np.sort(rng.choice(len(reqs), size=limit, replace=False))
    return [reqs[i] for i in keep.tolist()]


def _benchmark(res: Any, index: int, run_id: str, model: str, backend_target: str, sample_requests: int | None = DEFAULT_SAMPLE_REQUESTS) -> dict[str, Any]:
    df = res.requests
    reqs, groups, request_start, request_end, measure_end = _grouped(res)
    seed = int(res.config.seed)
    listed = {k: _sampled(v, sample_requests, seed, k) for k, v in groups.items()}
    sampled = any(len(listed[k]) < len(groups[k]) for k in groups)
    fin = groups["successful"]
    strategy = _strategy(res.config.arrival)
    n = {k: len(v) for k, v in groups.items()}
    cfg_dump = res.config.model_dump(mode="json")
    latency_avg = (sum(r.end - r.start for r in fin) / len(fin)) if fin else -1.0  # servesim mean E2E
    return {
        "type_": "generative_benchmark",
        "config": {
            "id_": f"{run_id}-{index}",
            "run_id": run_id,
            "run_index": index,
            "strategy": strategy,
            "constraints": {"max_requests": {"max_num": int(len(df))}},
            "sample_size": sample_requests if sampled else None,
            "prefer_response_metrics": True,
            "slo": None,
            "confidence": None,
            "warnings": [],
            "profile": _profile([res]),
            "requests": {"servesim_workload": cfg_dump["workload"], "seed": cfg_dump["seed"]},
            "backend": {"kind": "servesim", "target": backend_target, "model": model},
            "environment": {"kind": "servesim", "simulated": True, "servesim_config": cfg_dump, "servesim_derived": _jsonable(res.derived)},
        },
        "scheduler_state": {
            "node_id": 0,
            "num_processes": 1,
            "start_time": request_start,
            "end_time": request_end,
            "start_requests_time": request_start,
            "end_requests_time": request_end,
            "end_queuing_time": request_end,
            "end_processing_time": request_end,
            "created_requests": len(reqs),
            "queued_requests": 0,
            "pending_requests": 0,
            "processing_requests": 0,
            "processed_requests": len(reqs),
            "successful_requests": n["successful"],
            "errored_requests": n["errored"],
            "cancelled_requests": n["incomplete"],
        },
        "scheduler_metrics": {
            "start_time": request_start,
            "request_start_time": request_start,
            "measure_start_time": request_start,
            "measure_end_time": measure_end,
            "request_end_time": request_end,
            "end_time": request_end,
            "requests_made": {**n, "total": sum(n.values())},
            "generation_delay": distribution_summary([]),
            "queued_time_avg": -1.0,
            "resolve_start_delay_avg": -1.0,
            "resolve_targeted_start_delay_avg": -1.0,
            "request_start_delay_avg": -1.0,
            "request_targeted_start_delay_avg": -1.0,
            "request_time_avg": latency_avg,
            "resolve_end_delay_avg": -1.0,
            "resolve_time_avg": latency_avg,
            "finalized_delay_avg": -1.0,
            "processed_delay_avg": -1.0,
            "dataset_incomplete": bool(n["incomplete"] or (df["status"] == "not_sent").any()),
            "strategy_type": strategy["type_"],
        },
        "metrics": res.extras.get(EXTRAS_KEY) or _metrics(groups, request_start, measure_end),
        "requests": {
            "successful": _Records(r.record(run_id, index) for r in listed["successful"]),
            "incomplete": _Records(r.record(run_id, index) for r in listed["incomplete"]),
            "errored": _Records(r.record(run_id, index) for r in listed["errored"]),
            "total": None,
        },
        "warnings": [],
    }


def _jsonable(x: Any) -> Any:
    if isinstance(x, _Records):
        return x
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else None
    return x


def build_report(results: list, *, model: str, backend_target: str = "servesim://simulated", sample_requests: int | None = DEFAULT_SAMPLE_REQUESTS) -> dict:
    """A guidellm 0.8.1 ``GenerativeBenchmarksReport`` (as a JSON-serialisable dict).

    ``results``: :class:`~sim.core.simulation.SimResult` objects, one benchmark each, in order.
    ``model``: the model name to record (e.g. the Hugging Face id the run simulates).
    ``sample_requests``: per-request records listed per status group and benchmark, at most
    (a uniform sample beyond, seeded by the run's seed; the benchmark's ``sample_size`` then
    says so); None lists every request. Metrics always cover every request.
    Deterministic: no wall clock, no random ids; the same results give the same dict.
    """
    if sample_requests is not None and sample_requests < 0:
        raise ValueError(f"sample_requests must be >= 0 or None, got {sample_requests}")
    run_id = "servesim"
    benchmarks = [_benchmark(res, i, run_id, model, backend_target, sample_requests) for i, res in enumerate(results)]
    first = results[0].config if results else None
    data: dict[str, Any] = {"kind": "synthetic_text"}
    if first is not None and first.workload.trace is None:
        wl = first.workload
        for key, dist in (("prompt_tokens", wl.prompt_tokens), ("output_tokens", wl.output_tokens)):
            v = dist.value if dist.dist == "fixed" else dist.mean
            if v is not None:
                data[key] = int(round(v))
    report = {
        "metadata": {
            "version": GUIDELLM_SCHEMA_VERSION,
            "guidellm_version": f"servesim-{SERVESIM_VERSION} (guidellm {GUIDELLM_VERSION} schema)",
            "python_version": platform.python_version(),
            "platform": "servesim simulation",
        },
        "config": {
            "metadata": {"labels": {"generator": "servesim", "servesim_version": SERVESIM_VERSION, "simulated": "true", "model": model}},
            "spec": {
                "backend": {"kind": "openai_http", "target": backend_target, "model": model},
                "profile": _profile(results),
                "data": [data],
            },
            "benchmarks": [None],
        },
        "benchmarks": benchmarks,
        "conclusions": [],
    }
    return _jsonable(report)
