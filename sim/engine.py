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

import simpy

from .cost.base import CostModel
from .entities import Request, RequestStatus
from .errors import SimulationError
from .metrics import MetricsSink
from .scheduler.vllm_v1 import VllmV1Scheduler


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
    ) -> None:
        self.env = env
        self.scheduler = scheduler
        self.cost_model = cost_model
        self.sink = sink
        self.max_model_len = max_model_len
        self.kv_capacity_tokens = kv_capacity_tokens
        self.max_prefill_tokens_unchunked = max_prefill_tokens_unchunked
        self._idle: simpy.Event | None = None
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

    def submit(self, req: Request) -> None:
        """A request arrives now. Rejected requests leave at once with a reason."""
        req.arrival_s = self.env.now
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
        while True:
            if not sched.has_work():
                self._idle = env.event()
                yield self._idle
                self._idle = None
            if env.peek() == env.now:
                yield env.timeout(0)  # let arrivals due now join this step
            start_s = env.now
            out = sched.schedule(start_s)
            if out.is_empty:
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
                    len(out.preempted),
                )
            )
            self.num_steps += 1
            for req in finished:
                req.finish_s = end_s
                sink.on_request_done(req)
                self._signal_done(req)
