"""The scheduler contract and its registry.

A scheduler owns the wait queue, the running list and the KV block manager of one server,
and plans one step at a time:

* ``add_request(req)`` puts an arrived request in the wait queue.
* ``schedule(now_s) -> SchedulerOutput`` plans the next step: which requests compute how many
  new tokens, which were preempted. It allocates KV for what it schedules and never exceeds
  ``max_num_batched_tokens`` tokens, ``max_num_seqs`` running requests or the free KV blocks.
  It does not advance time, price the step or record metrics.
* ``update_from_output(out, end_s) -> (first_token, finished)`` applies the step's progress
  once the engine has advanced the clock to ``end_s``: computed tokens, sampled tokens, and
  frees the KV of finished requests.
* ``abort(req)`` removes a waiting or running request and frees its KV (its client gave up,
  ``arrival.request_timeout_s``), between steps; a waiting request also while a step runs.

Work conservation: if the wait queue or running list is non-empty and something fits,
``schedule`` returns a non-empty batch.

A scheduler also states what the engine may rely on beyond that, as a
:class:`SchedulerCapabilities` value (``capabilities`` attribute; none when absent), so the
engine never inspects a scheduler's class: a new policy opts in by saying so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sim.entities import Batch, Request
from sim.registry import Registry


@dataclass(slots=True)
class SchedulerOutput:
    """One planned step: the batch, the scheduled requests in batch order, and preemptions.

    ``kv_loads`` lists the requests admitted with blocks loaded from the KV manager's CPU
    offloading tier, with the number of blocks each (empty without offloading); the engine adds
    their transfer time to the step.

    ``deferred_mode`` and ``num_deferred`` are set by a scheduler in deferred-decode mode
    (:meth:`~sim.scheduler.vllm_v1.VllmV1Scheduler.defer_decodes`): the first
    ``num_deferred`` requests are decodes whose progress is deferred. ``deferred_gap_s`` is
    set by ``update_from_output``: the inter-token gap each of them closed.
    """

    batch: Batch
    requests: list[Request]
    preempted: list[Request] = field(default_factory=list)
    deferred_mode: bool = False
    num_deferred: int = 0
    deferred_gap_s: float = 0.0
    kv_loads: list[tuple[Request, int]] | tuple[()] = ()

    @property
    def is_empty(self) -> bool:
        return not self.requests


@dataclass(frozen=True, slots=True)
class SchedulerLimits:
    """The server limits a scheduler obeys (vLLM names; all > 0 except the threshold)."""

    max_num_seqs: int
    max_num_batched_tokens: int
    long_prefill_token_threshold: int
    enable_chunked_prefill: bool
    max_model_len: int
    chunk_size_tokens: int = 512
    starvation_age_s: float = 10.0

    def __post_init__(self) -> None:
        if self.max_num_seqs <= 0 or self.max_num_batched_tokens <= 0 or self.max_model_len <= 0:
            raise ValueError("max_num_seqs, max_num_batched_tokens and max_model_len must be > 0")
        if self.long_prefill_token_threshold < 0:
            raise ValueError("long_prefill_token_threshold must be >= 0")


@dataclass(frozen=True, slots=True)
class SchedulerCapabilities:
    """What a scheduler promises the engine beyond the base contract (all off by default).

    ``plain_decodes``: when nothing waits, no preemption is pending and every running request
    is an ordinary decode that produced a token at the current instant, ``schedule`` plans every
    running request for exactly one token, in running order, and nothing else; its KV needs are
    one slot per request; ``running``, ``waiting``, ``kv`` and ``limits`` are the scheduler's
    live state. The engine may then apply a stretch of such steps at once (fast-forward),
    updating ``running`` and the KV manager itself exactly as the steps would.

    ``deferred_decodes``: the scheduler implements ``defer_decodes() -> bool`` (turn deferred
    decode bookkeeping on if it applies; returns whether it is on), ``sync()`` (bring every
    request object up to date, between steps), ``progress_of(req) -> (generated tokens, max
    gap s)`` (a running request's progress, readable while a step runs) and
    ``deferred_finish_within(num_steps) -> bool``; while on,
    ``update_from_output`` reports deferred decodes through ``SchedulerOutput.num_deferred`` /
    ``deferred_gap_s`` (see :meth:`sim.scheduler.vllm_v1.VllmV1Scheduler.defer_decodes`).

    ``kv_offload_loads``: admission looks past the GPU prefix-cache hits into the KV manager's
    CPU offloading tier and reports the blocks it loads in ``SchedulerOutput.kv_loads``. A
    server with offloading refuses a scheduler without it (its admission would never load).
    """

    plain_decodes: bool = False
    deferred_decodes: bool = False
    kv_offload_loads: bool = False


NO_CAPABILITIES = SchedulerCapabilities()


SCHEDULERS: Registry = Registry("scheduler policy")
"""Registry of scheduler classes: ``cls(limits: SchedulerLimits, kv: KVCacheManager)``."""
