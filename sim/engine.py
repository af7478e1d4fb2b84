"""One simulated vLLM-like server on SimPy: the engine step loop.

The engine owns time. Each iteration: the scheduler plans a step, the cost model prices it,
the engine advances the clock by the step's duration, then applies the progress (first
tokens, inter-token gaps, completions) and hands records to the metrics sink.

Same-time ordering: arrival < step < completion. Before planning a step at time *t* the engine
lets every other event already due at *t* run first (``env.peek() == env.now``), so a request
arriving exactly when a step ends joins the next step; completions happen at the step's end.
When there is no work the engine sleeps until :meth:`Engine.submit` wakes it.
"""

from __future__ import annotations

from heapq import heappush

import numpy as np
import simpy
from simpy.core import NORMAL

from .cost.base import CostModel, decode_step_fn
from .entities import Request, RequestStatus
from .errors import SimulationError
from .metrics import MetricsSink
from .scheduler.vllm_v1 import VllmV1Scheduler


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


class Engine:
    """Drives one server. ``submit`` is called by arrival processes at the arrival time."""

    def __init__(
        self,
        env: simpy.Environment,
        scheduler: VllmV1Scheduler,
        cost_model: CostModel,
        sink: MetricsSink,
        *,
        max_model_len: int,
        kv_capacity_tokens: int,
        max_prefill_tokens_unchunked: int | None = None,
        fast_forward: bool = True,
    ) -> None:
        self.env = env
        self.scheduler = scheduler
        self.cost_model = cost_model
        self.sink = sink
        self.max_model_len = max_model_len
        self.kv_capacity_tokens = kv_capacity_tokens
        self.max_prefill_tokens_unchunked = max_prefill_tokens_unchunked
        self._idle: simpy.Event | None = None
        # Fast-forward applies to policies that schedule every running decode-ready request
        # for one token when nothing waits (vLLM V1 and policies that only reorder the queue).
        self.fast_forward = (
            fast_forward
            and getattr(type(scheduler), "schedule", None) is VllmV1Scheduler.schedule
            and getattr(scheduler, "_plain_decodes", False)
        )
        # Deferred decodes (sim.scheduler.vllm_v1) skip per-request work in all-decode steps;
        # tied to fast_forward so that fast_forward=False runs the plain step loop.
        self.deferred = fast_forward and getattr(scheduler, "defer_decodes", lambda: False)()
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
            return (
                f"prompt {req.prompt_tokens} tokens > max_num_batched_tokens {self.max_prefill_tokens_unchunked} "
                "with chunked prefill disabled"
            )
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
        self.scheduler.add_request(req)
        if self._idle is not None and not self._idle.triggered:
            self._idle.succeed()

    def _signal_done(self, req: Request) -> None:
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
        while True:
            if not sched.has_work():
                self._idle = env.event()
                yield self._idle
                self._idle = None
            if env.peek() == env.now:
                yield env.timeout(0)  # let arrivals due now join this step
            if ff and not sched.waiting and sched.running and not carried_preemptions:
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
                    yield from self._fast_forward(*window)
                    continue
            start_s = env.now
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
            yield env.timeout(cost.total_s)
            end_s = env.now
            sampled, finished = sched.update_from_output(out, end_s)
            if out.num_deferred:
                sink.on_uniform_gaps(out.deferred_gap_s, out.num_deferred)
            sink.on_tokens(sampled, end_s)
            batch = out.batch
            sink.on_step(
                (
                    self.num_steps,
                    start_s,
                    cost.total_s,
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
                req.finish_s = end_s
                sink.on_request_done(req)
                self._signal_done(req)

    # ------------------------------------------------------------ fast-forward
    MAX_WINDOW_STEPS = 4096  # bounds the per-window arrays
    MIN_WINDOW_STEPS = 2

    def _decode_window(self):
        """A stretch of pure-decode steps that can be applied at once, or None.

        Preconditions checked here: nothing waits; every running request is an ordinary decode
        that produced a token at ``now`` (so it was in the previous step and every gap equals
        the step time); all fit the budget. The window ends before the first step that would
        finish a request, start at or after the next pending event (arrivals, horizon), or
        need KV blocks that are not free (preemption). Inside it, the scheduler would plan the
        same batch shape every step: all running requests, one token each.
        """
        sched = self.scheduler
        running = sched.running
        n = len(running)
        if n > sched.limits.max_num_batched_tokens:
            return None
        now = self.env.now
        k_finish = self.MAX_WINDOW_STEPS + 1
        ctx_sum = ctx_max = 0
        for r in running:
            if r.num_output_generated == 0 or r.last_token_s != now or r.num_computed_tokens != r.num_tokens - 1:
                return None
            left = r.output_tokens - r.num_output_generated
            if left < k_finish:
                k_finish = left
            c = r.num_computed_tokens
            ctx_sum += c
            if c > ctx_max:
                ctx_max = c
        k_max = k_finish - 1  # the step that finishes a request runs normally
        if k_max < self.MIN_WINDOW_STEPS:
            return None
        # KV: blocks needed after k steps must be free now (no preemption inside the window)
        kv = sched.kv
        bs = kv.block_size
        computed = np.fromiter((r.num_computed_tokens for r in running), dtype=np.int64, count=n)
        held = np.fromiter((kv.blocks_of(r.request_id) for r in running), dtype=np.int64, count=n)
        free = kv.num_free_blocks

        def extra_blocks(k: int) -> int:
            return int(np.maximum(-(-(computed + k) // bs) - held, 0).sum())

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
        # step times, accumulated exactly as the clock would (t += duration)
        nxt = self.env.peek()
        t = now
        times = [now]
        costs = []
        step_s = decode_step_fn(self.cost_model, n)
        for j in range(k_max):
            c = step_s(ctx_sum + j * n, ctx_max + j)
            if not c > 0:
                raise SimulationError(f"cost model {self.cost_model.name!r} priced a non-empty step at {c} s")
            t_next = t + c
            if not t_next < nxt:
                break
            t = t_next
            times.append(t)
            costs.append(c)
        if len(costs) < self.MIN_WINDOW_STEPS:
            return None
        return times, costs, computed, held

    def _fast_forward(self, times: list[float], costs: list[float], computed: np.ndarray, held: np.ndarray):
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
        # Allocate the window's new blocks in the order the step loop would (by step, then by
        # running order), so free-queue order and prefix-cache evictions stay identical.
        bs = kv.block_size
        events = []
        for i in range(n):
            j = int(held[i]) * bs - int(computed[i]) + 1  # first step whose token needs a new block
            while j <= k:
                events.append((j, i))
                j += bs
        events.sort()
        for j, i in events:
            if not kv.allocate_slots(running[i], j):
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
        times_arr = np.array(times)
        gaps = np.diff(times_arr)  # times[j + 1] - times[j], the same subtraction per element
        max_gap = float(gaps.max())
        for r in running:
            r.num_computed_tokens += k
            r.num_output_generated += k
            r.last_token_s = end
            if max_gap > r.max_itl_s:
                r.max_itl_s = max_gap
        sink.on_gaps(np.repeat(gaps, n))
        steps = np.arange(1, k + 1, dtype=np.int64)
        need = -(-(computed[:, None] + steps[None, :]) // bs) - held[:, None]
        used = base_used + np.maximum(need, 0).sum(axis=0)
        first = self.num_steps
        sink.on_decode_window(first, times, costs, n, used)
        self.num_steps += k
