"""Routers: which replica of a fleet serves a request.

A router sees each replica through a :class:`ReplicaView` — its load as the router knows it
(live, or a snapshot refreshed every ``router.refresh_interval_ms``; the fleet decides) and its
capacity — and returns one of the candidate replicas. Routers are plain classes registered in
:data:`ROUTERS` by name; a factory takes ``(RouterConfig, infos, streams)`` where ``infos`` are
the replicas' static :class:`ReplicaInfo`. The contract:

- ``route(req, views, candidates)`` returns an element of ``candidates`` (replica indices,
  non-empty, ascending); it may keep state (a cursor, a prefix index) but reads the fleet only
  through ``views`` (indexed by replica index).
- ``on_routed(req, index)`` is called once the request is sent to ``index`` (prefix indexes
  learn from it).
- Deterministic: equal inputs and equal seeded streams give equal choices. Ties go to the
  lowest index unless a policy says otherwise.

Scores that compare replicas of different shapes are normalised by each replica's capacity:
queue and running counts per seat (``max_num_seqs``), KV use as a fraction of its blocks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sim.config import RouterConfig
from sim.entities import Request, prompt_block_key
from sim.errors import ConfigError
from sim.registry import Registry
from sim.rng import RandomStreams

# vLLM's data-parallel load balancer scores an engine as waiting × 4 + running
# (vllm/v1/engine/core_client.py, DPLBAsyncMPClient.get_core_engine_for_request).
VLLM_DP_WAITING_WEIGHT = 4
# llm-d inference scheduler's default scheduling profile: prefix-cache-scorer 2, queue-scorer 1,
# kv-cache-utilization-scorer 1 (llm-d-inference-scheduler deploy/config, "default" plugins).
LLM_D_DEFAULT_WEIGHTS = {"prefix-cache": 2.0, "queue": 1.0, "kv": 1.0}


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    """What does not change about a replica during a run."""

    index: int
    group: str
    role: str  # mixed | prefill | decode
    max_num_seqs: int
    num_gpu_blocks: int
    block_size: int


@dataclass(slots=True)
class ReplicaView:
    """A replica's load as the router sees it (counts of requests; KV as a fraction in [0, 1]).

    ``num_waiting``: routed here and not running (in the API server, queued, or preempted);
    ``num_running``: in the running batch; ``kv_usage``: used / total KV blocks.
    """

    index: int
    num_waiting: int
    num_running: int
    kv_usage: float

    def copy(self) -> ReplicaView:
        return ReplicaView(self.index, self.num_waiting, self.num_running, self.kv_usage)


class Router(Protocol):
    def route(self, req: Request, views: Sequence[ReplicaView], candidates: Sequence[int]) -> int: ...

    def on_routed(self, req: Request, index: int) -> None: ...


RouterFactory = Callable[[RouterConfig, Sequence[ReplicaInfo], RandomStreams], Router]
ROUTERS: Registry[RouterFactory] = Registry("router")


def _argmin(candidates: Sequence[int], score: Callable[[int], Any]) -> int:
    """The candidate with the smallest score; ties go to the first (lowest index)."""
    best, best_score = candidates[0], score(candidates[0])
    for i in candidates[1:]:
        s = score(i)
        if s < best_score:
            best, best_score = i, s
    return best


class _Base:
    def __init__(self, cfg: RouterConfig, infos: Sequence[ReplicaInfo], streams: RandomStreams) -> None:
        self.cfg = cfg
        self.infos = list(infos)

    def on_routed(self, req: Request, index: int) -> None:
        pass

    def outstanding_per_seat(self, view: ReplicaView) -> float:
        """vLLM's DP score (waiting × 4 + running) per seat of the replica."""
        return (VLLM_DP_WAITING_WEIGHT * view.num_waiting + view.num_running) / self.infos[view.index].max_num_seqs


@ROUTERS.register("round-robin", "Each candidate in turn (a plain proxy / Kubernetes service).")
class RoundRobin(_Base):
    def __init__(self, cfg: RouterConfig, infos: Sequence[ReplicaInfo], streams: RandomStreams) -> None:
        super().__init__(cfg, infos, streams)
        self._next: dict[tuple[int, ...], int] = {}  # one cursor per candidate set (P/D pools)

    def route(self, req: Request, views: Sequence[ReplicaView], candidates: Sequence[int]) -> int:
        key = tuple(candidates)
        k = self._next.get(key, 0)
        self._next[key] = (k + 1) % len(candidates)
        return candidates[k]


@ROUTERS.register("random", "A uniformly random candidate (stream router.random).")
class RandomRouter(_Base):
    def __init__(self, cfg: RouterConfig, infos: Sequence[ReplicaInfo], streams: RandomStreams) -> None:
        super().__init__(cfg, infos, streams)
        self._rng = streams.get("router.random")

    def route(self, req: Request, views: Sequence[ReplicaView], candidates: Sequence[int]) -> int:
        return candidates[int(self._rng.integers(len(candidates)))]


@ROUTERS.register("least-outstanding", "Fewest waiting × 4 + running per seat (vLLM's data-parallel load balancer).")
class LeastOutstanding(_Base):
    def route(self, req: Request, views: Sequence[ReplicaView], candidates: Sequence[int]) -> int:
        return _argmin(candidates, lambda i: self.outstanding_per_seat(views[i]))


@ROUTERS.register("least-kv", "Lowest KV-cache use (fraction of blocks), then least outstanding.")
class LeastKv(_Base):
    def route(self, req: Request, views: Sequence[ReplicaView], candidates: Sequence[int]) -> int:
        return _argmin(candidates, lambda i: (views[i].kv_usage, self.outstanding_per_seat(views[i])))


class PrefixIndex:
    """The router's own record of which prompt blocks each replica holds: an LRU of block keys
    per replica, fed with every prompt the router sends there (it cannot see the replicas'
    caches; llm-d's prefix-cache scorer and BLIS's prefix-affinity keep the same kind of index).
    """

    def __init__(self, infos: Sequence[ReplicaInfo], capacity_blocks: int | None) -> None:
        self.block_size = {i.index: i.block_size for i in infos}
        self.capacity = {i.index: capacity_blocks or i.num_gpu_blocks for i in infos}
        self._lru: dict[int, OrderedDict] = {i.index: OrderedDict() for i in infos}

    def prompt_blocks(self, req: Request, block_size: int) -> int:
        return req.prompt_tokens // block_size  # full blocks only, as block hashes cover full blocks

    def matched_blocks(self, req: Request, index: int) -> int:
        """Leading prompt blocks of ``req`` the index believes replica ``index`` holds."""
        bs = self.block_size[index]
        lru = self._lru[index]
        n = 0
        for b in range(self.prompt_blocks(req, bs)):
            if prompt_block_key(req, b, bs) not in lru:
                break
            n += 1
        return n

    def size(self, index: int) -> int:
        """Blocks the index holds for replica ``index``."""
        return len(self._lru[index])

    def match_fraction(self, req: Request, index: int) -> float:
        total = self.prompt_blocks(req, self.block_size[index])
        return self.matched_blocks(req, index) / total if total else 0.0

    def add(self, req: Request, index: int) -> None:
        bs = self.block_size[index]
        lru = self._lru[index]
        for b in range(self.prompt_blocks(req, bs)):
            key = prompt_block_key(req, b, bs)
            if key in lru:
                lru.move_to_end(key)
            else:
                lru[key] = None
        cap = self.capacity[index]
        while len(lru) > cap:
            lru.popitem(last=False)


@ROUTERS.register(
    "prefix-affinity",
    "SGLang's cache-aware policy: least loaded when load is imbalanced, else the best prefix match above cache_threshold, else the least-cached replica.",
)
class PrefixAffinity(_Base):
    """SGLang router's cache-aware policy (sgl-router ``CacheAwarePolicy``), on the router's
    prefix index:

    1. if the candidates' outstanding requests (waiting + running) differ by more than
       ``balance_abs_threshold`` and the largest exceeds the smallest × ``balance_rel_threshold``,
       the least loaded (per seat) — load balance first;
    2. else, if the best match covers more than ``cache_threshold`` of the prompt's blocks,
       the replica with that match (ties: least loaded);
    3. else the replica whose index holds the fewest blocks (the one with the most room).
    """

    def __init__(self, cfg: RouterConfig, infos: Sequence[ReplicaInfo], streams: RandomStreams) -> None:
        super().__init__(cfg, infos, streams)
        self.index = PrefixIndex(infos, cfg.prefix_index_blocks)

    def route(self, req: Request, views: Sequence[ReplicaView], candidates: Sequence[int]) -> int:
        cfg = self.cfg
        loads = [views[i].num_waiting + views[i].num_running for i in candidates]
        lo, hi = min(loads), max(loads)
        if hi - lo > cfg.balance_abs_threshold and hi > lo * cfg.balance_rel_threshold:
            return _argmin(candidates, lambda i: self.outstanding_per_seat(views[i]))
        matched = {i: self.index.match_fraction(req, i) for i in candidates}
        best = max(matched.values())
        if best > cfg.cache_threshold:
            return _argmin(candidates, lambda i: (-matched[i], self.outstanding_per_seat(views[i])))
        return _argmin(candidates, lambda i: (self.index.size(i), self.outstanding_per_seat(views[i])))

    def on_routed(self, req: Request, index: int) -> None:
        self.index.add(req, index)


def _spread_score(values: dict[int, float]) -> dict[int, float]:
    """llm-d's min-max normalisation, inverted: 1 for the least loaded, 0 for the most; every
    candidate scores 1 when all are equal."""
    lo, hi = min(values.values()), max(values.values())
    if hi == lo:
        return dict.fromkeys(values, 1.0)
    return {i: (hi - v) / (hi - lo) for i, v in values.items()}


SCORERS = ("prefix-cache", "queue", "running", "kv")


@ROUTERS.register("weighted", "Weighted sum of scorers prefix-cache, queue, running, kv (llm-d default: prefix-cache 2, queue 1, kv 1).")
class Weighted(_Base):
    """Σ weight × score over the configured scorers, each in [0, 1], higher is better; the
    highest total wins (ties: lowest index). Scorers: ``queue`` (waiting per seat, min-max
    inverted as llm-d's queue scorer), ``running`` (running per seat, likewise), ``kv`` (1 − KV
    use), ``prefix-cache`` (share of the prompt's blocks in the router's prefix index)."""

    def __init__(self, cfg: RouterConfig, infos: Sequence[ReplicaInfo], streams: RandomStreams) -> None:
        super().__init__(cfg, infos, streams)
        self.weights = {**LLM_D_DEFAULT_WEIGHTS, **(cfg.weights or {})}
        unknown = sorted(set(self.weights) - set(SCORERS))
        if unknown:
            raise ConfigError(f"cluster.router.weights: unknown scorer {unknown[0]!r}; choose from: {', '.join(SCORERS)}")
        if not any(w > 0 for w in self.weights.values()):
            raise ConfigError(
                f"cluster.router.weights: every scorer weighs 0 ({self.weights}); the weights go over llm-d's default profile, give at least one a weight > 0"
            )
        self.index = PrefixIndex(infos, cfg.prefix_index_blocks) if self.weights.get("prefix-cache", 0) > 0 else None

    def route(self, req: Request, views: Sequence[ReplicaView], candidates: Sequence[int]) -> int:
        w = self.weights
        seats = {i: self.infos[i].max_num_seqs for i in candidates}
        total = dict.fromkeys(candidates, 0.0)
        if w.get("queue", 0) > 0:
            for i, s in _spread_score({i: views[i].num_waiting / seats[i] for i in candidates}).items():
                total[i] += w["queue"] * s
        if w.get("running", 0) > 0:
            for i, s in _spread_score({i: views[i].num_running / seats[i] for i in candidates}).items():
                total[i] += w["running"] * s
        if w.get("kv", 0) > 0:
            for i in candidates:
                total[i] += w["kv"] * (1.0 - views[i].kv_usage)
        if self.index is not None:
            for i in candidates:
                total[i] += w["prefix-cache"] * self.index.match_fraction(req, i)
        return _argmin(candidates, lambda i: -total[i])

    def on_routed(self, req: Request, index: int) -> None:
        if self.index is not None:
            self.index.add(req, index)


def build_router(cfg: RouterConfig, infos: Sequence[ReplicaInfo], streams: RandomStreams) -> Router:
    """The router named by ``cfg.policy`` (ConfigError listing the names if unknown)."""
    return ROUTERS.get(cfg.policy, "cluster.router.policy")(cfg, infos, streams)
