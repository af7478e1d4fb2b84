"""Metrics: the sink that records a run, tables of its records, and summaries.

Definitions (times in seconds in records, milliseconds in summaries, as ``_ms`` says):

* TTFT = first token − arrival; E2E = finish − arrival; queue delay = first scheduled − arrival.
* ITL = every gap between consecutive output tokens of a request (preemption gaps included).
* TPOT = (E2E − TTFT) / (output − 1), vLLM's definition; undefined (NaN) for 1-token outputs.
* ``time_per_output_token`` = E2E / output, guidellm's ``time_per_output_token_ms``.
* Latency statistics are over finished requests only. A timed-out request (the client gave
  up, ``arrival.request_timeout_s``) is counted (``num_timed_out``) and has its row, with the
  instant it failed as ``finish_s`` and the output it received (``generated_tokens``).
* Percentiles interpolate linearly between order statistics (numpy ``linear``), as vLLM's
  benchmark scripts do. (guidellm 0.8.1 instead takes the first value whose cumulative share
  reaches the percentile; the guidellm-compatible report applies guidellm's own rule.)

The sink only records; it never decides anything about the simulation.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable
from dataclasses import fields
from operator import attrgetter

import numpy as np
import pandas as pd

from sim.entities import Request, RequestRecord, RequestStatus, StepRecord

PERCENTILES = (50, 90, 95, 99)


def _nan_if_neg(x: float) -> float:
    return x if x >= 0 else math.nan


def request_record(req: Request, status: str | None = None) -> RequestRecord:
    """The outcome record of ``req`` (finished, rejected, timed out or still in flight)."""
    status = status or req.status.value
    arrival = req.arrival_s
    first = _nan_if_neg(req.first_token_s)
    finish = _nan_if_neg(req.finish_s)
    ttft = first - arrival
    e2e = finish - arrival
    # a timed-out request's finish is when the client gave up, not a last token
    tpot = (e2e - ttft) / (req.output_tokens - 1) if req.output_tokens > 1 and status != RequestStatus.TIMED_OUT.value else math.nan
    return RequestRecord(
        request_id=req.request_id,
        status=status,
        arrival_s=arrival,
        prompt_tokens=req.prompt_tokens,
        output_tokens=req.output_tokens,
        prefix_tokens=req.prefix_tokens,
        cached_prompt_tokens=req.cached_prompt_tokens,
        first_scheduled_s=_nan_if_neg(req.first_scheduled_s),
        first_token_s=first,
        finish_s=finish,
        ttft_s=ttft,
        e2e_s=e2e,
        tpot_s=tpot,
        queue_delay_s=_nan_if_neg(req.first_scheduled_s) - arrival,
        max_itl_s=req.max_itl_s,
        num_preemptions=req.num_preemptions,
        reject_reason=req.reject_reason,
        generated_tokens=req.num_output_generated,
    )


# Columns only runs with a client timeout have: a run without one writes the tables it wrote
# before timeouts existed (as inference-perf omits its retry fields when nothing retried).
TIMEOUT_COLUMNS = ("generated_tokens",)
REQUEST_COLUMNS = [f.name for f in fields(RequestRecord) if f.name not in TIMEOUT_COLUMNS]
STEP_COLUMNS = [f.name for f in fields(StepRecord)]


# The column only runs with a CPU KV-offloading tier have (server.kv_offloading_size_gib): prompt
# tokens each request loaded from the tier instead of computing them, over all its admissions
# (a preempted request may load again). Summary keys of such runs start with KV_OFFLOAD_PREFIX.
KV_OFFLOAD_COLUMN = "kv_offload_loaded_tokens"
KV_OFFLOAD_PREFIX = "kv_offload_"


def request_columns(timeouts: bool) -> list[str]:
    """The request table's columns: :data:`REQUEST_COLUMNS`, and with a client timeout
    (``timeouts``) :data:`TIMEOUT_COLUMNS` after them."""
    return [*REQUEST_COLUMNS, *TIMEOUT_COLUMNS] if timeouts else list(REQUEST_COLUMNS)


class LogHistogram:
    """Streaming statistics of a positive quantity (seconds) for runs too long to keep every
    value: exact count and mean; percentiles from geometric bins 0.5 % wide (relative error
    <= 0.25 %) between 1e-7 s and 1e7 s, linearly interpolated within a bin (values below
    1e-7 s, e.g. a zero queue delay, land in an underflow bin read as [0, 1e-7 s])."""

    RATIO = 1.005  # bin width; the resolution the percentiles carry
    LOW_S = 1e-7
    HIGH_S = 1e7

    def __init__(self) -> None:
        n = int(math.ceil(math.log(self.HIGH_S / self.LOW_S) / math.log(self.RATIO)))
        self.edges = self.LOW_S * self.RATIO ** np.arange(n + 1)
        self.counts = np.zeros(n + 2, dtype=np.int64)  # [under, bins..., over]
        self.count = 0
        self.total_s = 0.0

    def add(self, values: np.ndarray) -> None:
        if len(values) == 0:
            return
        idx = np.searchsorted(self.edges, values, side="right")
        self.counts += np.bincount(idx, minlength=len(self.counts))
        self.count += len(values)
        self.total_s += float(values.sum())

    def percentile(self, q: float) -> float:
        if self.count == 0:
            return math.nan
        rank = q / 100.0 * (self.count - 1)
        cum = np.cumsum(self.counts)
        i = int(np.searchsorted(cum, rank, side="right"))
        lo = self.edges[max(i - 1, 0)] if i > 0 else 0.0
        hi = self.edges[min(i, len(self.edges) - 1)]
        before = cum[i - 1] if i > 0 else 0
        frac = (rank - before) / max(self.counts[i], 1)
        return float(lo + (hi - lo) * frac)

    def stats_ms(self, prefix: str) -> dict[str, float]:
        out = {f"{prefix}_mean_ms": self.total_s / self.count * 1e3 if self.count else math.nan}
        for p in PERCENTILES:
            out[f"{prefix}_p{p}_ms"] = self.percentile(p) * 1e3
        return out


class StreamingSummary:
    """The run summary accumulated chunk by chunk (streaming mode): status counts, sums and
    extremes exactly, latency percentiles from :class:`LogHistogram` s. Memory is constant.
    ``timeouts``: the run has a client timeout (the summary counts ``num_timed_out``)."""

    def __init__(self, timeouts: bool = False) -> None:
        self.timeouts = timeouts
        self.hist = {name: LogHistogram() for name in ("ttft", "tpot", "e2e", "queue_delay")}
        self.status_counts: dict[str, int] = {}
        self.num_requests = 0
        self.sum_output_tokens_finished = 0
        self.sum_time_per_output_token_s = 0.0
        self.sum_preemptions = 0
        self.min_arrival_s = math.inf
        self.max_finish_s = -math.inf

    def add(self, df: pd.DataFrame) -> None:
        """Fold a chunk of request records (columns of :data:`REQUEST_COLUMNS`)."""
        self.num_requests += len(df)
        for status, n in df["status"].value_counts().items():
            self.status_counts[status] = self.status_counts.get(status, 0) + int(n)
        fin = df[df["status"] == RequestStatus.FINISHED.value]
        for name in self.hist:
            v = fin[f"{name}_s"].to_numpy(dtype=float)
            self.hist[name].add(v[~np.isnan(v)])
        self.sum_output_tokens_finished += int(fin["output_tokens"].sum())
        self.sum_time_per_output_token_s += float((fin["e2e_s"] / fin["output_tokens"]).sum())
        self.sum_preemptions += int(df["num_preemptions"].sum())
        if len(df):
            self.min_arrival_s = min(self.min_arrival_s, float(df["arrival_s"].min()))
        if len(fin):
            self.max_finish_s = max(self.max_finish_s, float(fin["finish_s"].max()))

    def summary(self, step_stats: dict, itls: "LogHistogram | None") -> dict[str, float | int]:
        """The same keys as :func:`summarize` (percentiles to 0.25 %)."""
        c = self.status_counts
        fin = c.get(RequestStatus.FINISHED.value, 0)
        out: dict[str, float | int] = {
            "num_requests": self.num_requests,
            "num_finished": fin,
            "num_rejected": c.get(RequestStatus.REJECTED.value, 0),
        }
        if self.timeouts:
            out["num_timed_out"] = c.get(RequestStatus.TIMED_OUT.value, 0)
        out["num_in_flight"] = c.get("in_flight", 0)
        out["num_not_sent"] = c.get("not_sent", 0)
        for name, h in self.hist.items():
            out.update(h.stats_ms(name))
        out["time_per_output_token_mean_ms"] = self.sum_time_per_output_token_s / fin * 1e3 if fin else math.nan
        if itls is not None:
            out.update(itls.stats_ms("itl"))
        span_s = self.max_finish_s - self.min_arrival_s if fin else 0.0
        out["duration_s"] = span_s
        out["output_tokens_per_s"] = self.sum_output_tokens_finished / span_s if span_s > 0 else math.nan
        out["requests_per_s"] = fin / span_s if span_s > 0 else math.nan
        out["num_preemptions"] = self.sum_preemptions
        out["num_steps"] = int(step_stats["num_steps"])
        out["num_mixed_steps"] = int(step_stats["num_mixed_steps"])
        out["mean_batch_tokens"] = float(step_stats["mean_batch_tokens"])
        out.update(_kv_offload_stats(step_stats))
        return out


def _kv_offload_stats(step_stats: dict) -> dict[str, float | int]:
    """The CPU KV-offloading counters of ``step_stats`` (none without offloading)."""
    return {k: v for k, v in step_stats.items() if k.startswith(KV_OFFLOAD_PREFIX)}


class SloCertainlyMissed(Exception):
    """Raised (through the simulation's event loop) when a :class:`TtftWatch` fires."""


class TtftWatch:
    """Counts first tokens later than ``bound_s`` after their request's arrival and raises
    :class:`SloCertainlyMissed` at the ``limit``-th: with that many of ``num_requests`` TTFTs
    above the bound, both order statistics numpy's linear p99 interpolates between are above it,
    so the finished run's p99 TTFT would miss the bound too (and an unfinished one fails anyway).
    One watch may serve several sinks (a fleet's replicas)."""

    def __init__(self, bound_s: float, num_requests: int) -> None:
        self.bound_s = bound_s
        # p99 = interpolation at position 0.99 (n − 1) of the sorted values: above the bound when
        # the value at floor(0.99 (n − 1)) is, i.e. when n − floor(0.99 (n − 1)) values are
        self.limit = max(1, num_requests - math.floor(0.99 * (num_requests - 1) - 1e-9))  # rounding: err towards more
        self.count = 0

    def late(self) -> None:
        self.count += 1
        if self.count >= self.limit:
            raise SloCertainlyMissed(f"{self.count} requests had a TTFT above {self.bound_s * 1e3:g} ms: the p99 SLO is missed")


class MetricsSink:
    """Records a run: request records and step records, column-wise, plus ITLs.

    In memory by default. With ``spill`` (a callable ``spill(kind, frame)`` given by the
    caller, e.g. a Parquet writer of the CLI), full chunks of ``chunk_rows`` records of kind
    ``"requests"`` or ``"steps"`` are handed over and dropped from memory after being folded
    into a :class:`StreamingSummary`; ITLs go to a :class:`LogHistogram`. Memory then stays
    bounded by the chunk size, whatever the number of requests. ``timeouts``: the run has a
    client timeout (request records gain :data:`TIMEOUT_COLUMNS`, see :func:`request_columns`).
    """

    def __init__(self, record_itls: bool = True, spill=None, chunk_rows: int = 65536, timeouts: bool = False) -> None:
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be >= 1")
        self.ttft_watch: TtftWatch | None = None  # set by a run that stops once its TTFT SLO is certainly missed
        self.record_itls = record_itls
        self.spill = spill
        self.chunk_rows = chunk_rows
        self.timeouts = timeouts
        self.columns = request_columns(timeouts)  # of the request records, in table order
        self._request_row = attrgetter(*self.columns)
        self.request_columns: dict[str, list] = {name: [] for name in self.columns}
        self.streaming_summary = StreamingSummary(timeouts) if spill is not None else None
        self._record_columns = self.columns  # the columns read from a RequestRecord
        self._kv_loaded: dict[int, int] | None = None  # offloading: request id -> tokens loaded so far
        self._kv = None  # offloading: the KV manager whose tier counters the summary reports
        self.kv_load_s = 0.0
        self.step_rows: list[tuple] = []  # steps not yet in a column chunk, StepRecord field order
        self._step_chunks: list[dict[str, np.ndarray]] = []  # earlier steps, column-wise
        self._chunked_rows = 0
        self.itls_s = array("d")
        self.itl_histogram = LogHistogram() if spill is not None else None
        self.num_steps = 0
        self.num_mixed_steps = 0
        self.sum_batch_tokens = 0
        self.num_requests_done = 0
        self.progress: Callable[[int], None] | None = None  # optional callable(done) for long runs

    def enable_kv_offload(self, kv) -> None:
        """The server has a CPU KV-offloading tier: :meth:`step_stats` gains the tier's counters
        (read from ``kv``, a :class:`~sim.scheduler.kv.KVCacheManager`, when asked) and, in
        memory (no ``spill``), request records gain :data:`KV_OFFLOAD_COLUMN`. Streamed chunks
        keep the common columns: a fleet's streamed table mixes them with records of its own
        sink, which has no offloading. Call before the first record."""
        if self.num_requests_done:
            raise ValueError("enable_kv_offload after records were added")
        self._kv = kv
        if self.spill is None:
            self._kv_loaded = {}
            self.columns = [*self._record_columns, KV_OFFLOAD_COLUMN]
            self.request_columns[KV_OFFLOAD_COLUMN] = []

    def on_kv_load(self, request_id: int, tokens: int) -> None:
        """Request ``request_id`` loaded ``tokens`` prompt tokens from the CPU tier in this step."""
        loaded = self._kv_loaded
        if loaded is not None:
            loaded[request_id] = loaded.get(request_id, 0) + tokens

    def on_kv_load_time(self, load_s: float) -> None:
        """A step was lengthened by ``load_s`` of CPU-tier transfers."""
        self.kv_load_s += load_s

    def on_token(self, req: Request, t_s: float) -> None:
        """``req`` produced an output token at ``t_s``."""
        self.on_tokens([req], t_s)

    def on_tokens(self, reqs: list[Request], t_s: float) -> None:
        """Each of ``reqs`` produced an output token at ``t_s``."""
        record = self.itls_s.append if self.record_itls else None
        watch = self.ttft_watch
        for req in reqs:
            if req.first_token_s < 0:
                req.first_token_s = t_s
                if watch is not None and t_s - req.arrival_s > watch.bound_s:
                    watch.late()
            else:
                gap = t_s - req.last_token_s
                if gap > req.max_itl_s:
                    req.max_itl_s = gap
                if record is not None:
                    record(gap)
            req.last_token_s = t_s
        if self.itl_histogram is not None and len(self.itls_s) >= 1 << 20:
            self._fold_itls()

    def on_uniform_gaps(self, gap_s: float, count: int) -> None:
        """``count`` requests each closed an inter-token gap of ``gap_s`` (deferred decodes of
        one step, recorded before the step's other tokens). Their ``max_itl_s`` and
        ``last_token_s`` are kept by the scheduler."""
        if self.record_itls:
            self.itls_s.extend(array("d", (gap_s,)) * count)
            if self.itl_histogram is not None and len(self.itls_s) >= 1 << 20:
                self._fold_itls()

    def on_gaps(self, gaps_s: np.ndarray) -> None:
        """Inter-token gaps recorded in bulk (engine fast-forward), in the order the
        step-by-step loop would have recorded them."""
        if self.record_itls:
            self.itls_s.frombytes(np.ascontiguousarray(gaps_s, dtype=np.float64).tobytes())
            if self.itl_histogram is not None and len(self.itls_s) >= 1 << 20:
                self._fold_itls()

    def _fold_itls(self) -> None:
        assert self.itl_histogram is not None  # streaming mode: folding is only called then
        self.itl_histogram.add(np.frombuffer(self.itls_s, dtype=float))
        self.itls_s = array("d")

    def on_step(self, row: tuple) -> None:
        """One executed step; ``row`` in :class:`~sim.entities.StepRecord` field order."""
        self.step_rows.append(row)
        self.num_steps += 1
        if row[8]:  # is_mixed
            self.num_mixed_steps += 1
        self.sum_batch_tokens += row[3] + row[4]  # prefill tokens + decode requests
        if self.spill is not None and len(self.step_rows) + self._chunked_rows >= self.chunk_rows:
            self._spill_steps()

    def on_decode_steps(self, rows: list[tuple]) -> None:
        """Several pure-decode steps at once (engine fast-forward); same effect as
        :meth:`on_step` for each row."""
        self.step_rows.extend(rows)
        self.num_steps += len(rows)
        self.sum_batch_tokens += sum(r[4] for r in rows)  # decode requests; no prefill tokens
        if self.spill is not None and len(self.step_rows) + self._chunked_rows >= self.chunk_rows:
            self._spill_steps()

    # A window shorter than this is appended as row tuples: a column chunk costs one array per
    # column, which only pays for itself over many rows.
    MIN_COLUMN_WINDOW = 64

    def on_decode_window(
        self, first_step: int, start_s: list[float], duration_s: list[float], num_decode_reqs: np.ndarray, num_running: np.ndarray, kv_used_blocks: np.ndarray
    ) -> None:
        """``k = len(duration_s)`` pure-decode steps (engine fast-forward), numbered from
        ``first_step``: step j starts at ``start_s[j]``, lasts ``duration_s[j]``, decodes
        ``num_decode_reqs[j]`` requests and leaves ``num_running[j]`` running and
        ``kv_used_blocks[j]`` blocks in use (int arrays of length k). Same effect as
        :meth:`on_step` for each step; long windows are stored column-wise."""
        k = len(duration_s)
        if k < self.MIN_COLUMN_WINDOW:
            self.on_decode_steps(
                [
                    (first_step + j, start_s[j], duration_s[j], 0, d, 0, r, 0, False, u, 0)
                    for j, (d, r, u) in enumerate(zip(num_decode_reqs.tolist(), num_running.tolist(), kv_used_blocks.tolist()))
                ]
            )
            return
        self._flush_step_rows()
        zeros = np.zeros(k, dtype=np.int64)
        columns = (  # StepRecord field order
            np.arange(first_step, first_step + k, dtype=np.int64),  # step_index
            np.array(start_s[:k], dtype=float),
            np.array(duration_s, dtype=float),
            zeros,  # prefill tokens
            np.asarray(num_decode_reqs, dtype=np.int64),
            zeros,  # prefill requests
            np.asarray(num_running, dtype=np.int64),
            zeros,  # waiting
            np.zeros(k, dtype=bool),  # is_mixed
            np.asarray(kv_used_blocks, dtype=np.int64),
            zeros,  # preempted
        )
        self._step_chunks.append(dict(zip(STEP_COLUMNS, columns, strict=True)))
        self._chunked_rows += k
        self.num_steps += k
        self.sum_batch_tokens += int(columns[4].sum())
        if self.spill is not None and self._chunked_rows >= self.chunk_rows:
            self._spill_steps()

    def _flush_step_rows(self) -> None:
        """Move the buffered row tuples into a column chunk (keeps step order)."""
        if self.step_rows:
            self._step_chunks.append(_step_columns(self.step_rows))
            self._chunked_rows += len(self.step_rows)
            self.step_rows = []

    def steps_frame(self) -> pd.DataFrame:
        """Every step recorded and not spilled, in step order."""
        if not self._step_chunks:
            return steps_frame(self.step_rows)
        self._flush_step_rows()
        chunks = self._step_chunks
        return pd.DataFrame({name: np.concatenate([c[name] for c in chunks]) for name in STEP_COLUMNS}, columns=STEP_COLUMNS)

    def on_request_done(self, req: Request, status: str | None = None) -> None:
        """``req`` left the server (finished, rejected or timed out), or is reported at the horizon."""
        self.add_record(request_record(req, status))

    def add_record(self, rec: RequestRecord) -> None:
        cols = self.request_columns
        for name, value in zip(self._record_columns, self._request_row(rec)):
            cols[name].append(value)
        if self._kv_loaded is not None:
            cols[KV_OFFLOAD_COLUMN].append(self._kv_loaded.pop(rec.request_id, 0))
        self.num_requests_done += 1
        if self.progress is not None:
            self.progress(self.num_requests_done)
        if self.spill is not None and len(cols["request_id"]) >= self.chunk_rows:
            self._spill_requests()

    def add_not_sent(self, pieces) -> None:
        """Record requests never sent in bulk: ``pieces`` of ``(first id, {prompt_tokens,
        output_tokens, prefix_tokens})`` arrays (``Workload.not_sent_columns``), in id order.
        The same rows as ``add_record(request_record(req, "not_sent"))`` for each."""
        template = request_record(Request(request_id=0, prompt_tokens=1, output_tokens=1), "not_sent")
        varying = ("request_id", "prompt_tokens", "output_tokens", "prefix_tokens")
        fixed = {name: getattr(template, name) for name in self._record_columns if name not in varying}
        for first, cols in pieces:
            m = len(cols["prompt_tokens"])
            lo = 0
            while lo < m:  # whole chunks when streaming, so that memory stays bounded
                room = self.chunk_rows - len(self.request_columns["request_id"]) if self.spill is not None else m
                hi = min(m, lo + max(room, 1))
                out = self.request_columns
                out["request_id"].extend(range(first + lo, first + hi))
                for name in ("prompt_tokens", "output_tokens", "prefix_tokens"):
                    out[name].extend(cols[name][lo:hi].tolist())
                for name, value in fixed.items():
                    out[name].extend([value] * (hi - lo))
                if self._kv_loaded is not None:
                    out[KV_OFFLOAD_COLUMN].extend([0] * (hi - lo))
                self.num_requests_done += hi - lo
                if self.spill is not None and len(out["request_id"]) >= self.chunk_rows:
                    self._spill_requests()
                lo = hi
        if self.progress is not None:
            self.progress(self.num_requests_done)

    def _spill_requests(self) -> None:
        cols = self.request_columns
        if cols["request_id"]:
            frame = pd.DataFrame(cols, columns=self.columns)
            assert self.streaming_summary is not None  # spilling implies streaming mode
            self.streaming_summary.add(frame)
            self.spill("requests", frame)
            self.request_columns = {name: [] for name in self.columns}

    def _spill_steps(self) -> None:
        if self.step_rows or self._step_chunks:
            self.spill("steps", self.steps_frame())
            self.step_rows = []
            self._step_chunks = []
            self._chunked_rows = 0

    def finish(self) -> None:
        """Flush what is buffered (streaming mode)."""
        if self.spill is not None:
            self._spill_requests()
            self._spill_steps()
            if self.itl_histogram is not None:
                self._fold_itls()

    def step_stats(self) -> dict:
        """Step counters; with a CPU KV-offloading tier also its counters (keys starting with
        :data:`KV_OFFLOAD_PREFIX`, which the summaries copy)."""
        stats: dict = {
            "num_steps": self.num_steps,
            "num_mixed_steps": self.num_mixed_steps,
            "mean_batch_tokens": self.sum_batch_tokens / self.num_steps if self.num_steps else math.nan,
        }
        kv = self._kv
        if kv is not None:
            stats[KV_OFFLOAD_PREFIX + "cpu_blocks"] = kv.num_cpu_blocks
            stats[KV_OFFLOAD_PREFIX + "stored_blocks"] = kv.num_offload_stored_blocks
            stats[KV_OFFLOAD_PREFIX + "loaded_blocks"] = kv.num_offload_loaded_blocks
            stats[KV_OFFLOAD_PREFIX + "loaded_tokens"] = kv.num_offload_loaded_blocks * kv.block_size
            stats[KV_OFFLOAD_PREFIX + "dropped_blocks"] = kv.num_offload_dropped_blocks
            stats[KV_OFFLOAD_PREFIX + "load_s"] = self.kv_load_s
        return stats


class IdOrderedSpill:
    """A ``spill(kind, frame)`` that hands request chunks on to ``spill`` in request-id order
    — the order of the in-memory table — whatever order requests leave in; other kinds pass
    straight through. Requests leave roughly in id order, so rows wait here only while a
    request with a lower id is still inside (memory: that out-of-order window; a starved
    request holds back every later row until it leaves). Call :meth:`flush` once every
    record was handed over. Chunks handed on hold ``chunk_rows`` rows (the last one fewer).
    Precondition: the ids are 0..N-1, each handed over once."""

    def __init__(self, spill: Callable[[str, pd.DataFrame], None], chunk_rows: int = 65536) -> None:
        self.spill = spill
        self.chunk_rows = chunk_rows
        self._pending: list[pd.DataFrame] = []
        self._next_id = 0  # every id below it was handed on

    def __call__(self, kind: str, frame: pd.DataFrame) -> None:
        if kind != "requests":
            self.spill(kind, frame)
            return
        self._pending.append(frame)
        self._release(final=False)

    def _release(self, final: bool) -> None:
        if not self._pending:
            return
        df = pd.concat(self._pending, ignore_index=True) if len(self._pending) > 1 else self._pending[0]
        df = df.sort_values("request_id", kind="stable").reset_index(drop=True)
        k = len(df)
        if not final:  # the run of consecutive ids from the next expected one
            ids = df["request_id"].to_numpy(dtype=np.int64)
            gaps = np.flatnonzero(ids != self._next_id + np.arange(len(ids), dtype=np.int64))
            if len(gaps):
                k = int(gaps[0])
            k -= k % self.chunk_rows  # whole chunks only (the rest waits for more, or the end)
            if not k:
                self._pending = [df]
                return
        for lo in range(0, k, self.chunk_rows):
            self.spill("requests", df.iloc[lo : min(lo + self.chunk_rows, k)].reset_index(drop=True))
        self._next_id += k
        rest = df.iloc[k:].reset_index(drop=True)
        self._pending = [rest] if len(rest) else []

    def flush(self) -> None:
        """Hand on every row still held (sorted); the run's records are complete."""
        self._release(final=True)


def requests_frame(columns: dict[str, list]) -> pd.DataFrame:
    """Per-request table from record columns (in table order, e.g. a sink's ``request_columns``),
    sorted by request id (stable ⇒ byte-identical)."""
    df = pd.DataFrame(columns, columns=list(columns))
    return df.sort_values("request_id", kind="stable").reset_index(drop=True)


_STEP_DTYPES = {f.name: (float if f.type == "float" else bool if f.type == "bool" else np.int64) for f in fields(StepRecord)}


def steps_frame(rows: list[tuple]) -> pd.DataFrame:
    """Per-step table from the sink's step rows (column-wise build: fast for long runs)."""
    if not rows:
        return pd.DataFrame({name: np.array([], dtype=_STEP_DTYPES[name]) for name in STEP_COLUMNS}, columns=STEP_COLUMNS)
    return pd.DataFrame(_step_columns(rows), columns=STEP_COLUMNS)


def _step_columns(rows: list[tuple]) -> dict[str, np.ndarray]:
    """Step row tuples (non-empty list) as one array per column."""
    return {name: np.fromiter(col, dtype=_STEP_DTYPES[name], count=len(rows)) for name, col in zip(STEP_COLUMNS, zip(*rows))}


def _stats_ms(values_s: np.ndarray, prefix: str) -> dict[str, float]:
    v = values_s[~np.isnan(values_s)] * 1e3 if len(values_s) else values_s
    out = {f"{prefix}_mean_ms": float(v.mean()) if len(v) else math.nan}
    # every percentile from one partition of one copy (the same order statistics and
    # interpolation as one call per percentile; a run's ITLs are tens of millions of values)
    qs = np.percentile(v, PERCENTILES).tolist() if len(v) else [math.nan] * len(PERCENTILES)
    for p, q in zip(PERCENTILES, qs):
        out[f"{prefix}_p{p}_ms"] = float(q)
    return out


def summarize(
    requests: pd.DataFrame, step_stats: dict, itls: np.ndarray | array | LogHistogram | None = None, timeouts: bool = False
) -> dict[str, float | int]:
    """Aggregate metrics of one run (latencies over finished requests).

    ``requests`` is the per-request table; ``step_stats`` holds ``num_steps``,
    ``num_mixed_steps`` and ``mean_batch_tokens``; ``itls`` are all inter-token gaps (seconds)
    or their histogram. Throughput is measured over the run's span, first arrival to last
    finish. ``timeouts``: the run has a client timeout, and the summary counts
    ``num_timed_out`` (so that ``num_requests`` is the sum of the five counts).
    """
    status = requests["status"]
    fin = requests[status == RequestStatus.FINISHED.value]
    out: dict[str, float | int] = {
        "num_requests": int(len(requests)),
        "num_finished": int(len(fin)),
        "num_rejected": int((status == RequestStatus.REJECTED.value).sum()),
    }
    if timeouts:
        out["num_timed_out"] = int((status == RequestStatus.TIMED_OUT.value).sum())
    out["num_in_flight"] = int((status == "in_flight").sum())
    out["num_not_sent"] = int((status == "not_sent").sum())
    for col, name in (("ttft_s", "ttft"), ("tpot_s", "tpot"), ("e2e_s", "e2e"), ("queue_delay_s", "queue_delay")):
        out.update(_stats_ms(fin[col].to_numpy(dtype=float), name))
    if len(fin):
        out["time_per_output_token_mean_ms"] = float((fin["e2e_s"] / fin["output_tokens"]).mean() * 1e3)
    else:
        out["time_per_output_token_mean_ms"] = math.nan
    if isinstance(itls, LogHistogram):
        out.update(itls.stats_ms("itl"))
    elif itls is not None:
        out.update(_stats_ms(np.asarray(itls, dtype=float), "itl"))
    span_s = float(fin["finish_s"].max() - requests["arrival_s"].min()) if len(fin) else 0.0
    out["duration_s"] = span_s
    out["output_tokens_per_s"] = float(fin["output_tokens"].sum() / span_s) if span_s > 0 else math.nan
    out["requests_per_s"] = float(len(fin) / span_s) if span_s > 0 else math.nan
    out["num_preemptions"] = int(requests["num_preemptions"].sum())
    out["num_steps"] = int(step_stats["num_steps"])
    out["num_mixed_steps"] = int(step_stats["num_mixed_steps"])
    out["mean_batch_tokens"] = float(step_stats["mean_batch_tokens"])
    out.update(_kv_offload_stats(step_stats))
    return out
