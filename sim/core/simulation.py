"""Build and run one simulation from a :class:`~sim.config.RunConfig`.

:func:`simulate` is the library entry point: it resolves the model and GPU, sizes the KV
cache, builds the scheduler, cost model, workload and arrival process, runs SimPy, and returns
a :class:`SimResult` (tables + summary). It performs no file output.

KV cache size (when ``server.num_gpu_blocks`` is not given), per GPU, as vLLM profiles it::

    blocks = floor((memory · gpu_memory_utilization − weights/TP − reserve) / block_bytes)
    block_bytes = 2 · layers · max(1, kv_heads/TP) · head_dim · dtype_bytes · block_size

``reserve`` (activations, CUDA graphs, non-torch memory) is :data:`RUNTIME_RESERVE_GIB_TP1`
(or ``_TP_MULTI``); weights include embeddings and LM head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from sim.catalogue.hardware import GpuSpec, resolve_gpu
from sim.catalogue.models import ModelSpec, resolve_model
from sim.config import (
    VLLM_DEFAULT_BATCHED_TOKENS_LARGE_GPU,
    VLLM_DEFAULT_BATCHED_TOKENS_SMALL_GPU,
    VLLM_LARGE_GPU_THRESHOLD_GIB,
    RunConfig,
)
from sim.core.engine import Engine, SimEnvironment
from sim.cost import build_cost_model, resolve_cost_settings
from sim.entities import Request
from sim.errors import ConfigError
from sim.load import arrival as _arrival  # noqa: F401  (registers strategies)
from sim.load.arrival import ARRIVALS
from sim.load.workload import build_workload
from sim.records.metrics import REQUEST_COLUMNS, MetricsSink, request_record, requests_frame, steps_frame, summarize
from sim.rng import RandomStreams
from sim.scheduler import SCHEDULERS
from sim.scheduler.base import SchedulerLimits
from sim.scheduler.kv import KVCacheManager

GIB = 2**30
# Memory vLLM keeps per GPU outside weights and KV: activation peak of its profiling run,
# CUDA graphs, non-torch allocations (NCCL buffers when TP > 1). Fitted to the KV sizes vLLM
# 0.11 logged for the ground-truth runs on H100 80 GB at utilisation 0.9 (implied reserve:
# Llama-2-7B TP1 1.15 GiB, CodeLlama-34B TP1 0.97 GiB; Llama-2-70B TP4 1.60 GiB,
# CodeLlama-34B TP2 1.61 GiB).
RUNTIME_RESERVE_GIB_TP1 = 1.1
RUNTIME_RESERVE_GIB_TP_MULTI = 1.6


@dataclass
class SimResult:
    """Outcome of one run: per-request and per-step tables, ITLs and a summary."""

    config: RunConfig
    requests: pd.DataFrame
    steps: pd.DataFrame
    itls_s: np.ndarray
    summary: dict
    derived: dict = field(default_factory=dict)


def kv_block_bytes_per_gpu(model: ModelSpec, tp: int, block_size: int) -> int:
    kv_heads = max(1, model.num_kv_heads // tp)
    return int(2 * model.num_layers * kv_heads * model.head_dim * model.bytes_per_param * block_size)


def derive_num_gpu_blocks(model: ModelSpec, gpu: GpuSpec, tp: int, utilization: float, block_size: int) -> int:
    """KV blocks that fit per GPU (see module docstring). ConfigError if none fit."""
    # embeddings and LM head occupy memory too (weights_bytes counts transformer layers only)
    weights = model.weights_bytes + 2 * model.vocab_size * model.hidden_size * model.bytes_per_param
    reserve_gib = RUNTIME_RESERVE_GIB_TP1 if tp == 1 else RUNTIME_RESERVE_GIB_TP_MULTI
    avail = gpu.memory_gib * GIB * utilization - weights / tp - reserve_gib * GIB
    blocks = math.floor(avail / kv_block_bytes_per_gpu(model, tp, block_size))
    if blocks <= 0:
        raise ConfigError(
            f"model {model.name} does not fit on {tp}x {gpu.name} at gpu_memory_utilization {utilization}: "
            f"weights {model.weights_bytes / tp / GIB:.1f} GiB per GPU leave no room for KV cache; "
            "raise tensor_parallel_size or server.gpu_memory_utilization, or set server.num_gpu_blocks"
        )
    return blocks


def default_max_num_batched_tokens(gpu: GpuSpec) -> int:
    """vLLM's pick for the OpenAI server: 8192 on GPUs with >= 70 GiB, else 2048."""
    if gpu.memory_gib >= VLLM_LARGE_GPU_THRESHOLD_GIB:
        return VLLM_DEFAULT_BATCHED_TOKENS_LARGE_GPU
    return VLLM_DEFAULT_BATCHED_TOKENS_SMALL_GPU


def resolve_limits(cfg: RunConfig, model: ModelSpec, gpu: GpuSpec) -> dict:
    """Effective server limits (vLLM defaults filled in)."""
    s = cfg.server
    tp = cfg.tensor_parallel_size
    if model.num_heads % tp:
        raise ConfigError(
            f"tensor_parallel_size: {tp} does not divide {model.name}'s {model.num_heads} attention heads; "
            f"choose a divisor such as {', '.join(str(d) for d in (1, 2, 4, 8) if model.num_heads % d == 0)}"
        )
    blocks = s.num_gpu_blocks or derive_num_gpu_blocks(model, gpu, tp, s.gpu_memory_utilization, s.block_size)
    max_len = s.max_model_len or model.max_position_embeddings
    budget = s.max_num_batched_tokens or default_max_num_batched_tokens(gpu)
    if not s.enable_chunked_prefill:
        if s.max_num_batched_tokens is None:
            budget = max(budget, max_len)  # vLLM: max(max_model_len, default) without chunking
        elif budget < max_len:
            # vLLM refuses this too (SchedulerConfig._verify_args): a prompt, or a preempted
            # request's recompute, must fit one step when prompts cannot be chunked.
            raise ConfigError(
                f"server.max_num_batched_tokens: {budget} is smaller than max_model_len {max_len} with chunked prefill "
                "disabled; raise it, lower server.max_model_len, or enable chunked prefill"
            )
    if budget < s.block_size:
        raise ConfigError(f"server.max_num_batched_tokens: {budget} is smaller than one KV block ({s.block_size} tokens); raise it")
    return {
        "num_gpu_blocks": int(blocks),
        "max_num_batched_tokens": int(budget),
        "max_model_len": int(max_len),
        "kv_capacity_tokens": int(blocks * s.block_size),
    }


class Simulation:
    """One configured, runnable simulation: all parts built, nothing run yet.

    Attributes (for inspection and tests): ``env``, ``model``, ``gpu``, ``limits`` (effective
    server limits), ``cost_model``, ``kv``, ``scheduler``, ``workload``, ``sink``, ``engine``.
    """

    def __init__(self, cfg: RunConfig, spill=None, chunk_rows: int = 65536, fast_forward: bool = True) -> None:
        """Build every part of the run. ``spill(kind, frame)``, if given, receives the request
        and step records in chunks of ``chunk_rows`` (streaming mode, for very long runs).
        ``fast_forward`` lets the engine apply stretches of pure-decode steps at once (same
        results; off only to check that)."""
        self.cfg = cfg
        self.model = resolve_model(cfg.model)
        self.gpu = resolve_gpu(cfg.gpu)
        self.limits = resolve_limits(cfg, self.model, self.gpu)
        self.streams = RandomStreams(cfg.seed)
        # the calibration is read once, here, and handed to the cost model and the frontend
        self.cost_settings = resolve_cost_settings(cfg)
        self.cost_model = build_cost_model(cfg, self.cost_settings)
        self.kv = KVCacheManager(self.limits["num_gpu_blocks"], cfg.server.block_size, cfg.server.enable_prefix_caching)
        sched_limits = SchedulerLimits(
            max_num_seqs=cfg.server.max_num_seqs,
            max_num_batched_tokens=self.limits["max_num_batched_tokens"],
            long_prefill_token_threshold=cfg.server.long_prefill_token_threshold,
            enable_chunked_prefill=cfg.server.enable_chunked_prefill,
            max_model_len=self.limits["max_model_len"],
            chunk_size_tokens=cfg.scheduler.chunk_size_tokens,
            starvation_age_s=cfg.scheduler.starvation_age_s,
        )
        self.scheduler = SCHEDULERS.get(cfg.scheduler.policy, "scheduler.policy")(sched_limits, self.kv)
        self.workload = build_workload(cfg.workload, self.streams)
        if cfg.workload.prompt_pool_warm:
            # the server served these prompts before this run (an earlier stage)
            for req in self.workload.pool_prompts().values():
                self.kv.prewarm(req)
        self.env = SimEnvironment()
        self.sink = MetricsSink(record_itls=cfg.record_itls, spill=spill, chunk_rows=chunk_rows)
        self.engine = Engine(
            self.env,
            self.scheduler,
            self.cost_model,
            self.sink,
            max_model_len=self.limits["max_model_len"],
            kv_capacity_tokens=self.limits["kv_capacity_tokens"],
            max_prefill_tokens_unchunked=None if cfg.server.enable_chunked_prefill else self.limits["max_num_batched_tokens"],
            fast_forward=fast_forward,
            async_scheduling=cfg.server.async_scheduling,
        )
        frontend_ms = self.cost_settings.knob("frontend_latency_ms") or 0.0
        per_token_us = self.cost_settings.knob("frontend_us_per_prompt_token") or 0.0
        self.num_sent = 0  # requests the client has sent (ids 0..num_sent-1: sends follow id order)
        self._in_frontend: dict[int, Request] = {}  # sent, not yet handed to the engine
        submit = (
            self._counted(self.engine.submit) if not (frontend_ms or per_token_us) else self._frontend(float(frontend_ms) * 1e-3, float(per_token_us) * 1e-6)
        )
        ARRIVALS.get(cfg.arrival.strategy, "arrival.strategy")(self.env, submit, self.workload, cfg.arrival, self.streams)

    def _frontend(self, latency_s: float, per_prompt_token_s: float = 0.0):
        """A ``submit`` that hands each request to the engine ``latency_s + per_prompt_token_s
        × prompt tokens`` after the client sent it (the API server's HTTP handling,
        tokenization and hand-off to the engine), with the send time as its arrival: TTFT, E2E
        and queue delay include the latency. Equal delays keep the send order; a longer prompt
        sent earlier can reach the engine after a shorter one, as it would."""
        env, engine, pending = self.env, self.engine, self._in_frontend

        def deliver(req, sent_s: float):
            yield env.timeout(latency_s + per_prompt_token_s * req.prompt_tokens)
            del pending[req.request_id]
            engine.submit(req, sent_s)

        def submit(req) -> None:
            pending[req.request_id] = req
            env.process(deliver(req, env.now))

        return self._counted(submit)

    def _counted(self, submit):
        """``submit`` that also counts the requests sent (for the horizon's bookkeeping)."""

        def counted(req) -> None:
            self.num_sent += 1
            submit(req)

        return counted

    def run(self, progress=None) -> SimResult:
        """Run to the horizon (or until every request left) and tabulate. Call once.

        ``progress(done, total)`` is called as requests leave (about every 1 %). Requests
        still in the server at the horizon are recorded ``in_flight``, those never sent
        ``not_sent``. In streaming mode the returned ``requests`` and ``steps`` tables are
        empty (the records went to ``spill``) and latency percentiles in the summary come from
        0.5 %-wide histogram bins.
        """
        cfg = self.cfg
        sink = self.sink
        total = len(self.workload)
        if progress is not None:
            every = max(1, total // 100)
            sink.progress = lambda done: progress(done, total) if done % every == 0 or done == total else None
        self.env.run(until=cfg.horizon_s)
        sink.progress = None
        sync = getattr(self.scheduler, "sync", None)
        if sync is not None:  # deferred decodes: bring running requests up to date
            sync()
        # Requests are sent in id order, so ids >= num_sent were never sent. A sent request is
        # in the API server (frontend delay), staged (async scheduling) or in the scheduler.
        inside = [*self.scheduler.waiting, *self.scheduler.running, *self.engine.staged_requests, *self._in_frontend.values()]
        for req in sorted(inside, key=lambda r: r.request_id):
            sink.on_request_done(req, "in_flight")
        for i in range(self.num_sent, total):
            sink.add_record(request_record(self.workload.make_request(i), "not_sent"))
        if progress is not None:
            progress(total, total)
        streamed = sink.spill is not None
        sink.finish()
        if streamed:
            req_df = requests_frame({name: [] for name in REQUEST_COLUMNS})
            step_df = steps_frame([])
            itls = np.empty(0)
            assert sink.streaming_summary is not None  # streaming mode keeps one
            summary = sink.streaming_summary.summary(sink.step_stats(), sink.itl_histogram if cfg.record_itls else None)
        else:
            req_df = requests_frame(sink.request_columns)
            step_df = sink.steps_frame()
            itls = np.asarray(sink.itls_s, dtype=float)
            summary = summarize(req_df, sink.step_stats(), itls if cfg.record_itls else None)
        derived = dict(
            self.limits,
            cost_model=self.cost_model.name,
            formula=self.cost_settings.formula,
            policy=cfg.scheduler.policy,
            end_s=float(self.env.now),
            num_steps=self.engine.num_steps,
            streamed=streamed,
        )
        return SimResult(cfg, req_df, step_df, itls, summary, derived)


def simulate(cfg: RunConfig) -> SimResult:
    """Run one simulation. Deterministic: same config ⇒ identical tables."""
    return Simulation(cfg).run()
