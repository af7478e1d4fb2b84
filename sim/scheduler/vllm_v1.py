"""vLLM V1 scheduling (``vllm/v1/core/sched/scheduler.py``, ``Scheduler.schedule``), and the
hooks other policies override.

One step, as vLLM V1 plans it:

1. **Running requests first**, in admission order, while token budget remains. Each gets
   ``num_tokens - num_computed_tokens`` new tokens (1 for a decode; the rest of the prompt for
   an unfinished prefill), capped by ``long_prefill_token_threshold`` (if > 0) and by the
   remaining budget. If its KV blocks cannot be allocated, the most recently admitted running
   request is preempted (recompute: its KV is freed, it returns to the *front* of the wait
   queue) until the allocation fits or the request itself was the victim.
2. **Then waiting requests**, from the head of the queue, unless a preemption happened this
   step, while the budget is > 0 and fewer than ``max_num_seqs`` run. Prefix-cache hits are
   taken first (they cost no budget); the rest is chunked like above. Without chunked prefill a
   prompt that does not fit the remaining budget waits (it is skipped this step). A failed KV
   allocation stops admission (head-of-line blocking, as vLLM).

Running and new prefills share a step: that is a **mixed batch**.
"""

from __future__ import annotations

from collections import deque

from ..entities import Batch, BatchItem, Request, RequestStatus
from .base import SCHEDULERS, SchedulerLimits, SchedulerOutput
from .kv import KVCacheManager


_new_item = tuple.__new__  # builds a BatchItem without NamedTuple's Python-level __new__ (hot path)


@SCHEDULERS.register("vllm-v1", "vLLM V1: running first, then waiting; chunked prefill; mixed batches (default).")
class VllmV1Scheduler:
    """vLLM V1 chunked-prefill scheduler with preemption by recompute.

    Subclasses change the policy through the hooks ``order_waiting``, ``pick_victim``,
    ``running_chunk``, ``waiting_chunk`` and ``admit_waiting``; the bookkeeping stays here.
    """

    def __init__(self, limits: SchedulerLimits, kv: KVCacheManager) -> None:
        self.limits = limits
        self.kv = kv
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0
        # the decode fast path in schedule() is valid only with the default running_chunk
        self._plain_decodes = type(self).running_chunk is VllmV1Scheduler.running_chunk

    # ------------------------------------------------------------------ state
    def add_request(self, req: Request) -> None:
        req.status = RequestStatus.WAITING
        self.waiting.append(req)

    def has_work(self) -> bool:
        return bool(self.waiting) or bool(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    # ------------------------------------------------------------------ hooks
    def order_waiting(self, now_s: float) -> None:
        """Reorder ``self.waiting`` before admission. FCFS: no-op."""

    def pick_victim(self) -> Request:
        """The running request to preempt: the most recently admitted (vLLM FCFS)."""
        return self.running[-1]

    def running_chunk(self, req: Request, budget: int) -> int:
        """New tokens for a running request given the remaining budget."""
        n = req.num_tokens - req.num_computed_tokens
        t = self.limits.long_prefill_token_threshold
        if 0 < t < n:
            n = t
        return n if n < budget else budget

    def waiting_chunk(self, req: Request, num_computed: int, budget: int) -> int:
        """New tokens for a waiting request (after ``num_computed`` cached/computed tokens).

        Returns 0 to skip the request this step.
        """
        n = req.num_tokens - num_computed
        t = self.limits.long_prefill_token_threshold
        if 0 < t < n:
            n = t
        if not self.limits.enable_chunked_prefill and n > budget:
            return 0
        return n if n < budget else budget

    def admit_waiting(self, scheduled_running: int, preempted: bool) -> bool:
        """Whether waiting requests may be admitted this step (vLLM: not after a preemption)."""
        return not preempted

    # --------------------------------------------------------------- planning
    def schedule(self, now_s: float) -> SchedulerOutput:
        """Plan one step at time ``now_s`` (see module docstring)."""
        budget = self.limits.max_num_batched_tokens
        kv = self.kv
        block_size = kv.block_size
        owned = kv._owned
        plain_decodes = self._plain_decodes
        items: list[BatchItem] = []
        reqs: list[Request] = []
        preempted: list[Request] = []
        running = self.running
        # aggregates for Batch (decode count/context sum/max, prefill tokens/requests); the
        # fast path only collects decode contexts, summed once after the loop
        n_dec = ctx_sum = ctx_max = pre_tok = n_pre = 0
        dec_ctx: list[int] = []
        add_item, add_req, add_ctx = items.append, reqs.append, dec_ctx.append
        caching = kv.enable_prefix_caching
        recount = False

        i = 0
        n_run = len(running)
        if plain_decodes and not caching and n_run and budget >= n_run:
            # All-decode fast path (the steady state of a loaded server): when every running
            # request is an ordinary decode and the free blocks cover those that need one,
            # the loop below would schedule all of them, one token each, allocating in running
            # order without preempting; do the same with comprehensions.
            if all(r.num_output_generated and r.prompt_tokens + r.num_output_generated - r.num_computed_tokens == 1 for r in running):
                needs = [r for r in running if r.num_computed_tokens >= len(owned[r.request_id]) * block_size]
                if len(needs) <= kv.num_free_blocks:
                    for r in needs:
                        kv.allocate_slots(r, 1)
                    dec_ctx = [r.num_computed_tokens for r in running]
                    items = [_new_item(BatchItem, (r.request_id, 1, c, True)) for r, c in zip(running, dec_ctx)]
                    reqs = list(running)
                    add_item, add_req = items.append, reqs.append
                    budget -= n_run
                    i = n_run  # skip the general loop
        while i < n_run and budget > 0:
            req = running[i]
            computed = req.num_computed_tokens
            generated = req.num_output_generated
            # Fast path: an ordinary decode whose next token fits in the blocks it holds.
            if (
                plain_decodes
                and generated
                and req.prompt_tokens + generated - computed == 1
                and computed < len(owned[req.request_id]) * block_size
                and (not caching or (computed + 1) % block_size)
            ):
                add_item(_new_item(BatchItem, (req.request_id, 1, computed, True)))
                add_req(req)
                add_ctx(computed)
                budget -= 1
                i += 1
                continue
            n = self.running_chunk(req, budget)
            if n <= 0:
                i += 1
                continue
            scheduled = True
            while not kv.allocate_slots(req, n):
                victim = self.pick_victim()
                if victim in reqs:  # a policy may pick an already scheduled request
                    k = reqs.index(victim)
                    budget += items[k].new_tokens
                    del reqs[k], items[k]
                    recount = True
                    i -= 1
                self._preempt(victim)
                n_run = len(running)
                preempted.append(victim)
                if victim is req:
                    scheduled = False
                    break
            if not scheduled:
                break
            item = self._item(req, n)
            add_item(item)
            add_req(req)
            budget -= n
            if item.is_decode:
                add_ctx(item.context_tokens)
            else:
                n_pre += 1
                pre_tok += n
            i += 1
        if recount:  # rare: rebuild the aggregates from the remaining items
            dec_ctx = [it.context_tokens for it in items if it.is_decode]
            pre_tok = sum(it.new_tokens for it in items if not it.is_decode)
            n_pre = len(items) - len(dec_ctx)
        if dec_ctx:
            n_dec = len(dec_ctx)
            ctx_sum = sum(dec_ctx)
            ctx_max = max(dec_ctx)

        if self.waiting and self.admit_waiting(len(reqs), bool(preempted)):
            self.order_waiting(now_s)
            skipped: list[Request] = []
            waiting = self.waiting
            while waiting and budget > 0 and len(running) < self.limits.max_num_seqs:
                req = waiting[0]
                hits = kv.get_computed_blocks(req) if req.num_computed_tokens == 0 else []
                num_computed = req.num_computed_tokens + len(hits) * block_size
                n = self.waiting_chunk(req, num_computed, budget)
                if n <= 0:
                    skipped.append(waiting.popleft())
                    continue
                if not kv.allocate_slots(req, n, hits):
                    break
                waiting.popleft()
                if hits and req.num_computed_tokens == 0 and req.first_scheduled_s < 0:
                    req.cached_prompt_tokens = min(len(hits) * block_size, req.prompt_tokens)
                req.num_computed_tokens = num_computed
                req.status = RequestStatus.RUNNING
                if req.first_scheduled_s < 0:
                    req.first_scheduled_s = now_s
                running.append(req)
                items.append(BatchItem(req.request_id, n, num_computed, False))
                reqs.append(req)
                budget -= n
                n_pre += 1
                pre_tok += n
            if skipped:
                waiting.extendleft(reversed(skipped))

        batch = Batch(tuple(items), pre_tok, n_dec, n_pre, n_dec, ctx_sum, ctx_max)
        return SchedulerOutput(batch, reqs, preempted)

    @staticmethod
    def _item(req: Request, n: int) -> BatchItem:
        computed = req.num_computed_tokens
        is_decode = n == 1 and req.num_output_generated > 0 and computed == req.num_tokens - 1
        return BatchItem(req.request_id, n, computed, is_decode)

    def _preempt(self, victim: Request) -> None:
        self.running.remove(victim)
        self.kv.free(victim)
        victim.num_computed_tokens = 0
        victim.status = RequestStatus.WAITING
        victim.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(victim)

    # ---------------------------------------------------------------- progress
    def update_from_output(self, out: SchedulerOutput, end_s: float) -> tuple[list[Request], list[Request]]:
        """Apply the step's progress at ``end_s``; return (sampled, finished) requests.

        ``sampled`` holds every request that produced an output token in this step (its first
        or a later one); ``finished`` those that produced their last. Finished requests leave
        the running list and release their KV blocks.
        """
        sampled: list[Request] = []
        finished: list[Request] = []
        add_sampled = sampled.append
        for req, item in zip(out.requests, out.batch.items):
            computed = req.num_computed_tokens + item[1]  # item.new_tokens
            req.num_computed_tokens = computed
            generated = req.num_output_generated
            if computed == req.prompt_tokens + generated:
                generated += 1
                req.num_output_generated = generated
                add_sampled(req)
                if generated >= req.output_tokens:
                    finished.append(req)
        if finished:
            done = set(id(r) for r in finished)
            self.running = [r for r in self.running if id(r) not in done]
            for req in finished:
                self.kv.free(req)
                req.status = RequestStatus.FINISHED
        return sampled, finished
