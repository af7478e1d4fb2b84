"""Build and run one simulation from a :class:`~sim.config.RunConfig`.

:func:`simulate` is the library entry point: it builds the server (:class:`~sim.core.server.Server`:
model, GPU, KV cache size, scheduler, cost model), the workload and arrival process — or, when the
config has a ``cluster`` section, a fleet of servers behind a router (:mod:`sim.core.fleet`) —
runs SimPy, and returns a :class:`SimResult` (tables + summary). It performs no file output.
"""

from __future__ import annotations

import numpy as np

from sim.config import RunConfig
from sim.core.client import ClientTimeouts
from sim.core.engine import CancellableEnvironment, SimEnvironment
from sim.core.fleet import FleetSimulation
from sim.core.result import SimResult
from sim.core.server import (  # noqa: F401  (re-exported: the sizing rules are part of this module's API)
    GIB,
    RUNTIME_RESERVE_GIB_TP1,
    RUNTIME_RESERVE_GIB_TP_MULTI,
    Server,
    default_max_num_batched_tokens,
    derive_num_gpu_blocks,
    kv_block_bytes_per_gpu,
    percent_progress,
    resolve_limits,
    run_until_done,
    ttft_watch,
)
from sim.entities import Request
from sim.load import arrival as _arrival  # noqa: F401  (registers strategies)
from sim.load.arrival import ARRIVALS
from sim.load.workload import build_workload
from sim.records.metrics import IdOrderedSpill, MetricsSink, requests_frame, steps_frame, summarize
from sim.rng import RandomStreams

__all__ = ["SimResult", "Simulation", "FleetSimulation", "make_simulation", "simulate"]


class Simulation:
    """One configured, runnable single-server simulation: all parts built, nothing run yet.

    Attributes (for inspection and tests): ``env``, ``server``, and the server's parts ``model``,
    ``gpu``, ``limits`` (effective server limits), ``cost_settings``, ``cost_model``, ``kv``,
    ``scheduler``, ``engine``; ``workload``, ``sink``; ``timeouts`` (the client's
    :class:`~sim.core.client.ClientTimeouts`, None without ``arrival.request_timeout_s``).
    """

    def __init__(self, cfg: RunConfig, spill=None, chunk_rows: int = 65536, fast_forward: bool = True) -> None:
        """Build every part of the run. ``spill(kind, frame)``, if given, receives the request
        and step records in chunks of ``chunk_rows`` (streaming mode, for very long runs).
        ``fast_forward`` lets the engine apply stretches of pure-decode steps at once (same
        results; off only to check that)."""
        if cfg.cluster is not None:
            raise ValueError("Simulation runs one server; use make_simulation (or FleetSimulation) for a config with a cluster section")
        self.cfg = cfg
        self.streams = RandomStreams(cfg.seed)
        timeout_s = cfg.arrival.request_timeout_s
        self.timeouts: ClientTimeouts | None = None
        if timeout_s is None:
            self.env = SimEnvironment()
        else:
            self.env = env = CancellableEnvironment()
            self.timeouts = ClientTimeouts(env, timeout_s, self._time_out)
        # streamed request rows go out in id order, as the in-memory table holds them
        self._ordered = IdOrderedSpill(spill, chunk_rows) if spill is not None else None
        self.sink = MetricsSink(record_itls=cfg.record_itls, spill=self._ordered, chunk_rows=chunk_rows, timeouts=self.timeouts is not None)
        on_leave = self.timeouts.left if self.timeouts is not None else None
        self.server = server = Server(cfg, self.env, self.sink, fast_forward=fast_forward, on_leave=on_leave)
        self.model, self.gpu, self.limits = server.model, server.gpu, server.limits
        self.cost_settings, self.cost_model = server.cost_settings, server.cost_model
        self.kv, self.scheduler, self.engine = server.kv, server.scheduler, server.engine
        self.workload = build_workload(cfg.workload, self.streams)
        if cfg.workload.prompt_pool_warm:
            # the server served these prompts before this run (an earlier stage)
            for req in self.workload.pool_prompts().values():
                self.kv.prewarm(req)
        self.num_sent = 0  # requests the client has sent (ids 0..num_sent-1: sends follow id order)
        self.sink.ttft_watch = ttft_watch(cfg, len(self.workload))
        ARRIVALS.get(cfg.arrival.strategy, "arrival.strategy")(self.env, self._send, self.workload, cfg.arrival, self.streams)

    def _send(self, req: Request) -> None:
        """The client sends ``req`` now (counted for the horizon's bookkeeping)."""
        self.num_sent += 1
        if self.timeouts is not None:
            self.timeouts.sent(req, self.env.now)
        self.server.submit(req)

    def _time_out(self, req: Request, sent_s: float) -> None:
        """The client gives up on ``req``, sent at ``sent_s`` (its timeout expired now)."""
        assert self.timeouts is not None  # only the timeouts call this
        self.server.time_out(req, self.timeouts.timeout_s, sent_s)

    def run(self, progress=None) -> SimResult:
        """Run to the horizon (or until every request left) and tabulate. Call once.

        ``progress(done, total)`` is called as requests leave (about every 1 %). Requests
        still in the server at the horizon are recorded ``in_flight``, those never sent
        ``not_sent``; with a client timeout, those given up ``timed_out``. In streaming mode
        the returned ``requests`` and ``steps`` tables are empty (the records went to
        ``spill``) and latency percentiles in the summary come from 0.5 %-wide histogram bins.
        """
        cfg = self.cfg
        sink = self.sink
        total = len(self.workload)
        if progress is not None:
            sink.progress = percent_progress(progress, total)
        stopped = run_until_done(self.env, cfg.horizon_s)
        sink.progress = None
        self.server.sync()  # deferred decodes: bring running requests up to date
        # Requests are sent in id order, so ids >= num_sent were never sent. A sent request is
        # in the API server (frontend delay), staged (async scheduling) or in the scheduler.
        for req in sorted(self.server.requests_inside(), key=lambda r: r.request_id):
            sink.on_request_done(req, "in_flight")
        sink.add_not_sent(self.workload.not_sent_columns(self.num_sent))
        if progress is not None:
            progress(total, total)
        streamed = sink.spill is not None
        sink.finish()
        if self._ordered is not None:
            self._ordered.flush()
        timeouts = self.timeouts is not None
        if streamed:
            req_df = requests_frame({name: [] for name in sink.columns})
            step_df = steps_frame([])
            itls = np.empty(0)
            assert sink.streaming_summary is not None  # streaming mode keeps one
            summary = sink.streaming_summary.summary(sink.step_stats(), sink.itl_histogram if cfg.record_itls else None)
        else:
            req_df = requests_frame(sink.request_columns)
            step_df = sink.steps_frame()
            itls = np.asarray(sink.itls_s, dtype=float)
            summary = summarize(req_df, sink.step_stats(), itls if cfg.record_itls else None, timeouts=timeouts)
        derived = dict(
            self.limits,
            cost_model=self.cost_model.name,
            formula=self.cost_settings.formula,
            policy=cfg.scheduler.policy,
            end_s=float(self.env.now),
            num_steps=self.engine.num_steps,
            streamed=streamed,
        )
        if stopped:
            derived["stopped_early"] = stopped
        return SimResult(cfg, req_df, step_df, itls, summary, derived)


def make_simulation(cfg: RunConfig, spill=None, chunk_rows: int = 65536, fast_forward: bool = True) -> Simulation | FleetSimulation:
    """The runnable simulation of ``cfg``: a fleet when it has a ``cluster`` section, else one server."""
    if cfg.cluster is not None:
        return FleetSimulation(cfg, spill=spill, chunk_rows=chunk_rows, fast_forward=fast_forward)
    return Simulation(cfg, spill=spill, chunk_rows=chunk_rows, fast_forward=fast_forward)


def simulate(cfg: RunConfig) -> SimResult:
    """Run one simulation (one server or a fleet). Deterministic: same config ⇒ identical tables."""
    return make_simulation(cfg).run()
