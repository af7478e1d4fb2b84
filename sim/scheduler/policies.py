"""Alternative scheduling policies, each a subclass of :class:`VllmV1Scheduler`.

Every policy keeps the scheduler contract (:mod:`sim.scheduler.base`): it never exceeds
``max_num_batched_tokens`` tokens or ``max_num_seqs`` running requests per step, allocates KV
through the transactional :class:`~sim.scheduler.kv.KVCacheManager` (so blocks are never
over-allocated), preempts by recompute, and is work-conserving. Policies that only reorder
queues override hooks; policies that change the *shape* of a step override ``schedule`` and
share the planning helpers of :class:`_PhasedScheduler`.

* ``vllm-v0`` — vLLM V0 without chunked prefill (``vllm/core/scheduler.py``,
  ``Scheduler._schedule_default``): prefill-only or decode-only steps, never mixed.
* ``decode-first`` — every running decode first, then prefill work with the budget left.
* ``sarathi`` — Sarathi-Serve stall-free batching (Agrawal et al., OSDI 2024, Algorithm 1;
  ``sarathi/core/scheduler/sarathi_scheduler.py``): decodes first, then prefill chunks within a
  per-step token budget of ``chunk_size_tokens`` that the decodes also count against.
* ``priority`` — vLLM ``--scheduling-policy priority`` (``vllm/v1/core/sched/scheduler.py``,
  ``vllm/v1/core/sched/request_queue.py``) plus starvation protection by age.
* ``sjf`` — shortest prompt first, with the same starvation protection.

All policies keep vLLM V1's rule that no waiting request is admitted in a step that preempted.
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sim.entities import Batch, BatchItem, Request, RequestStatus
from sim.scheduler.base import SCHEDULERS, SchedulerLimits, SchedulerOutput
from sim.scheduler.vllm_v1 import VllmV1Scheduler


def _is_decode(req: Request) -> bool:
    """True when ``req``'s next work is exactly one decode token (its prompt is done)."""
    return req.num_output_generated > 0 and req.num_tokens - req.num_computed_tokens == 1


@dataclass(slots=True)
class _Plan:
    """A step under construction: remaining token budget, batch items, preemptions."""

    budget: int
    items: list[BatchItem] = field(default_factory=list)
    reqs: list[Request] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    ids: set[int] = field(default_factory=set)  # request ids in the plan (O(1) membership)

    def add(self, req: Request, item: BatchItem) -> None:
        self.items.append(item)
        self.reqs.append(req)
        self.ids.add(req.request_id)
        self.budget -= item.new_tokens

    def remove(self, req: Request) -> None:
        k = self.reqs.index(req)
        self.budget += self.items[k].new_tokens
        del self.reqs[k], self.items[k]
        self.ids.discard(req.request_id)

    def output(self) -> SchedulerOutput:
        return SchedulerOutput(Batch.of(self.items), self.reqs, self.preempted)


class _PhasedScheduler(VllmV1Scheduler):
    """Planning helpers for policies that order the phases of a step themselves.

    The helpers do the same bookkeeping as ``VllmV1Scheduler.schedule`` (preemption by
    recompute via ``pick_victim``, prefix-cache hits, head-of-line blocking on KV), so a
    subclass only decides which requests go in which order with how many tokens.
    """

    def _fit(self, plan: _Plan, req: Request, n: int) -> bool:
        """Allocate KV for ``n`` new tokens of running ``req``, preempting until it fits.

        Returns False when ``req`` itself was preempted. A victim already in ``plan`` is taken
        out of it and its tokens return to the budget (as vLLM V1 does).
        """
        while not self.kv.allocate_slots(req, n):
            victim = self.pick_victim()
            if victim.request_id in plan.ids:
                plan.remove(victim)
            self._preempt(victim)
            plan.preempted.append(victim)
            if victim is req:
                return False
        return True

    def _schedule_running(self, plan: _Plan, order: Iterable[Request], chunk: Callable[[Request, int], int]) -> bool:
        """Schedule running requests in ``order`` with ``chunk(req, budget)`` tokens each.

        Stops when the budget is spent or a request had to preempt itself; returns False in
        the latter case (KV is exhausted: vLLM V1 then schedules no further running request).
        """
        for req in list(order):
            if plan.budget <= 0:
                return True
            if req.status is not RequestStatus.RUNNING or req.request_id in plan.ids:
                continue  # preempted earlier in this step, or already planned
            n = chunk(req, plan.budget)
            if n <= 0:
                continue
            if not self._fit(plan, req, n):
                return False
            plan.add(req, self._item(req, n))
        return True

    def _start(self, req: Request, num_computed: int, hits: list[int], now_s: float) -> None:
        """Move the head of the wait queue to the running list (its KV is already allocated)."""
        self.waiting.popleft()
        if hits and req.num_computed_tokens == 0 and req.first_scheduled_s < 0:
            req.cached_prompt_tokens = min(len(hits) * self.kv.block_size, req.prompt_tokens)
        req.num_computed_tokens = num_computed
        req.status = RequestStatus.RUNNING
        if req.first_scheduled_s < 0:
            req.first_scheduled_s = now_s
        self.running.append(req)

    def _admit(self, plan: _Plan, now_s: float) -> None:
        """Admit waiting requests from the head of the (re-ordered) queue, as vLLM V1 does."""
        if not self.waiting or not self.admit_waiting(len(plan.reqs), bool(plan.preempted)):
            return
        self.order_waiting(now_s)
        kv = self.kv
        skipped: list[Request] = []
        waiting = self.waiting
        while waiting and plan.budget > 0 and len(self.running) < self.limits.max_num_seqs:
            req = waiting[0]
            hits = kv.get_computed_blocks(req) if req.num_computed_tokens == 0 else []
            num_computed = req.num_computed_tokens + len(hits) * kv.block_size
            n = self.waiting_chunk(req, num_computed, plan.budget)
            if n <= 0:
                skipped.append(waiting.popleft())
                continue
            if not kv.allocate_slots(req, n, hits):
                break  # head-of-line blocking on KV, as vLLM
            self._start(req, num_computed, hits, now_s)
            plan.add(req, self._item(req, n))
        if skipped:
            waiting.extendleft(reversed(skipped))


# ---------------------------------------------------------------------- vLLM V0
@SCHEDULERS.register("vllm-v0", "vLLM V0 without chunked prefill: prefill-only steps first, else decode-only; never mixed.")
class VllmV0Scheduler(_PhasedScheduler):
    """vLLM V0's default scheduler without chunked prefill (``vllm/core/scheduler.py``).

    One step, as ``Scheduler._schedule_default`` plans it when nothing is swapped:

    1. **Prefills** (``_schedule_prefills``): whole prompts from the head of the wait queue
       (FCFS; preempted requests are at the front) while the whole uncached prompt fits the
       remaining token budget, a seat is free and its KV blocks can be allocated; the first one
       that does not fit stops admission. If any prompt was admitted the step is prefill-only.
    2. Otherwise **decodes** (``_schedule_running``): every running request, one token each,
       in admission order; when KV runs out the most recently admitted running request is
       preempted by recompute (V0's ``running_queue.pop()``).

    A step therefore never mixes prefill and decode. Every prefill-phase item is a prefill
    item, even a one-token recompute after a prefix-cache hit (V0 marks the whole group as a
    prompt). ``long_prefill_token_threshold`` does not apply (no chunking in V0).

    Divergence kept to stay work-conserving: a prompt (or a recompute after preemption)
    longer than ``max_num_batched_tokens`` — which V0 refuses and which the engine rejects up
    front when ``enable_chunked_prefill`` is false — is admitted alone once its whole KV fits
    (V0 allocates a prompt's blocks at admission) and prefilled in budget-sized chunks in
    consecutive prefill-only steps, before any other work.
    """

    def schedule(self, now_s: float) -> SchedulerOutput:
        plan = _Plan(self.limits.max_num_batched_tokens)
        self._schedule_prefills(plan, now_s)
        if not plan.reqs:
            self._schedule_running(plan, self.running, self.running_chunk)
        return plan.output()

    @staticmethod
    def _prefill_item(req: Request, n: int) -> BatchItem:
        return BatchItem(req.request_id, n, req.num_computed_tokens, False)

    def _schedule_prefills(self, plan: _Plan, now_s: float) -> None:
        kv = self.kv
        # an over-long prompt admitted earlier continues alone; its KV is already allocated
        for req in self.running:
            if not _is_decode(req):
                n = min(req.remaining_tokens, plan.budget)
                if not kv.allocate_slots(req, n):  # pragma: no cover - allocated at admission
                    raise AssertionError("vllm-v0: KV of an admitted prompt went missing")
                plan.add(req, self._prefill_item(req, n))
                return
        self.order_waiting(now_s)
        waiting = self.waiting
        while waiting and len(self.running) < self.limits.max_num_seqs:
            req = waiting[0]
            hits = kv.get_computed_blocks(req) if req.num_computed_tokens == 0 else []
            num_computed = req.num_computed_tokens + len(hits) * kv.block_size
            n = req.num_tokens - num_computed
            if n > plan.budget and plan.reqs:
                break
            # whole remaining prompt: V0 allocates every prompt block at admission
            if not kv.allocate_slots(req, n, hits):
                break
            self._start(req, num_computed, hits, now_s)
            if n > plan.budget:  # over-long: first chunk alone (see class docstring)
                plan.add(req, self._prefill_item(req, plan.budget))
                return
            plan.add(req, self._prefill_item(req, n))


# ---------------------------------------------------------------- decode-first
@SCHEDULERS.register("decode-first", "Every running decode first, then unfinished prefills and new prompts with the budget left.")
class DecodeFirstScheduler(_PhasedScheduler):
    """Decodes never wait for prefill work.

    One step: (1) every running request whose next work is one decode token, in admission
    order; (2) running requests with unfinished prefills (chunked prompts or recomputes after
    preemption), chunked to the remaining budget as vLLM V1 does; (3) waiting requests as in
    vLLM V1, unless this step preempted. Preemption is vLLM V1's (most recently admitted).
    Unlike vLLM V1, whose running loop goes in admission order, an older request's long prefill
    chunk can never use up the budget that later decodes need.
    """

    def prefill_budget(self, plan: _Plan, decode_tokens: int) -> int:
        """Token budget left for prefill work after ``decode_tokens`` decodes were planned."""
        return plan.budget

    def schedule(self, now_s: float) -> SchedulerOutput:
        plan = _Plan(self.limits.max_num_batched_tokens)
        decodes = [r for r in self.running if _is_decode(r)]
        prefills = [r for r in self.running if not _is_decode(r)]
        if self._schedule_running(plan, decodes, self.running_chunk):
            decode_tokens = sum(it.new_tokens for it in plan.items)
            plan.budget = self.prefill_budget(plan, decode_tokens)
            self._schedule_running(plan, prefills, self.running_chunk)
        self._admit(plan, now_s)
        return plan.output()


# --------------------------------------------------------------------- Sarathi
@SCHEDULERS.register("sarathi", "Sarathi-Serve stall-free batching: decodes, then prefill chunks within chunk_size_tokens per step.")
class SarathiScheduler(DecodeFirstScheduler):
    """Sarathi-Serve stall-free batching (Agrawal et al., OSDI 2024, §4 and Algorithm 1).

    Reading of the paper (and of its reference ``SarathiScheduler._schedule``, whose
    ``_get_seq_next_num_prefill_tokens`` returns ``min(prompt left, chunk_size −
    num_batched_tokens)``): the token budget τ = ``min(chunk_size_tokens,
    max_num_batched_tokens)`` bounds the *whole* step, and the decodes count against it.

    1. Every running decode, one token each (stall-free: decodes are never held back by
       prefills; only ``max_num_batched_tokens`` can cap them).
    2. Ongoing prefills, then new prompts, each chunked to ``τ − tokens already planned``.

    Hence a step holds at most ``max(τ, decodes)`` tokens and at most τ prefill tokens. Chunks
    are always allowed (Sarathi is chunked by construction), whatever
    ``enable_chunked_prefill`` says. Simplification: KV is allocated chunk by chunk (vLLM V1)
    rather than for the whole prompt at admission (Sarathi's block manager).
    """

    def prefill_budget(self, plan: _Plan, decode_tokens: int) -> int:
        tau = min(self.limits.chunk_size_tokens, self.limits.max_num_batched_tokens)
        return max(0, min(plan.budget, tau - decode_tokens))

    def waiting_chunk(self, req: Request, num_computed: int, budget: int) -> int:
        n = req.num_tokens - num_computed
        t = self.limits.long_prefill_token_threshold
        if 0 < t < n:
            n = t
        return n if n < budget else budget


# -------------------------------------------------------- starvation protection
class _AgedOrderMixin:
    """Wait-queue order by a policy key, except that requests waiting longer than
    ``starvation_age_s`` go first, oldest first (so none waits forever).

    The queue is in the order of ``sorted(waiting, key)`` with ``key(r) = (0, arrival, id)`` for
    an aged request and ``(1, *wait_key(r), id)`` otherwise, at every admission. It is kept
    sorted instead of re-sorted: between two admissions only arrivals (``add_request``),
    preemption victims (``_preempt``) and requests that aged since (a heap by arrival finds
    them; a key changes once) are out of place, and each is moved to its place by bisection.
    A step costs O(changes × log n) key reads plus C-level moves, not a key per waiting request
    (which made an overloaded queue of thousands quadratic).
    """

    limits: SchedulerLimits
    waiting: deque[Request]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._wait_keys: dict[int, tuple] = {}  # request id -> its sort key while it waits
        self._age_heap: list[tuple[float, int, Request]] = []  # (arrival, id, request) not yet aged; ids unique in it
        self._dirty: list[Request] = []  # entered the queue since the last ordering

    def wait_key(self, req: Request) -> tuple:
        raise NotImplementedError

    def add_request(self, req: Request) -> None:
        super().add_request(req)  # type: ignore[misc]
        self._dirty.append(req)

    def _preempt(self, victim: Request) -> None:
        super()._preempt(victim)  # type: ignore[misc]
        self._dirty.append(victim)

    def order_waiting(self, now_s: float) -> None:
        age = self.limits.starvation_age_s
        keys, heap, waiting = self._wait_keys, self._age_heap, self.waiting
        moving = self._dirty
        self._dirty = []
        while heap and now_s - heap[0][0] > age:  # the earliest arrivals age first
            arrival_s, rid, req = heapq.heappop(heap)
            if keys.get(rid, (0,))[0] == 1:
                keys[rid] = (0, arrival_s, rid)
                moving.append(req)
        if not moving:
            return
        back: list[Request] = []
        for req in dict.fromkeys(moving):  # out of the queue first: the rest stays sorted
            try:
                waiting.remove(req)  # identity (Request compares by identity)
            except ValueError:
                continue  # left the queue already (a new key is made if it returns)
            back.append(req)
        for req in back:
            rid = req.request_id
            key = keys.get(rid)
            if key is None or (key[0] == 1 and now_s - req.arrival_s > age):
                if now_s - req.arrival_s > age:
                    key = (0, req.arrival_s, rid)
                else:
                    key = (1, *self.wait_key(req), rid)
                    heapq.heappush(heap, (req.arrival_s, rid, req))
                keys[rid] = key
            waiting.insert(bisect.bisect_left(waiting, key, key=lambda r: keys[r.request_id]), req)
        if len(keys) > 4 * len(waiting) + 1024:  # forget requests that left the queue
            live = {r.request_id for r in waiting}
            self._wait_keys = {rid: k for rid, k in keys.items() if rid in live}
            self._age_heap = [e for e in heap if e[1] in live]
            heapq.heapify(self._age_heap)


@SCHEDULERS.register("priority", "vLLM priority scheduling: wait queue by (priority, arrival), preempt lowest priority; aged requests first.")
class PriorityScheduler(_AgedOrderMixin, VllmV1Scheduler):
    """vLLM V1 ``--scheduling-policy priority`` with starvation protection.

    Wait queue ordered by ``(priority, arrival)`` (0 = most urgent; vLLM's
    ``PriorityRequestQueue``), except requests older than ``starvation_age_s`` first in arrival
    order. KV preemption picks ``max(running, key=(priority, arrival))`` — the least urgent,
    latest-arriving running request — as vLLM V1's ``Scheduler.schedule`` does under the
    priority policy; otherwise a vLLM V1 step.
    """

    def wait_key(self, req: Request) -> tuple:
        return (req.priority, req.arrival_s)

    def pick_victim(self) -> Request:
        return max(self.running, key=lambda r: (r.priority, r.arrival_s, r.request_id))


@SCHEDULERS.register("sjf", "Shortest prompt first (wait queue by prompt length); aged requests first.")
class ShortestJobFirstScheduler(_AgedOrderMixin, VllmV1Scheduler):
    """Shortest-prompt-first admission with starvation protection.

    Wait queue ordered by ``(prompt_tokens, arrival)``, except requests older than
    ``starvation_age_s`` first in arrival order. Prompt length is what a server knows on
    arrival (output length is not), so it stands for job size. Otherwise a vLLM V1 step
    (preemption of the most recently admitted).
    """

    def wait_key(self, req: Request) -> tuple:
        return (req.prompt_tokens, req.arrival_s)
