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
   taken first (they cost no budget), then, with a CPU offloading tier, the blocks after them
   that the tier holds (loaded back: no budget either; the step reports them in
   ``SchedulerOutput.kv_loads`` and the engine charges the transfer); the rest is chunked like
   above. Without chunked prefill a
   prompt that does not fit the remaining budget waits (it is skipped this step). A failed KV
   allocation stops admission (head-of-line blocking, as vLLM).

Running and new prefills share a step: that is a **mixed batch**.

**Deferred decodes** (:meth:`VllmV1Scheduler.defer_decodes`, turned on by the engine): on a
loaded server most steps schedule every running request for one decode token. Such a step is
planned and applied without touching the request objects of the requests that were already
in such a step: their progress is held as ``computed tokens = tick + offset`` (one tick per
such step), their block needs and finishes are looked up by tick, and their objects are
brought up to date (:meth:`VllmV1Scheduler.sync`) when they finish, before any other kind of
step, and whenever the engine needs them. Plans, records and block allocations are exactly
those of the step-by-step code.
"""

from __future__ import annotations

from array import array
from collections import deque
from itertools import repeat

from sim.entities import Batch, BatchItem, Request, RequestStatus
from sim.scheduler.base import SCHEDULERS, SchedulerCapabilities, SchedulerLimits, SchedulerOutput
from sim.scheduler.kv import KVCacheManager

_new_item = tuple.__new__  # builds a BatchItem without NamedTuple's Python-level __new__ (hot path)
_ONES = repeat(1)  # new_tokens of decode items (itertools.repeat: zip never exhausts it)
_TRUES = repeat(True)
_BATCH_ITEM = repeat(BatchItem)


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
        # Deferred decodes (module docstring). running[:len(_lz_off)] are deferred; for the
        # i-th, computed tokens = _tick + _lz_off[i], and its last token came at _last_end_s.
        self._deferred = False
        self._last_is_victim = type(self).pick_victim is VllmV1Scheduler.pick_victim
        self._tick = 0  # deferred-decode steps applied so far
        self._last_end_s = 0.0
        self._lz_off: list[int] = []
        self._lz_rid: list[int] = []  # request ids (batch items)
        self._lz_join: list[int] = []  # tick at which each became deferred (for its max ITL)
        # deferred requests by (offset mod block_size): those needing a block at a tick, in running order
        self._lz_need: list[list[Request]] = [[] for _ in range(kv.block_size)]
        self._lz_finish: dict[int, list[Request]] = {}  # tick of the last token -> requests, running order
        self._gaps_s = array("d")  # gap of every tick since _gap_base (the step durations)
        self._gap_base = 0

    @property
    def capabilities(self) -> SchedulerCapabilities:
        """Plain decodes hold while this class plans with :meth:`VllmV1Scheduler.schedule` and
        the default ``running_chunk`` (hooks that only reorder the queue or pick victims keep
        them); deferred decodes are implemented here for every subclass (``defer_decodes``
        declines where they do not apply)."""
        return SchedulerCapabilities(
            plain_decodes=type(self).schedule is VllmV1Scheduler.schedule and self._plain_decodes,
            deferred_decodes=True,
            kv_offload_loads=type(self).schedule is VllmV1Scheduler.schedule,
        )

    # ------------------------------------------------------------------ state
    def add_request(self, req: Request) -> None:
        req.status = RequestStatus.WAITING
        self.waiting.append(req)

    def defer_decodes(self) -> bool:
        """Turn on deferred decodes (module docstring) if this scheduler supports them: plans
        with :meth:`VllmV1Scheduler.schedule` and the default ``running_chunk`` (with or
        without prefix caching: a deferred request's block is hashed on the step that fills
        it). Returns whether it is on.

        Contract while on: the progress fields (``num_computed_tokens``,
        ``num_output_generated``, ``last_token_s``, ``max_itl_s``) of running requests may be
        stale until :meth:`sync`; finished and preempted requests are always up to date. The
        caller must record, for every step with ``out.num_deferred > 0``, ``out.num_deferred``
        inter-token gaps of ``out.deferred_gap_s`` before those of ``sampled`` (the deferred
        requests come first in the batch), and ``update_from_output`` does not return them in
        ``sampled``.
        """
        self._deferred = type(self).schedule is VllmV1Scheduler.schedule and self._plain_decodes
        return self._deferred

    def sync(self) -> None:
        """Bring every deferred request's object up to date; none is deferred afterwards."""
        n = len(self._lz_off)
        if n:
            tick, end_s = self._tick, self._last_end_s
            gaps, base = self._gaps_s, self._gap_base
            for req, off, join in zip(self.running, self._lz_off, self._lz_join):
                self._settle(req, tick + off, end_s, gaps, join - base, tick - base)
            self._lz_off, self._lz_rid, self._lz_join = [], [], []
            self._lz_need = [[] for _ in range(self.kv.block_size)]
            self._lz_finish = {}
        self._gaps_s = array("d")
        self._gap_base = self._tick

    def _sync_from(self, m: int) -> None:
        """Settle the deferred requests from the ``m``-th on (the first ``m`` stay deferred)."""
        offs = self._lz_off
        if m >= len(offs):
            return
        if m == 0:
            self.sync()
            return
        tick, end_s = self._tick, self._last_end_s
        gaps, base, bs = self._gaps_s, self._gap_base, self.kv.block_size
        need, fin = self._lz_need, self._lz_finish
        for req, off, join in zip(self.running[m : len(offs)], offs[m:], self._lz_join[m:]):
            need[off % bs].remove(req)
            fin[req.prompt_tokens + req.output_tokens - 1 - off].remove(req)
            self._settle(req, tick + off, end_s, gaps, join - base, tick - base)
        del offs[m:], self._lz_rid[m:], self._lz_join[m:]

    def deferred_finish_within(self, num_steps: int) -> bool:
        """Whether a deferred request produces its last token within the next ``num_steps``
        decode steps (read without settling anything)."""
        fin, tick = self._lz_finish, self._tick
        return any(tick + j in fin for j in range(1, num_steps + 1))

    @staticmethod
    def _settle(req: Request, computed: int, end_s: float, gaps_s: array, lo: int, hi: int) -> None:
        """Write a deferred request's progress: ``computed`` tokens, its last token at
        ``end_s``, and the largest of its deferred gaps ``gaps_s[lo:hi]``."""
        req.num_computed_tokens = computed
        req.num_output_generated = computed - req.prompt_tokens + 1
        req.last_token_s = end_s
        if hi > lo:
            gap = max(gaps_s[lo:hi])
            if gap > req.max_itl_s:
                req.max_itl_s = gap

    def progress_of(self, req: Request) -> tuple[int, float]:
        """``(output tokens generated, largest inter-token gap in s)`` of running ``req`` as of
        the last step that ended, read without settling anything: valid while a step runs,
        when :meth:`sync` is not (the running step's plan relies on the deferred state)."""
        offs = self._lz_off
        if offs:
            k = self.running.index(req)  # identity: Request compares by identity
            if k < len(offs):  # deferred: its object holds the progress of when it became so
                base = self._gap_base
                gaps = self._gaps_s[self._lz_join[k] - base : self._tick - base]
                computed = self._tick + offs[k]
                return computed - req.prompt_tokens + 1, max(req.max_itl_s, max(gaps, default=0.0))
        return req.num_output_generated, req.max_itl_s

    def abort(self, req: Request) -> None:
        """Remove ``req`` (waiting or running) and free its KV blocks, as vLLM's
        ``finish_requests(..., FINISHED_ABORTED)`` when a client disconnects. Call it between
        steps; a waiting request (which holds no KV) may also leave while a step runs."""
        if req.status is RequestStatus.RUNNING:
            k = self.running.index(req)
            if k < len(self._lz_off):
                self._sync_from(k)  # the deferred requests stay a prefix of running
            del self.running[k]
        else:
            self.waiting.remove(req)
        self.kv.free(req)

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
        n_def = 0
        deferred = self._deferred
        if deferred and self._lz_off:
            # The deferred requests (a prefix of running) are ordinary decodes: the loop below
            # would schedule each for one token, allocating in running order, until the free
            # blocks run out. Do that in bulk for the deferred requests before the first one
            # whose block is missing, settle the rest, and continue the loop from there.
            n_def = len(self._lz_off)
            tick = self._tick
            lz_needs = self._lz_need[-tick % block_size]  # contexts at a block boundary
            free = kv.num_free_blocks
            if budget < n_def:  # rare (budget below the number of running requests)
                n_def = 0
                self.sync()
            elif len(lz_needs) > free:
                short = lz_needs[free]
                lz_needs = lz_needs[:free]
                n_def = running.index(short)
                self._sync_from(n_def)
            if n_def:
                if lz_needs:
                    kv.append_blocks([r.request_id for r in lz_needs])
                if caching:
                    # the deferred requests (settled ones left the buckets) whose token fills
                    # a block: hashed now, as allocate_slots would on this step
                    fills = self._lz_need[(-tick - 1) % block_size]
                    if fills:
                        kv.cache_filled_blocks(fills)
                dec_ctx = [tick + off for off in self._lz_off]
                add_ctx = dec_ctx.append
                items = list(map(_new_item, _BATCH_ITEM, zip(self._lz_rid, _ONES, dec_ctx, _TRUES)))
                reqs = running[:n_def]
                add_item, add_req = items.append, reqs.append
                budget -= n_def
                i = n_def
        if not n_def and plain_decodes and not caching and n_run and budget >= n_run:
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
                if n_def and not (self._last_is_victim and len(running) > n_def):
                    # the victim may be deferred, or a policy may read any running request:
                    # settle the deferred ones (scheduled above; they stay in this plan)
                    self.sync()
                    n_def = 0
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

        kv_loads: list[tuple[Request, int]] = []
        if self.waiting and self.admit_waiting(len(reqs), bool(preempted)):
            self.order_waiting(now_s)
            skipped: list[Request] = []
            waiting = self.waiting
            offloading = kv.num_cpu_blocks > 0
            while waiting and budget > 0 and len(running) < self.limits.max_num_seqs:
                req = waiting[0]
                hits = kv.get_computed_blocks(req) if req.num_computed_tokens == 0 else []
                # blocks after the GPU hits that the CPU tier holds: loaded, not recomputed
                loaded = kv.get_offloaded_run(req, len(hits)) if offloading else 0
                num_computed = req.num_computed_tokens + (len(hits) + loaded) * block_size
                n = self.waiting_chunk(req, num_computed, budget)
                if n <= 0:
                    skipped.append(waiting.popleft())
                    continue
                if not kv.allocate_slots(req, n, hits, loaded):
                    break
                waiting.popleft()
                if loaded:
                    kv_loads.append((req, loaded))
                if (hits or loaded) and req.num_computed_tokens == 0 and req.first_scheduled_s < 0:
                    req.cached_prompt_tokens = min((len(hits) + loaded) * block_size, req.prompt_tokens)
                req.num_computed_tokens = num_computed
                req.status = RequestStatus.RUNNING
                if req.first_scheduled_s < 0:
                    req.first_scheduled_s = now_s
                running.append(req)
                reqs.append(req)
                budget -= n
                if n == 1 and req.num_output_generated and num_computed == req.num_tokens - 1:
                    # arrived with its KV and first token (a prefill/decode hand-off): a decode
                    items.append(BatchItem(req.request_id, 1, num_computed, True))
                    n_dec += 1
                    ctx_sum += num_computed
                    if num_computed > ctx_max:
                        ctx_max = num_computed
                else:
                    items.append(BatchItem(req.request_id, n, num_computed, False))
                    n_pre += 1
                    pre_tok += n
            if skipped:
                waiting.extendleft(reversed(skipped))

        batch = Batch(tuple(items), pre_tok, n_dec, n_pre, n_dec, ctx_sum, ctx_max)
        out = SchedulerOutput(batch, reqs, preempted, num_deferred=n_def, deferred_mode=deferred)
        if kv_loads:
            out.kv_loads = kv_loads
        return out

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
        n_def = out.num_deferred
        reqs, items = out.requests, out.batch.items
        if n_def:
            reqs, items = reqs[n_def:], items[n_def:]
        for req, item in zip(reqs, items):
            computed = req.num_computed_tokens + item[1]  # item.new_tokens
            req.num_computed_tokens = computed
            generated = req.num_output_generated
            if computed == req.prompt_tokens + generated:
                generated += 1
                req.num_output_generated = generated
                add_sampled(req)
                if generated >= req.output_tokens:
                    finished.append(req)
        if out.deferred_mode:
            finished = self._advance_deferred(out, end_s, sampled, finished)
        if finished:
            running = self.running
            if len(finished) <= 8:  # a few: removing in place beats rebuilding the list
                for req in finished:
                    if req.status is RequestStatus.RUNNING:  # settled deferred ones left already
                        running.remove(req)
            else:
                done = set(id(r) for r in finished)
                self.running = [r for r in running if id(r) not in done]
            for req in finished:
                self.kv.free(req)
                req.status = RequestStatus.FINISHED
        return sampled, finished

    def _advance_deferred(self, out: SchedulerOutput, end_s: float, sampled: list[Request], finished: list[Request]) -> list[Request]:
        """Deferred-decode bookkeeping of a step, after its other requests were updated: one
        tick; the deferred requests whose last token this was are settled and put first in
        ``finished`` (they come first in running order); then the requests that follow the
        deferred ones in running order and sampled a token now (and stay) become deferred,
        as far as they form an unbroken run. Returns the finished list."""
        tick = self._tick = self._tick + 1
        gap = end_s - self._last_end_s  # meaningful only when some request was deferred
        self._gaps_s.append(gap)  # one entry per tick, so that ticks index the array
        offs, rids, joins = self._lz_off, self._lz_rid, self._lz_join
        need, bs = self._lz_need, self.kv.block_size
        running = self.running
        if out.num_deferred:
            out.deferred_gap_s = gap
            done = self._lz_finish.pop(tick, None)
            if done:
                gaps, base = self._gaps_s, self._gap_base
                for req in done:
                    k = running.index(req)
                    off = offs[k]
                    self._settle(req, tick + off, end_s, gaps, joins[k] - base, tick - base)
                    need[off % bs].remove(req)
                    del offs[k], rids[k], joins[k], running[k]
                    req.status = RequestStatus.FINISHED
                # the settled requests are already out of running; the caller removes the rest
                finished = done + finished
        if sampled:
            fin = self._lz_finish
            k, n_sampled = 0, len(sampled)
            for req in running[len(offs) :]:
                if k == n_sampled or sampled[k] is not req:
                    break  # deferred requests must stay a prefix of running
                k += 1
                left = req.output_tokens - req.num_output_generated
                if left <= 0:
                    continue  # finished: leaves running
                off = req.num_computed_tokens - tick
                offs.append(off)
                rids.append(req.request_id)
                joins.append(tick)
                need[off % bs].append(req)
                last = tick + left
                bucket = fin.get(last)
                if bucket is None:
                    fin[last] = [req]
                else:
                    bucket.append(req)
        self._last_end_s = end_s
        return finished
