"""Simulation entities: requests, batches, step costs and result records.

Units are in the names: ``_s`` seconds of simulated time, ``_tokens`` token counts.
The simulated clock (``env.now``) is in seconds.

Token accounting follows vLLM V1 (``vllm/v1/request.py``): a request's *num_tokens* is its
prompt plus the output tokens generated so far; *num_computed_tokens* is how many of those
are in the KV cache. A step schedules ``num_tokens - num_computed_tokens`` (or a chunk of it);
the step that brings ``num_computed_tokens`` up to ``num_tokens`` samples one new output token.
A preempted request loses its KV (``num_computed_tokens = 0``) and recomputes prompt and
outputs before it samples again (preemption by recompute).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple


class RequestStatus(str, Enum):
    """Life cycle of a request inside one server."""

    PENDING = "pending"  # created by the workload, not yet arrived
    WAITING = "waiting"  # in the wait queue (new or preempted)
    RUNNING = "running"  # holds a seat and KV blocks
    FINISHED = "finished"  # produced all its output tokens
    REJECTED = "rejected"  # can never be served (reason in ``reject_reason``)
    TIMED_OUT = "timed_out"  # the client gave up first (arrival.request_timeout_s; reason in ``reject_reason``)


# a request in one of these states has left: it is never scheduled or recorded again
LEFT_STATUSES = frozenset((RequestStatus.FINISHED, RequestStatus.REJECTED, RequestStatus.TIMED_OUT))


@dataclass(slots=True, eq=False)
class Request:
    """One inference request and its mutable progress.

    Identity and sizes are fixed at creation; the scheduler and engine update the progress
    fields. ``prompt_tokens`` includes the shared prefix (``prefix_tokens`` of group
    ``prefix_group``); ``output_tokens`` >= 1 is the number of tokens the request generates.
    Requests with the same ``prompt_id`` >= 0 send the same prompt tokens (a prompt pool).
    Preconditions: ``0 <= prefix_tokens <= prompt_tokens``, ``prompt_tokens >= 1``.
    """

    request_id: int
    prompt_tokens: int
    output_tokens: int
    arrival_s: float = 0.0
    prefix_group: int = -1
    prefix_tokens: int = 0
    priority: int = 0
    prompt_id: int = -1  # pool prompt (workload.prompt_pool) whose tokens this prompt repeats; -1 = unique
    # progress (vLLM V1 names)
    num_computed_tokens: int = 0
    num_output_generated: int = 0
    status: RequestStatus = RequestStatus.PENDING
    # timestamps and counters filled in by the engine / scheduler
    first_scheduled_s: float = -1.0
    first_token_s: float = -1.0
    finish_s: float = -1.0
    last_token_s: float = -1.0
    num_preemptions: int = 0
    cached_prompt_tokens: int = 0
    reject_reason: str = ""  # why it failed: refused (rejected) or given up by the client (timed_out)
    max_itl_s: float = 0.0
    itls_s: list[float] | None = None
    done_event: Any = None  # simpy Event (or None) triggered when the request leaves

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated output tokens (vLLM ``Request.num_tokens``)."""
        return self.prompt_tokens + self.num_output_generated

    @property
    def remaining_tokens(self) -> int:
        """Tokens still to compute before the next sample."""
        return self.prompt_tokens + self.num_output_generated - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED


def prompt_block_key(req: Request, index: int, block_size: int) -> tuple[str, int, int]:
    """Identity of the tokens in KV block ``index`` of ``req``'s prompt (prefix caching).

    Blocks inside the shared prefix are shared by the prefix group, blocks inside a pool
    prompt by every request repeating that prompt; other blocks are the request's own. Two
    requests with equal keys hold the same tokens there (as vLLM's block hashes would match).
    """
    end = (index + 1) * block_size
    if req.prefix_group >= 0 and end <= req.prefix_tokens:
        return ("p", req.prefix_group, index)
    if req.prompt_id >= 0 and end <= req.prompt_tokens:
        return ("q", req.prompt_id, index)
    return ("r", req.request_id, index)


class BatchItem(NamedTuple):
    """One request's share of a step (immutable; a tuple for cheap construction).

    ``context_tokens`` tokens are already in KV before the step; the step computes
    ``new_tokens`` more. ``is_decode`` is True when the item computes exactly the latest
    sampled token of a request that already has output (an ordinary decode); every other item
    (prompt chunks, recomputation after preemption) is a prefill item.
    """

    request_id: int
    new_tokens: int
    context_tokens: int
    is_decode: bool

    @property
    def is_prefill(self) -> bool:
        return not self.is_decode


@dataclass(slots=True, frozen=True)
class Batch:
    """What one engine step computes. Empty batches are never executed.

    Besides the items it carries the aggregates cost models need, so that pricing the decode
    part is O(1): decode count, the sum and the maximum of the decodes' context lengths.
    """

    items: tuple[BatchItem, ...]
    num_prefill_tokens: int
    num_decode_tokens: int
    num_prefill_reqs: int
    num_decode_reqs: int
    decode_context_sum: int = 0
    decode_context_max: int = 0

    @classmethod
    def of(cls, items: tuple[BatchItem, ...] | list[BatchItem]) -> "Batch":
        """A batch of ``items`` with its aggregates computed."""
        items = tuple(items)
        pt = pr = dt = dr = csum = cmax = 0
        for it in items:
            if it.is_decode:
                dt += it.new_tokens
                dr += 1
                csum += it.context_tokens
                if it.context_tokens > cmax:
                    cmax = it.context_tokens
            else:
                pt += it.new_tokens
                pr += 1
        return cls(items, pt, dt, pr, dr, csum, cmax)

    @property
    def num_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode_tokens

    @property
    def num_reqs(self) -> int:
        return len(self.items)

    @property
    def is_mixed(self) -> bool:
        """True when prefill work and decodes share the step."""
        return self.num_prefill_reqs > 0 and self.num_decode_reqs > 0

    def prefill_items(self) -> list[BatchItem]:
        return [it for it in self.items if not it.is_decode]

    def __len__(self) -> int:
        return len(self.items)


@dataclass(slots=True, frozen=True)
class StepCost:
    """Priced duration of one step, seconds.

    ``total_s`` is what the clock advances; ``compute_s``/``memory_s`` are the roofline bounds
    of the whole step (informational), ``overhead_s`` the fixed CPU/launch part included in
    ``total_s``. ``prefill_s``/``decode_s`` are the per-phase times before combination (0 for an
    absent phase). Postcondition of every cost model: ``total_s > 0`` for a non-empty batch.
    """

    total_s: float
    compute_s: float = 0.0
    memory_s: float = 0.0
    overhead_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0


@dataclass(slots=True)
class StepRecord:
    """The columns of the per-step table (times in seconds of simulated time).

    The metrics sink stores steps column-wise in this field order; the class is the schema.
    """

    step_index: int
    start_s: float
    duration_s: float
    num_prefill_tokens: int
    num_decode_reqs: int
    num_prefill_reqs: int
    num_running: int
    num_waiting: int
    is_mixed: bool
    kv_blocks_used: int
    num_preempted: int


@dataclass(slots=True)
class RequestRecord:
    """Outcome of one request. Latencies are NaN where undefined (e.g. rejected requests).

    A timed-out request's ``finish_s`` is when the client gave up (so ``e2e_s`` is the
    timeout) and its ``tpot_s`` is NaN. ``generated_tokens`` (output tokens delivered before
    the request left, or by the horizon) is a column only of runs with a client timeout
    (:data:`sim.records.metrics.TIMEOUT_COLUMNS`).
    """

    request_id: int
    status: str
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    prefix_tokens: int
    cached_prompt_tokens: int
    first_scheduled_s: float
    first_token_s: float
    finish_s: float
    ttft_s: float
    e2e_s: float
    tpot_s: float
    queue_delay_s: float
    max_itl_s: float
    num_preemptions: int
    reject_reason: str = ""
    generated_tokens: int = 0
