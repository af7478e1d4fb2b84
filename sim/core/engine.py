"""One simulated vLLM-like server on SimPy: the engine step loop.

The engine owns time. Each iteration: the scheduler plans a step, the cost model prices it,
the engine advances the clock by the step's duration, then applies the progress (first
tokens, inter-token gaps, completions) and hands records to the metrics sink.

Same-time ordering: arrival < step < completion. Before planning a step at time *t* the engine
lets every other event already due at *t* run first (``env.peek() == env.now``), so a request
arriving exactly when a step ends joins the next step; completions happen at the step's end.
When there is no work the engine sleeps until :meth:`Engine.submit` wakes it.

With ``async_scheduling`` (vLLM's ``--async-scheduling``) the scheduler plans step k+1 when
step k launches, overlapping its CPU work with the GPU's. A request that reaches the engine
while step k runs (or exactly when it ends) therefore waits in a staging list and joins the
scheduler's queue only when step k+1 launches, i.e. it can run in step k+2 at the earliest. An
idle engine admits a request at once; a planned step that would be empty admits the staged
requests at once too (the real engine re-plans immediately).

Client timeouts (:meth:`Engine.time_out`): when a client gives up on a request, the request
leaves at that instant (recorded ``timed_out``, its closed-loop user sends the next one) with
the output delivered so far. The scheduler drops it at once, unless the step running at that
instant holds it: vLLM handles aborts between engine steps, so it then keeps its seat and KV
until that step ends, and the token the step computes for it is never delivered. A request
whose last token comes exactly at its deadline has finished.
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heappop, heappush
from typing import cast

import numpy as np
import simpy
from simpy.core import NORMAL

from sim.cost.base import CostModel, DecodePricer, decode_step_fn
from sim.entities import Request, RequestStatus
from sim.errors import SimulationError
from sim.records.metrics import MetricsSink, request_record
from sim.scheduler.base import NO_CAPABILITIES


class SimEnvironment(simpy.Environment):
    """A SimPy environment that can also schedule a timeout at an absolute time.

    ``env.timeout(d)`` lands on ``now + d``, and a sum of step durations accumulated one by
    one cannot always be reached by one such addition (rounding); :meth:`timeout_at` lands on
    the given double exactly, so a fast-forwarded stretch of steps ends on the same instant as
    the step-by-step loop. (Uses SimPy 4's event queue layout, ``(time, priority, eid, event)``.)
    """

    def timeout_at(self, time_s: float) -> simpy.Event:
        if not time_s >= self._now:
            raise ValueError(f"timeout_at({time_s!r}) is in the past (now {self._now!r})")
        event = simpy.Event(self)
        event._ok = True
        event._value = None
        heappush(self._queue, (time_s, NORMAL, next(self._eid), event))
        return event


class CancellableEnvironment(SimEnvironment):
    """A :class:`SimEnvironment` whose :meth:`timeout_at` events can be withdrawn
    (:meth:`cancel`): a withdrawn event leaves the queue unprocessed — it neither moves the
    clock nor is the next event for :meth:`peek`, so it bounds no fast-forward window. For the
    client timeouts' wake-ups; runs without a timeout use the plain class and do not pay the
    check on every event."""

    def __init__(self) -> None:
        super().__init__()
        self._withdrawn: set[simpy.Event] = set()

    def cancel(self, event: simpy.Event) -> None:
        """Withdraw ``event`` (made by :meth:`timeout_at`, not processed yet)."""
        self._withdrawn.add(event)

    def _drop_withdrawn(self) -> None:
        queue, withdrawn = self._queue, self._withdrawn
        while withdrawn and queue and queue[0][3] in withdrawn:
            withdrawn.discard(heappop(queue)[3])

    def peek(self) -> float:
        self._drop_withdrawn()
        return super().peek()

    def step(self) -> None:
        self._drop_withdrawn()
        super().step()


def timeout_reason(timeout_s: float, where: str) -> str:
    """The ``reject_reason`` of a request its client gave up on (``where``: what it was doing)."""
    return f"client timeout after {timeout_s:g} s {where}"


class Engine:
    """Drives one server. ``submit`` is called by arrival processes at the arrival time."""

    def __init__(
        self,
        env: simpy.Environment,
        scheduler,
        cost_model: CostModel,
        sink: MetricsSink,
        *,
        max_model_len: int,
        kv_capacity_tokens: int,
        max_prefill_tokens_unchunked: int | None = None,
        fast_forward: bool = True,
        async_scheduling: bool = False,
        on_leave: Callable[[Request], None] | None = None,
        kv_load_s_per_block: float = 0.0,
    ) -> None:
        self.env = env
        self.scheduler = scheduler
        self.cost_model = cost_model
        self.sink = sink
        self.max_model_len = max_model_len
        self.kv_capacity_tokens = kv_capacity_tokens
        self.max_prefill_tokens_unchunked = max_prefill_tokens_unchunked
        self._idle: simpy.Event | None = None
        self.async_scheduling = async_scheduling
        self.on_leave = on_leave  # called when a request leaves (finished or rejected), e.g. a fleet's load counters
        # CPU KV-offloading tier: a step that admits requests with blocks loaded from it lasts
        # longer by the transfer (blocks x seconds per block over the host link)
        self.kv_load_s_per_block = kv_load_s_per_block
        # async scheduling: requests that reached the engine while a step ran, in arrival order,
        # with the start time of the step they arrived in (they may join the step after next)
        self._staged: list[tuple[float, Request]] = []
        self._step_start_s: float | None = None  # start of the running step (None when idle)
        # What the scheduler promises beyond the base contract (sim.scheduler.base): fast-forward
        # needs plain decodes; deferred decodes skip per-request work in all-decode steps, tied
        # to fast_forward so that fast_forward=False runs the plain step loop.
        caps = getattr(scheduler, "capabilities", NO_CAPABILITIES)
        self.fast_forward = fast_forward and caps.plain_decodes
        self.deferred = fast_forward and caps.deferred_decodes and scheduler.defer_decodes()
        # client timeouts: the running step's end (None between steps), and the requests whose
        # client gave up while that step ran, which leave the scheduler when it ends
        self._step_end_s: float | None = None
        self._in_window = False  # a fast-forward window is being applied
        self._aborted: list[Request] = []  # left already; their seat and KV go at the step's end
        self._due: list[tuple[Request, float]] = []  # deadline = the running step's end: finished first?
        self.num_submitted = 0
        self.num_steps = 0
        self.process = env.process(self._loop())

    # -------------------------------------------------------------- admission
    def reject_reason(self, req: Request) -> str:
        """Why ``req`` can never be served here ('' if it can)."""
        total = req.prompt_tokens + req.output_tokens
        if total > self.max_model_len:
            return f"prompt+output {total} tokens > max_model_len {self.max_model_len}"
        if total > self.kv_capacity_tokens:
            return f"prompt+output {total} tokens > KV cache capacity {self.kv_capacity_tokens} tokens"
        if self.max_prefill_tokens_unchunked is not None and req.prompt_tokens > self.max_prefill_tokens_unchunked:
            return f"prompt {req.prompt_tokens} tokens > max_num_batched_tokens {self.max_prefill_tokens_unchunked} with chunked prefill disabled"
        return ""

    def submit(self, req: Request, sent_s: float | None = None) -> None:
        """A request reaches the engine now; ``sent_s`` (≤ now) is when the client sent it
        (default now), recorded as its arrival. Rejected requests leave at once with a reason."""
        req.arrival_s = self.env.now if sent_s is None else sent_s
        self.num_submitted += 1
        reason = self.reject_reason(req)
        if reason:
            req.status = RequestStatus.REJECTED
            req.reject_reason = reason
            self.sink.on_request_done(req)
            self._signal_done(req)
            return
        if self.async_scheduling and self._step_start_s is not None:
            self._staged.append((self._step_start_s, req))  # the next step is already planned
            return
        self.scheduler.add_request(req)
        if self._idle is not None and not self._idle.triggered:
            self._idle.succeed()

    @property
    def staged_requests(self) -> list[Request]:
        """Requests in the engine that the scheduler has not seen yet (async scheduling)."""
        return [req for _, req in self._staged]

    def _admit_staged(self, launched_s: float | None) -> None:
        """Async scheduling: hand the scheduler the staged requests that arrived during a step
        that started before ``launched_s`` (all of them when None). Planning step k+1 at the
        launch of step k, the scheduler saw what arrived before step k started."""
        staged = self._staged
        if launched_s is None:
            k = len(staged)
        else:
            k = 0
            while k < len(staged) and staged[k][0] < launched_s:
                k += 1
        for _, req in staged[:k]:
            self.scheduler.add_request(req)
        del staged[:k]

    def _record_finish(self, req: Request, end_s: float) -> None:
        """``req`` produced its last token at ``end_s`` (the scheduler already released it):
        record it and wake whoever waits on it."""
        req.finish_s = end_s
        self.sink.on_request_done(req)
        self._signal_done(req)

    # ---------------------------------------------------------- client timeouts
    def time_out(self, req: Request, timeout_s: float) -> None:
        """The client gave up on ``req`` now, ``timeout_s`` after it sent it (see the module
        docstring). Precondition: ``req`` was submitted here and has not left."""
        status = req.status
        sched = self.scheduler
        if status is RequestStatus.RUNNING:
            if self._in_window:
                # windows stop before every pending event, the clients' wake-ups included
                raise SimulationError(f"request {req.request_id} timed out inside a fast-forward window at t={self.env.now:.6f}s")
            if self._step_end_s is None:
                sched.abort(req)  # settles a deferred request's progress
                self.leave_timed_out(req, timeout_s, self._where_running(req.num_output_generated, req))
            elif self._step_end_s == self.env.now:
                self._due.append((req, timeout_s))  # the step ending now may finish it: decided then
            else:
                # the step running now keeps it; what the client received is the progress of
                # the last step that ended (a deferred request's object is stale until then)
                generated, max_itl_s = sched.progress_of(req) if self.deferred else (req.num_output_generated, req.max_itl_s)
                self._aborted.append(req)
                self._record_timeout(req, timeout_s, self._where_running(generated, req), generated, max_itl_s)
        elif status is RequestStatus.WAITING:
            sched.abort(req)  # holds no KV and is in no step: leaves now, even while a step runs
            where = "while waiting after a preemption" if req.num_preemptions else "while waiting to be scheduled"
            self.leave_timed_out(req, timeout_s, where)
        else:  # reached the engine while a step ran (async scheduling): the scheduler never saw it
            k = next((i for i, (_, r) in enumerate(self._staged) if r is req), None)
            if k is None:
                raise SimulationError(f"request {req.request_id} timed out in an engine that does not hold it (status {status.value})")
            del self._staged[k]  # in place: the step loop holds this list
            self.leave_timed_out(req, timeout_s, "before its first step (staged by async scheduling)")

    @staticmethod
    def _where_running(generated: int, req: Request) -> str:
        if generated == 0:
            return "while running, before its first token"
        return f"while running, after {generated} of {req.output_tokens} output tokens"

    def leave_timed_out(self, req: Request, timeout_s: float, where: str) -> None:
        """Record ``req`` timed out now with what its object holds (it is in no scheduler) and
        let it leave. For a request the engine never got (the API server's delay) too."""
        req.status = RequestStatus.TIMED_OUT
        self._record_timeout(req, timeout_s, where, req.num_output_generated, req.max_itl_s)

    def _record_timeout(self, req: Request, timeout_s: float, where: str, generated: int, max_itl_s: float) -> None:
        req.finish_s = self.env.now
        req.reject_reason = timeout_reason(timeout_s, where)
        rec = request_record(req, RequestStatus.TIMED_OUT.value)
        rec.generated_tokens = generated
        rec.max_itl_s = max_itl_s
        self.sink.add_record(rec)
        self._signal_done(req)

    @property
    def leaving(self) -> list[Request]:
        """Requests that timed out during the running step: they left (recorded, signalled)
        but hold their seat and KV blocks until the step ends."""
        return self._aborted

    def _drop_undelivered(self, out, sampled: list[Request], finished: list[Request]) -> tuple[list[Request], list[Request], int]:
        """The running step's progress without the requests that timed out during it: the
        tokens it computed for them are never delivered (no gap, no first token, no finish).
        Returns ``(sampled, finished, deferred gaps to record)``."""
        gone = set(self._aborted)
        n_def = out.num_deferred
        if n_def:
            n_def -= sum(1 for r in out.requests[:n_def] if r in gone)
        return [r for r in sampled if r not in gone], [r for r in finished if r not in gone], n_def

    def _release_aborted(self) -> None:
        """The step ended: the requests that timed out during it leave the scheduler (those it
        finished left it already) and free their KV."""
        for req in self._aborted:
            if req.status is RequestStatus.RUNNING:
                self.scheduler.abort(req)
            req.status = RequestStatus.TIMED_OUT
        self._aborted = []

    def _resolve_due(self) -> None:
        """The step that ended at some requests' deadlines: those it did not finish time out
        now, with the tokens it delivered."""
        due, self._due = self._due, []
        for req, timeout_s in due:
            if req.status is RequestStatus.RUNNING:
                self.scheduler.abort(req)
                self.leave_timed_out(req, timeout_s, self._where_running(req.num_output_generated, req))

    def _signal_done(self, req: Request) -> None:
        if self.on_leave is not None:
            self.on_leave(req)
        ev = req.done_event
        if ev is not None and not ev.triggered:
            ev.succeed(req)

    # -------------------------------------------------------------- step loop
    def _loop(self):
        env = self.env
        sched = self.scheduler
        price = self.cost_model.price
        sink = self.sink
        # fast-forward needs a cost model that prices decode-only steps from their aggregates
        ff = self.fast_forward and hasattr(self.cost_model, "price_decode")
        carried_preemptions = 0
        deferred = self.deferred
        staged = self._staged
        prev_start_s: float | None = None  # start of the step that just ended (async scheduling)
        while True:
            if not sched.has_work() and not staged:
                self._step_start_s = None
                prev_start_s = None
                self._idle = env.event()
                yield self._idle
                self._idle = None
            if env.peek() == env.now:
                yield env.timeout(0)  # let arrivals due now join this step (staged if async)
                if not sched.has_work() and not staged:
                    continue  # every request it held timed out meanwhile
            if staged:
                # step k+1 was planned when step k launched: it holds what arrived before then
                self._admit_staged(prev_start_s if sched.has_work() else None)
                if not sched.has_work():
                    self._admit_staged(None)
            if ff and not sched.waiting and sched.running and not carried_preemptions and not staged:
                if deferred:
                    # a request finishing within MIN_WINDOW_STEPS rules a window out; settling
                    # the deferred requests for nothing would cost more than the check
                    if sched.deferred_finish_within(self.MIN_WINDOW_STEPS):
                        window = None
                    else:
                        sched.sync()
                        window = self._decode_window()
                else:
                    window = self._decode_window()
                if window is not None:
                    self._in_window = True
                    yield from self._fast_forward(*window)
                    self._in_window = False
                    self._step_start_s = prev_start_s = window[0][-2]  # the window's last step
                    continue
            start_s = env.now
            out = sched.schedule(start_s)
            if out.is_empty and staged and not out.preempted:
                self._admit_staged(None)  # the real engine re-plans at once with them
                out = sched.schedule(start_s)
            if out.is_empty:
                if out.preempted:
                    # vLLM V1 plans an empty step when the request that needed KV preempted
                    # itself (scheduler.py: "No more request to preempt"): nothing runs, no
                    # time passes, and the next plan starts from the freed blocks. The
                    # preemptions are reported with the next executed step.
                    carried_preemptions += len(out.preempted)
                    continue
                raise SimulationError(
                    f"scheduler planned an empty step at t={start_s:.6f}s with {sched.num_waiting} waiting and "
                    f"{sched.num_running} running requests (work conservation broken)"
                )
            cost = price(out.batch)
            if not cost.total_s > 0:
                raise SimulationError(f"cost model {self.cost_model.name!r} priced a non-empty step at {cost.total_s} s")
            step_s = cost.total_s
            if out.kv_loads:
                step_s += self._kv_loads(out.kv_loads)
            self._step_start_s = prev_start_s = start_s
            self._step_end_s = start_s + step_s  # where env.timeout lands (same addition)
            yield env.timeout(step_s)
            self._step_end_s = None
            end_s = env.now
            sampled, finished = sched.update_from_output(out, end_s)
            num_deferred = out.num_deferred
            if self._aborted:
                sampled, finished, num_deferred = self._drop_undelivered(out, sampled, finished)
            if num_deferred:
                sink.on_uniform_gaps(out.deferred_gap_s, num_deferred)
            sink.on_tokens(sampled, end_s)
            batch = out.batch
            sink.on_step(
                (
                    self.num_steps,
                    start_s,
                    step_s,
                    batch.num_prefill_tokens,
                    batch.num_decode_reqs,
                    batch.num_prefill_reqs,
                    sched.num_running,
                    len(sched.waiting),
                    batch.num_prefill_reqs > 0 and batch.num_decode_reqs > 0,
                    sched.kv.num_used_blocks,
                    len(out.preempted) + carried_preemptions,
                )
            )
            carried_preemptions = 0
            self.num_steps += 1
            for req in finished:
                self._record_finish(req, end_s)
            if self._aborted:
                self._release_aborted()
            if self._due:
                self._resolve_due()

    def _kv_loads(self, loads: list[tuple[Request, int]]) -> float:
        """Record the step's loads from the CPU offloading tier (per request, in tokens) and
        return their transfer time: the blocks go over the host link before the step's forward
        pass can read them (one link per GPU; each GPU loads its share of every block)."""
        block_size = self.scheduler.kv.block_size
        blocks = 0
        for req, n in loads:
            self.sink.on_kv_load(req.request_id, n * block_size)
            blocks += n
        load_s = blocks * self.kv_load_s_per_block
        self.sink.on_kv_load_time(load_s)
        return load_s

    # ------------------------------------------------------------ fast-forward
    MAX_WINDOW_STEPS = 4096  # bounds the per-window arrays
    MIN_WINDOW_STEPS = 2

    def _decode_window(self):
        """A stretch of pure-decode steps that can be applied at once, or None.

        Preconditions checked here: nothing waits; every running request is an ordinary decode
        that produced a token at ``now`` (so it was in the previous step and every gap equals
        the step time); all fit the budget. The window ends before the first step that would
        start at or after the next pending event (arrivals, horizon) or need KV blocks that
        are not free now (no preemption inside). Inside it the scheduler would plan every
        running request, one token each, every step. Requests may finish inside (the batch
        then shrinks) unless something reacts to the finish at that instant: a closed-loop
        client waiting on it, or the prefix cache, whose block hashes the step loop updates on
        every step; the window then stops before that request's last step. Nothing is loaded
        from a CPU offloading tier inside a window: loads happen only when a waiting request is
        admitted, and a window needs an empty wait queue (the allocations' evictions store to the
        tier in step-loop order, as the step loop would).

        Returns ``(times, costs, decodes, computed, held, left)``: step boundaries (k + 1
        instants from now), step prices, requests decoded per step, and per running request
        its computed tokens, blocks held and steps to its last token.
        """
        sched = self.scheduler
        running = sched.running
        n = len(running)
        if n > sched.limits.max_num_batched_tokens:
            return None
        now = self.env.now
        kv = sched.kv
        through = not kv.enable_prefix_caching
        cap = self.MAX_WINDOW_STEPS
        last = 0
        left: list[int] = []
        ctx: list[int] = []
        for r in running:
            if r.num_output_generated == 0 or r.last_token_s != now or r.num_computed_tokens != r.num_tokens - 1:
                return None
            lft = r.output_tokens - r.num_output_generated
            if not through or r.done_event is not None:
                if lft - 1 < cap:
                    cap = lft - 1  # the step that finishes it runs normally
            elif lft > last:
                last = lft
            left.append(lft)
            ctx.append(r.num_computed_tokens)
        k_max = min(cap, last) if last else cap  # no step after the last request finished
        if k_max < self.MIN_WINDOW_STEPS:
            return None
        # KV: blocks needed after k steps must be free now (frees inside the window not counted)
        bs = kv.block_size
        computed = np.array(ctx, dtype=np.int64)
        left_arr = np.array(left, dtype=np.int64)
        held = np.fromiter((kv.blocks_of(r.request_id) for r in running), dtype=np.int64, count=n)
        free = kv.num_free_blocks

        def extra_blocks(k: int) -> int:
            return int(np.maximum(-(-(computed + np.minimum(left_arr, k)) // bs) - held, 0).sum())

        if extra_blocks(k_max) > free:
            lo, hi = 0, k_max  # largest k with extra_blocks(k) <= free
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if extra_blocks(mid) <= free:
                    lo = mid
                else:
                    hi = mid - 1
            k_max = lo
            if k_max < self.MIN_WINDOW_STEPS:
                return None
        # step times, accumulated exactly as the clock would (t += duration); the batch is
        # priced per segment between finishes (count, context sum and maximum of those left)
        nxt = self.env.peek()
        t = now
        times = [now]
        costs: list[float] = []
        decodes: list[int] = []
        order = sorted(range(n), key=left.__getitem__)
        pos = 0
        alive, ctx_sum, ctx_max = n, sum(ctx), max(ctx)
        j = 1  # the next step, 1-based
        while j <= k_max:
            dropped = False
            while left[order[pos]] < j:  # finished in an earlier step of the window
                alive -= 1
                ctx_sum -= ctx[order[pos]]
                pos += 1
                dropped = True
            if dropped:
                ctx_max = max(ctx[i] for i in order[pos:])
            seg_end = min(k_max, left[order[pos]])  # a finish (or the window's end) closes the segment
            step_s = decode_step_fn(cast(DecodePricer, self.cost_model), alive)
            for jj in range(j - 1, seg_end):  # contexts grew by jj tokens before step jj + 1
                c = step_s(ctx_sum + jj * alive, ctx_max + jj)
                if not c > 0:
                    raise SimulationError(f"cost model {self.cost_model.name!r} priced a non-empty step at {c} s")
                t_next = t + c
                if not t_next < nxt:
                    break
                t = t_next
                times.append(t)
                costs.append(c)
            else:
                decodes.extend([alive] * (seg_end - j + 1))
                j = seg_end + 1
                continue
            decodes.extend([alive] * (len(costs) - len(decodes)))
            break
        if len(costs) < self.MIN_WINDOW_STEPS:
            return None
        return times, costs, decodes, computed, held, left_arr

    def _fast_forward(self, times: list[float], costs: list[float], decodes: list[int], computed: np.ndarray, held: np.ndarray, left: np.ndarray):
        """Apply a decode window (see :meth:`_decode_window`): the clock advances step by
        step, but request state, KV and records are updated in bulk; the records are exactly
        those the step-by-step loop would have written."""
        env = self.env
        sched = self.scheduler
        kv = sched.kv
        sink = self.sink
        running = list(sched.running)
        n = len(running)
        k = len(costs)
        base_used = kv.num_used_blocks
        grow_l = np.minimum(left, k).tolist()  # steps each request decodes in the window
        finishes = sorted((s, i) for i, s in enumerate(left.tolist()) if s <= k)  # step order, then running order
        # Allocate the window's new blocks (and free the finished requests' blocks) in the
        # order the step loop would — by step; within a step, allocations in running order,
        # then frees — so the free queue's order stays identical.
        bs = kv.block_size
        events = []
        for i in range(n):
            j = int(held[i]) * bs - int(computed[i]) + 1  # first step whose token needs a new block
            g = grow_l[i]
            while j <= g:
                events.append((j, 0, i))
                j += bs
        events.extend((s, 1, i) for s, i in finishes)
        events.sort()
        for j, kind, i in events:
            if kind:
                kv.free(running[i])
            elif not kv.allocate_slots(running[i], j):
                raise SimulationError("fast-forward KV allocation failed after the window check")
        # The window ends on the instant the step loop would reach by adding the durations one
        # by one; a plain environment gets one timeout per step (same arithmetic).
        end = times[-1]
        if isinstance(env, SimEnvironment):
            yield env.timeout_at(end)
        else:
            timeout = env.timeout
            for c in costs:
                yield timeout(c)
        if env.now != end:
            raise SimulationError(f"fast-forward clock drift: {env.now!r} != {end!r}")
        gaps = np.diff(np.array(times))  # times[j + 1] - times[j], the same subtraction per element
        running_max = np.maximum.accumulate(gaps).tolist()  # largest gap of the first j + 1 steps
        for r, g in zip(running, grow_l):
            r.num_computed_tokens += g
            r.num_output_generated += g
            r.last_token_s = times[g]
            if running_max[g - 1] > r.max_itl_s:
                r.max_itl_s = running_max[g - 1]
        if kv.enable_prefix_caching:
            # the step loop hashes a block on the step that fills it; the window allocated new
            # blocks only, so a block filled after a request's last allocation is hashed here
            # (a preemption right after the window must free it as cached, as the loop would)
            for r in running:
                kv.cache_computed_blocks(r)
        decodes_arr = np.array(decodes, dtype=np.int64)
        sink.on_gaps(np.repeat(gaps, decodes_arr))
        steps = np.arange(1, k + 1, dtype=np.int64)
        need = -(-(computed[:, None] + np.minimum(steps[None, :], left[:, None])) // bs) - held[:, None]
        used = base_used + np.maximum(need, 0).sum(axis=0)
        num_running = decodes_arr
        if finishes:
            owned_at_finish = held + np.maximum(-(-(computed + left) // bs) - held, 0)
            gone = left[:, None] <= steps[None, :]
            used = used - (gone * owned_at_finish[:, None]).sum(axis=0)
            num_running = decodes_arr - np.bincount([s for s, _ in finishes], minlength=k + 1)[1:]
        if int(used[-1]) != kv.num_used_blocks:
            raise SimulationError(f"fast-forward KV accounting: {int(used[-1])} != {kv.num_used_blocks} blocks in use")
        first = self.num_steps
        sink.on_decode_window(first, times, costs, decodes_arr, num_running, used)
        self.num_steps += k
        if finishes:
            gone_ids = {i for _, i in finishes}
            sched.running = [r for i, r in enumerate(running) if i not in gone_ids]
            for s, i in finishes:
                req = running[i]
                req.status = RequestStatus.FINISHED
                self._record_finish(req, times[s])
