"""A fleet: replicas of one model behind a router, on one simulated clock.

The config's ``cluster`` section lists instance groups (count, GPU, TP, server settings); each
replica is a :class:`~sim.core.server.Server` with its own scheduler, KV cache, cost model and
metrics sink, all driven by one SimPy environment. A request's path::

    client send ─ admission ─(router latency)─ router ─ replica API server ─ engine

and, with prefill/decode disaggregation (groups of role ``prefill`` and ``decode``)::

    … router ─ prefill replica (prompt + first token) ─ KV transfer ─ router ─ decode replica

The client sees the first token when the prefill replica produces it (TTFT), then the rest from
the decode replica; the decode replica receives the prompt's KV and the first token, so its
steps hold the request as an ordinary decode. The request table has one row per request (its
``replica`` column: where it finished, or was refused / left at the horizon; -1 = never
reached a replica; with disaggregation also ``prefill_replica``, where it prefilled);
prefill-side rows of a disaggregated request are not separate requests. A request its client
gives up on (``arrival.request_timeout_s``) leaves wherever it is: the router, a replica (which
aborts it), the KV link; timed out during its prefill, its prefill replica aborts the prefill
and its row is the fleet's, with ``replica`` = the prefill replica. In the replica table
a prefill replica's ``finished`` counts the prefills it completed (first tokens produced) and
its ``ttft_p99_ms`` is theirs.

The router sees replicas through :class:`~sim.cluster.router.ReplicaView`: live state when
``router.refresh_interval_ms`` is 0, else snapshots taken every interval from t = 0, to which
the router adds its own sends until the next snapshot (``count_own_sends``). Waiting counts a
replica's requests routed there and not running (API server, queue), as vLLM's coordinator
counts its engines' waiting queues.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from sim.cluster.admission import build_admission
from sim.cluster.router import ReplicaInfo, ReplicaView, build_router
from sim.cluster.transfer import resolve_link
from sim.config import InstanceGroupConfig, RunConfig, merge, parse_run_config
from sim.core.client import ClientTimeouts
from sim.core.engine import CancellableEnvironment, SimEnvironment, timeout_reason
from sim.core.result import SimResult
from sim.core.server import Server, percent_progress, run_until_done, ttft_watch
from sim.entities import Request, RequestStatus
from sim.errors import ConfigError
from sim.load import arrival as _arrival  # noqa: F401  (registers strategies)
from sim.load.arrival import ARRIVALS
from sim.load.workload import build_workload
from sim.records.metrics import IdOrderedSpill, LogHistogram, MetricsSink, StreamingSummary, requests_frame, steps_frame, summarize
from sim.rng import RandomStreams

FLEET_SUMMARY_KEYS = ("num_replicas", "load_imbalance_requests", "load_imbalance_busy")


def group_name(group: InstanceGroupConfig, position: int) -> str:
    return group.name if group.name is not None else f"g{position}"


def group_run_config(cfg: RunConfig, group: InstanceGroupConfig) -> RunConfig:
    """The single-server config of one replica of ``group``: the run's fields with the
    group's GPU, TP, server and cost settings over them, and no cluster section."""
    data = cfg.model_dump(mode="json")
    data["cluster"] = None
    if group.gpu is not None:
        data["gpu"] = group.gpu
    if group.tensor_parallel_size is not None:
        data["tensor_parallel_size"] = group.tensor_parallel_size
    data["server"] = merge(data["server"], group.server)
    data["cost"] = merge(data["cost"], group.cost)
    return parse_run_config(data, source=f"cluster group {group.name or ''}".strip())


class Replica:
    """One server of the fleet, with the counters the router's views are made from."""

    def __init__(
        self,
        index: int,
        group: str,
        role: str,
        cfg: RunConfig,
        env: SimEnvironment,
        fast_forward: bool,
        on_leave: Callable[[Request], None],
        spill: Callable[[str, pd.DataFrame], None] | None = None,
        chunk_rows: int = 65536,
    ):
        self.index = index
        self.group = group
        self.role = role
        self.cfg = cfg
        timeouts = cfg.arrival.request_timeout_s is not None
        self.sink = MetricsSink(record_itls=cfg.record_itls, spill=spill, chunk_rows=chunk_rows, timeouts=timeouts)
        self.busy_s = 0.0  # streaming: stepping time and preemptions of the spilled steps
        self.preemptions = 0
        self.server = Server(cfg, env, self.sink, fast_forward=fast_forward, on_leave=on_leave)
        self.num_routed = 0  # requests (or prefill phases) sent here
        self.num_left = 0  # of those, left (finished or refused by the engine)
        self.info = ReplicaInfo(index, group, role, cfg.server.max_num_seqs, self.server.limits["num_gpu_blocks"], cfg.server.block_size)

    def live_view(self) -> ReplicaView:
        # requests timed out during the running step left (num_left) but are still in running
        running = len(self.server.scheduler.running) - len(self.server.engine.leaving)
        kv = self.server.kv
        return ReplicaView(self.index, self.num_routed - self.num_left - running, running, kv.num_used_blocks / kv.num_blocks)


class _LiveViews(Sequence[ReplicaView]):
    """The replicas' live views, each made when a router first reads it (a round-robin router
    reads none; one decision reads each at most once from here)."""

    __slots__ = ("_replicas", "_made")

    def __init__(self, replicas: list[Replica]) -> None:
        self._replicas = replicas
        self._made: dict[int, ReplicaView] = {}

    def __len__(self) -> int:
        return len(self._replicas)

    def __getitem__(self, index):
        view = self._made.get(index)
        if view is None:
            view = self._made[index] = self._replicas[index].live_view()
        return view


class FleetSimulation:
    """A configured, runnable fleet simulation (the config has a ``cluster`` section).

    Attributes: ``env``, ``replicas`` (:class:`Replica`, in group order), ``router``,
    ``admission``, ``workload``, ``sink`` (requests refused by admission, or that left or were
    in flight outside a replica's engine), ``timeouts`` (the client's
    :class:`~sim.core.client.ClientTimeouts`, None without ``arrival.request_timeout_s``).
    """

    def __init__(self, cfg: RunConfig, spill=None, chunk_rows: int = 65536, fast_forward: bool = True) -> None:
        """As :class:`~sim.core.simulation.Simulation`. With ``spill``, every replica's records
        go to it in chunks (request frames with their ``replica`` column, in request-id order;
        step frames with theirs, each replica's in step order; a prefill replica's prefill
        phases are not client requests and are not spilled) and the summaries are
        accumulated as they pass."""
        if cfg.cluster is None:
            raise ValueError("FleetSimulation needs a config with a cluster section")
        self.cfg = cfg
        # streamed request rows go out in id order, as the in-memory table holds them
        self._ordered = IdOrderedSpill(spill, chunk_rows) if spill is not None else None
        self.spill = self._ordered
        cl = cfg.cluster
        self.streams = RandomStreams(cfg.seed)
        timeout_s = cfg.arrival.request_timeout_s
        self.timeouts: ClientTimeouts | None = None
        if timeout_s is None:
            self.env = env = SimEnvironment()
        else:
            self.env = env = CancellableEnvironment()
            self.timeouts = ClientTimeouts(env, timeout_s, self._time_out)
        timeouts = self.timeouts is not None
        self.replicas: list[Replica] = []
        for gi, group in enumerate(cl.groups):
            name = group_name(group, gi)
            try:
                gcfg = group_run_config(cfg, group)
                for _ in range(group.replicas):
                    index = len(self.replicas)
                    rep_spill = self._replica_spill(index, group.role) if spill is not None else None
                    self.replicas.append(Replica(index, name, group.role, gcfg, env, fast_forward, self._leave_hook(index), rep_spill, chunk_rows))
            except ConfigError as err:
                # name the group: its GPU, TP or server settings may differ from the run's
                raise ConfigError(f"cluster.groups.{gi} ({name}): {err}") from None
        self.disaggregated = any(r.role == "prefill" for r in self.replicas)
        self.entry = [r.index for r in self.replicas if r.role in ("mixed", "prefill")]
        self.decode_pool = [r.index for r in self.replicas if r.role == "decode"]
        self.router = build_router(cl.router, [r.info for r in self.replicas], self.streams)
        self.admission = build_admission(cl.admission)
        self.refresh_s = cl.router.refresh_interval_ms * 1e-3
        self.route_latency_s = cl.router.latency_ms * 1e-3
        self.count_own_sends = cl.router.count_own_sends
        self.link = resolve_link(cl.kv_transfer) if self.disaggregated else None
        model = self.replicas[0].server.model
        self.kv_bytes_per_token = model.kv_bytes_per_token  # bytes that cross the P/D link per prompt token
        self.workload = build_workload(cfg.workload, self.streams)
        if cfg.workload.prompt_pool_warm:
            pool = self.workload.pool_prompts().values()
            for r in self.replicas:
                if r.role != "decode":
                    for req in pool:
                        r.server.kv.prewarm(req)
        watch = ttft_watch(cfg, len(self.workload))  # one count over the fleet's first tokens
        for r in self.replicas:
            r.sink.ttft_watch = watch
        self.replica_of = np.full(len(self.workload), -1, dtype=np.int64)
        self.prefill_of = np.full(len(self.workload), -1, dtype=np.int64)  # disaggregated: where each request prefilled
        # refused by admission; timed out, or at the horizon, outside a replica's engine
        self.sink = MetricsSink(record_itls=False, spill=self._emit if spill is not None else None, chunk_rows=chunk_rows, timeouts=timeouts)
        if spill is not None:
            self.fleet_summary = StreamingSummary(timeouts)
            self.group_summaries = {r.group: StreamingSummary(timeouts) for r in self.replicas}
            self._group_names = list(dict.fromkeys((r.group, r.role) for r in self.replicas))
            position = {name: i for i, (name, _) in enumerate(self._group_names)}
            self._group_index_of_replica = np.array([position[r.group] for r in self.replicas], dtype=np.int64)
        self.num_sent = 0
        self.num_done = 0  # requests that left the fleet (any outcome)
        self.last_leave_s = 0.0
        self.progress: Callable[[int], None] | None = None
        self.in_router: dict[int, Request] = {}  # admitted, routing decision pending (router latency)
        self.in_prefill: dict[int, Request] = {}  # disaggregated: the client's request, by id, while its prefill runs
        self.prefill_phase: dict[int, Request] = {}  # with a client timeout: the prefill phase of each of those
        self.gave_up_in_prefill: set[int] = set()  # their clients gave up: the prefill phase's fate decides the row
        self.in_transfer: dict[int, Request] = {}  # disaggregated: KV on the link
        self.snapshot: list[ReplicaView] | None = None
        if self.refresh_s > 0:
            self.snapshot = [r.live_view() for r in self.replicas]
            env.process(self._refresher())
        ARRIVALS.get(cfg.arrival.strategy, "arrival.strategy")(env, self._send, self.workload, cfg.arrival, self.streams)

    # --------------------------------------------------------------- streaming
    def _replica_spill(self, index: int, role: str) -> Callable[[str, pd.DataFrame], None]:
        def spill(kind: str, frame: pd.DataFrame) -> None:
            rep = self.replicas[index]
            if kind == "steps":
                rep.busy_s += float(frame["duration_s"].sum())
                rep.preemptions += int(frame["num_preempted"].sum())
                frame.insert(0, "replica", np.full(len(frame), index, dtype=np.int64))
                assert self.spill is not None  # replicas spill only in streaming mode
                self.spill("steps", frame)
            elif role != "prefill":  # a prefill replica's request rows are prefill phases
                self._emit(kind, frame)

        return spill

    def _emit(self, kind: str, frame: pd.DataFrame) -> None:
        """Client request records on their way out: add where they went, fold them into the
        fleet's and their group's summaries, hand them to the caller's spill."""
        ids = frame["request_id"].to_numpy(dtype=np.int64)
        frame["replica"] = self.replica_of[ids]
        if self.disaggregated:
            frame["prefill_replica"] = self.prefill_of[ids]
        self.fleet_summary.add(frame)
        group_of = self._group_index_of_replica
        for role_column in ("replica", "prefill_replica") if self.disaggregated else ("replica",):
            where = frame[role_column].to_numpy(dtype=np.int64)
            g = np.where(where >= 0, group_of[np.maximum(where, 0)], -1)
            for gi in np.unique(g[g >= 0]).tolist():
                name, role = self._group_names[gi]
                if (role == "prefill") == (role_column == "prefill_replica"):
                    self.group_summaries[name].add(frame[g == gi])
        assert self.spill is not None  # records are emitted only in streaming mode
        self.spill(kind, frame)

    # ------------------------------------------------------------------ routing
    def _views(self) -> Sequence[ReplicaView]:
        if self.snapshot is not None:
            return self.snapshot
        return _LiveViews(self.replicas)

    def _refresher(self):
        total = len(self.workload)
        while self.num_done < total:
            yield self.env.timeout(self.refresh_s)
            self.snapshot = [r.live_view() for r in self.replicas]

    def _pick(self, req: Request, candidates: list[int]) -> Replica:
        index = self.router.route(req, self._views(), candidates)
        self.router.on_routed(req, index)
        rep = self.replicas[index]
        rep.num_routed += 1
        if self.snapshot is not None and self.count_own_sends:
            self.snapshot[index].num_waiting += 1
        return rep

    def _send(self, req: Request) -> None:
        """The client sends ``req`` now."""
        self.num_sent += 1
        now = self.env.now
        if self.timeouts is not None:
            self.timeouts.sent(req, now)
        reason = self.admission.admit(req, now)
        if reason:
            req.arrival_s = now
            req.status = RequestStatus.REJECTED
            req.reject_reason = reason
            self.sink.on_request_done(req)
            self._fleet_leave(req, admitted=False)
            return
        if self.route_latency_s > 0:
            self.in_router[req.request_id] = req
            self.env.process(self._route_later(req, now))
        else:
            self._dispatch(req, now)

    def _route_later(self, req: Request, sent_s: float):
        yield self.env.timeout(self.route_latency_s)
        if self.in_router.pop(req.request_id, None) is None:
            return  # its client gave up meanwhile
        self._dispatch(req, sent_s)

    def _dispatch(self, req: Request, sent_s: float) -> None:
        rep = self._pick(req, self.entry)
        self.replica_of[req.request_id] = rep.index
        if not self.disaggregated:
            rep.server.submit(req, sent_s)
            return
        pre = Request(
            req.request_id,
            req.prompt_tokens,
            1,
            prefix_group=req.prefix_group,
            prefix_tokens=req.prefix_tokens,
            priority=req.priority,
            prompt_id=req.prompt_id,
        )
        self.in_prefill[req.request_id] = req
        if self.timeouts is not None:
            self.prefill_phase[req.request_id] = pre
        self.prefill_of[req.request_id] = rep.index
        rep.server.submit(pre, sent_s)

    # ------------------------------------------------------------- departures
    def _leave_hook(self, index: int) -> Callable[[Request], None]:
        def on_leave(req: Request) -> None:
            rep = self.replicas[index]
            rep.num_left += 1
            if rep.role == "prefill":  # a prefill phase (its own Request), not the client's request
                self._prefill_done(req)
            else:
                self._fleet_leave(req, admitted=True)

        return on_leave

    def _fleet_leave(self, req: Request, admitted: bool) -> None:
        if self.timeouts is not None:
            self.timeouts.left(req)
        if admitted:
            self.admission.on_leave(req)
        self.num_done += 1
        self.last_leave_s = self.env.now
        ev = req.done_event
        if ev is not None and not ev.triggered:
            ev.succeed(req)  # a closed-loop user sends its next request (engines signal their own leavers too)
        if self.progress is not None:
            self.progress(self.num_done)

    def _prefill_done(self, pre: Request) -> None:
        """The prefill phase of a disaggregated request left its replica: refused, the whole
        request (one output token), or the first token — then the KV goes to a decode replica.
        If its client gave up (:meth:`_time_out`), the prefill phase timed out too, or its first
        token came exactly at the deadline: the whole request if that was its only token, else
        the client has that token and times out at that instant."""
        req = self.in_prefill.pop(pre.request_id)
        self.prefill_phase.pop(pre.request_id, None)
        gave_up = False
        if self.gave_up_in_prefill:
            gave_up = pre.request_id in self.gave_up_in_prefill
            self.gave_up_in_prefill.discard(pre.request_id)
        req.arrival_s = pre.arrival_s
        if pre.status is RequestStatus.REJECTED:
            req.status, req.reject_reason = RequestStatus.REJECTED, pre.reject_reason
            self.sink.on_request_done(req)
            self._fleet_leave(req, admitted=True)
            return
        req.first_scheduled_s = pre.first_scheduled_s
        req.cached_prompt_tokens = pre.cached_prompt_tokens
        req.num_preemptions = pre.num_preemptions
        if gave_up and pre.status is not RequestStatus.FINISHED:  # the prefill phase timed out too
            self._leave_outside(req, f"{pre.reject_reason} (its prefill phase, on replica {int(self.prefill_of[pre.request_id])})")
            return
        # the client has its first token
        req.first_token_s = req.last_token_s = pre.first_token_s
        req.num_computed_tokens = req.prompt_tokens
        req.num_output_generated = 1
        if req.output_tokens == 1:
            req.finish_s = pre.finish_s
            req.status = RequestStatus.FINISHED
            self.sink.on_request_done(req)
            self._fleet_leave(req, admitted=True)
            return
        if gave_up:
            assert self.timeouts is not None  # only a client timeout gives up
            self._leave_outside(req, timeout_reason(self.timeouts.timeout_s, "as its first token came, before the KV transfer"))
            return
        # the decode replica gets the prompt's KV and that token
        self.in_transfer[req.request_id] = req
        self.env.process(self._transfer(req))

    def _transfer(self, req: Request):
        assert self.link is not None
        yield self.env.timeout(self.link.seconds(self.kv_bytes_per_token * req.prompt_tokens))
        if self.in_transfer.pop(req.request_id, None) is None:
            return  # its client gave up meanwhile
        rep = self._pick(req, self.decode_pool)
        self.replica_of[req.request_id] = rep.index
        # straight to the engine: the KV arrives over the link from the prefill replica, not
        # through the decode replica's API server (the client's request passed one already)
        rep.server.engine.submit(req, req.arrival_s)

    # ------------------------------------------------------- client timeouts
    def _time_out(self, req: Request, sent_s: float) -> None:
        """The client gives up on ``req``, sent at ``sent_s`` (its timeout expired now)."""
        assert self.timeouts is not None  # only the timeouts call this
        timeout_s = self.timeouts.timeout_s
        rid = req.request_id
        if self.in_router.pop(rid, None) is not None:
            req.arrival_s = sent_s
            self._leave_outside(req, timeout_reason(timeout_s, "in the router"))
        elif rid in self.in_prefill:
            # the prefill replica aborts the prefill phase (its row there is a prefill phase);
            # the client's row is the fleet's, written when that phase leaves (_prefill_done):
            # now, or when the step ending now shows whether it produced the first token
            self.gave_up_in_prefill.add(rid)
            self.replicas[int(self.prefill_of[rid])].server.time_out(self.prefill_phase[rid], timeout_s, sent_s)
        elif self.in_transfer.pop(rid, None) is not None:
            self._leave_outside(req, timeout_reason(timeout_s, "during the KV transfer to a decode replica"))
        else:  # in the replica it was sent (or handed over) to
            self.replicas[int(self.replica_of[rid])].server.time_out(req, timeout_s, sent_s)

    def _leave_outside(self, req: Request, reason: str) -> None:
        """``req`` times out now outside any replica's engine: the fleet records it."""
        req.status = RequestStatus.TIMED_OUT
        req.finish_s = self.env.now
        req.reject_reason = reason
        self.sink.on_request_done(req)
        self._fleet_leave(req, admitted=True)

    # ------------------------------------------------------------------- run
    def run(self, progress=None) -> SimResult:
        """Run to the horizon (or until every request left) and tabulate (see
        :meth:`sim.core.simulation.Simulation.run`; the tables gain a ``replica`` column and
        :attr:`SimResult.replicas` has one row per replica). Call once."""
        cfg = self.cfg
        total = len(self.workload)
        if progress is not None:
            self.progress = percent_progress(progress, total)
        stopped = run_until_done(self.env, cfg.horizon_s)
        self.progress = None
        inside: list[Request] = [*self.in_router.values(), *self.in_prefill.values(), *self.in_transfer.values()]
        for rep in self.replicas:
            rep.server.sync()
            if rep.role != "prefill":
                inside.extend(rep.server.requests_inside())
        for req in sorted(inside, key=lambda r: r.request_id):
            self.sink.on_request_done(req, "in_flight")
        self.sink.add_not_sent(self.workload.not_sent_columns(self.num_sent))
        if progress is not None:
            progress(total, total)
        stats = [rep.sink.step_stats() for rep in self.replicas]
        num_steps = sum(s["num_steps"] for s in stats)
        batch_tokens = sum(rep.sink.sum_batch_tokens for rep in self.replicas)
        step_stats = {
            "num_steps": num_steps,
            "num_mixed_steps": sum(s["num_mixed_steps"] for s in stats),
            "mean_batch_tokens": batch_tokens / num_steps if num_steps else math.nan,
        }
        streamed = self.spill is not None
        timeouts = self.timeouts is not None
        if streamed:
            for sink in [*(rep.sink for rep in self.replicas), self.sink]:
                sink.finish()  # the last chunks go out through _emit / the replicas' spills
            assert self._ordered is not None
            self._ordered.flush()
            req_df = requests_frame({name: [] for name in self.sink.columns})
            req_df["replica"] = np.empty(0, dtype=np.int64)
            if self.disaggregated:
                req_df["prefill_replica"] = np.empty(0, dtype=np.int64)
            step_df = steps_frame([])
            step_df.insert(0, "replica", np.empty(0, dtype=np.int64))
            itls = np.empty(0)
            itl_hist = None
            if cfg.record_itls:
                itl_hist = LogHistogram()
                for rep in self.replicas:
                    h = rep.sink.itl_histogram
                    assert h is not None  # streaming sinks fold their ITLs into one
                    itl_hist.counts += h.counts
                    itl_hist.count += h.count
                    itl_hist.total_s += h.total_s
            summary = self.fleet_summary.summary(step_stats, itl_hist)
            replicas = self._replica_table_streamed(summary)
            groups = {
                g: self.group_summaries[g].summary(_sink_steps([r for r in self.replicas if r.group == g]), None)
                for g in dict.fromkeys(r.group for r in self.replicas)
            }
        else:
            # one row per client request: from the replicas that served them (a prefill
            # replica's rows are prefill phases, not client requests) and from the fleet's sink
            columns: dict[str, list] = {name: [] for name in self.sink.columns}
            for sink in [*(rep.sink for rep in self.replicas if rep.role != "prefill"), self.sink]:
                sink.finish()
                for name in self.sink.columns:
                    columns[name].extend(sink.request_columns[name])
            req_df = requests_frame(columns)
            ids = req_df["request_id"].to_numpy(dtype=np.int64)
            req_df["replica"] = self.replica_of[ids]
            if self.disaggregated:
                req_df["prefill_replica"] = self.prefill_of[ids]
            step_frames = []
            for rep in self.replicas:
                st = rep.sink.steps_frame()
                st.insert(0, "replica", np.full(len(st), rep.index, dtype=np.int64))
                step_frames.append(st)
            step_df = pd.concat(step_frames, ignore_index=True)
            itls = np.concatenate([np.asarray(rep.sink.itls_s, dtype=float) for rep in self.replicas]) if cfg.record_itls else np.empty(0)
            summary = summarize(req_df, step_stats, itls if cfg.record_itls else None, timeouts=timeouts)
            replicas = self._replica_table(req_df, step_df, summary)
            groups = {g: self._group_summary(req_df, step_df, replicas, g) for g in dict.fromkeys(replicas["group"])}
        summary["num_replicas"] = len(self.replicas)
        summary["load_imbalance_requests"] = _imbalance(replicas, "requests_routed")
        summary["load_imbalance_busy"] = _imbalance(replicas, "busy_s")
        first = self.replicas[0].server
        end_s = float(self.env.now) if cfg.horizon_s is not None or stopped or self.refresh_s == 0 else float(self.last_leave_s)
        derived = dict(
            first.limits,
            cost_model=first.cost_model.name,
            formula=first.cost_settings.formula,
            policy=cfg.scheduler.policy,
            end_s=end_s,
            num_steps=num_steps,
            streamed=streamed,
            router=self.cfg.cluster.router.policy if self.cfg.cluster else "",
            groups=groups,
        )
        if stopped:
            derived["stopped_early"] = stopped
        return SimResult(cfg, req_df, step_df, itls, summary, derived, replicas=replicas)

    def _group_summary(self, req_df: pd.DataFrame, step_df: pd.DataFrame, replicas: pd.DataFrame, group: str) -> dict:
        """The summary of the requests that reached ``group`` (a prefill group: those that
        prefilled there) and of its steps; requests refused by admission reach no group."""
        members = replicas.loc[replicas["group"] == group, "replica"]
        role = replicas.loc[replicas["group"] == group, "role"].iloc[0]
        column = "prefill_replica" if role == "prefill" else "replica"
        return summarize(req_df[req_df[column].isin(members)], _group_steps(step_df, replicas, group), timeouts=self.timeouts is not None)

    def _replica_table_streamed(self, summary: dict) -> pd.DataFrame:
        """The replica table from what streaming kept: counters, the replicas' own streaming
        summaries (a prefill replica's: its prefill phases, whose TTFT is the client's)."""
        duration = summary.get("duration_s") or 0.0
        rows = []
        for rep in self.replicas:
            ss = rep.sink.streaming_summary
            assert ss is not None  # streaming sinks keep one
            own = ss.summary(rep.sink.step_stats(), None)
            rows.append(
                _replica_row(
                    rep,
                    duration,
                    finished=int(own["num_finished"]),
                    busy_s=rep.busy_s,
                    num_steps=int(rep.sink.num_steps),
                    mixed_steps=int(rep.sink.num_mixed_steps),
                    preemptions=rep.preemptions,
                    ttft_p99_ms=float(own["ttft_p99_ms"]),
                    e2e_p99_ms=math.nan if rep.role == "prefill" else float(own["e2e_p99_ms"]),
                )
            )
        return pd.DataFrame(rows)

    def _replica_table(self, req_df: pd.DataFrame, step_df: pd.DataFrame, summary: dict) -> pd.DataFrame:
        duration = summary.get("duration_s") or 0.0
        rows = []
        fin = req_df[req_df["status"] == RequestStatus.FINISHED.value]
        # each table split by replica once (a mask per replica would cost replicas × rows)
        steps_of = dict(tuple(step_df.groupby("replica", sort=False)))
        finished_at = dict(tuple(fin.groupby("replica", sort=False)))
        prefilled_at = dict(tuple(req_df[req_df["ttft_s"].notna()].groupby("prefill_replica", sort=False))) if "prefill_replica" in req_df.columns else {}
        no_steps, no_requests = step_df.iloc[:0], req_df.iloc[:0]
        for rep in self.replicas:
            st = steps_of.get(rep.index, no_steps)
            if rep.role == "prefill":
                # a prefill replica finishes prefills: the requests whose first token it produced
                mine = prefilled_at.get(rep.index, no_requests)
                e2e_p99_ms = math.nan
            else:
                mine = finished_at.get(rep.index, no_requests)
                e2e_p99_ms = float(np.percentile(mine["e2e_s"], 99) * 1e3) if len(mine) else math.nan
            rows.append(
                _replica_row(
                    rep,
                    duration,
                    finished=int(len(mine)),
                    busy_s=float(st["duration_s"].sum()),
                    num_steps=int(len(st)),
                    mixed_steps=int(st["is_mixed"].sum()),
                    preemptions=int(st["num_preempted"].sum()),
                    ttft_p99_ms=float(np.percentile(mine["ttft_s"], 99) * 1e3) if len(mine) else math.nan,
                    e2e_p99_ms=e2e_p99_ms,
                )
            )
        return pd.DataFrame(rows)


def _replica_row(
    rep: Replica,
    duration_s: float,
    *,
    finished: int,
    busy_s: float,
    num_steps: int,
    mixed_steps: int,
    preemptions: int,
    ttft_p99_ms: float,
    e2e_p99_ms: float,
) -> dict:
    """One row of the replica table (columns in :class:`SimResult.replicas` order)."""
    return {
        "replica": rep.index,
        "group": rep.group,
        "role": rep.role,
        "gpu": rep.cfg.gpu,
        "tensor_parallel_size": rep.cfg.tensor_parallel_size,
        "requests_routed": rep.num_routed,
        "finished": finished,
        "busy_s": busy_s,
        "busy_fraction": busy_s / duration_s if duration_s > 0 else math.nan,
        "num_steps": num_steps,
        "mixed_steps": mixed_steps,
        "preemptions": preemptions,
        "ttft_p99_ms": ttft_p99_ms,
        "e2e_p99_ms": e2e_p99_ms,
        "num_gpu_blocks": rep.server.limits["num_gpu_blocks"],
    }


def _imbalance(replicas: pd.DataFrame, column: str) -> float:
    """Load imbalance: max / mean of ``column`` over the replicas of each group (replicas of
    one shape and role should share the load), the largest over groups; 1 = even."""
    worst = 1.0
    for _, g in replicas.groupby("group", sort=False):
        mean = float(g[column].mean())
        if mean > 0:
            worst = max(worst, float(g[column].max()) / mean)
    return worst


def _sink_steps(replicas: list[Replica]) -> dict:
    """Step statistics of some replicas from their sinks' counters (streaming mode)."""
    n = sum(r.sink.num_steps for r in replicas)
    tokens = sum(r.sink.sum_batch_tokens for r in replicas)
    return {"num_steps": n, "num_mixed_steps": sum(r.sink.num_mixed_steps for r in replicas), "mean_batch_tokens": tokens / n if n else math.nan}


def _group_steps(step_df: pd.DataFrame, replicas: pd.DataFrame, group: str) -> dict:
    st = step_df[step_df["replica"].isin(replicas.loc[replicas["group"] == group, "replica"])]
    n = int(len(st))
    tokens = float((st["num_prefill_tokens"] + st["num_decode_reqs"]).sum())
    return {"num_steps": n, "num_mixed_steps": int(st["is_mixed"].sum()), "mean_batch_tokens": tokens / n if n else math.nan}
