"""One vLLM-like server, built from a :class:`~sim.config.RunConfig`: its KV cache size, limits,
cost model, scheduler, engine and API-server front end. A single-server run holds one; a fleet
holds one per replica.

KV cache size (when ``server.num_gpu_blocks`` is not given), per GPU, as vLLM profiles it::

    blocks = floor((memory · gpu_memory_utilization − weights/TP − reserve) / block_bytes)
    block_bytes = 2 · layers · max(1, kv_heads/TP) · head_dim · dtype_bytes · block_size

``reserve`` (activations, CUDA graphs, non-torch memory) is :data:`RUNTIME_RESERVE_GIB_TP1`
(or ``_TP_MULTI``); weights include embeddings and LM head.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import simpy

from sim.catalogue.hardware import GpuSpec, resolve_gpu
from sim.catalogue.models import ModelSpec, resolve_model, served_model
from sim.config import (
    VLLM_DEFAULT_BATCHED_TOKENS_LARGE_GPU,
    VLLM_DEFAULT_BATCHED_TOKENS_SMALL_GPU,
    VLLM_LARGE_GPU_THRESHOLD_GIB,
    RunConfig,
)
from sim.core.engine import Engine
from sim.cost import build_cost_model, resolve_cost_settings
from sim.entities import Request
from sim.errors import ConfigError
from sim.records.metrics import MetricsSink, SloCertainlyMissed, TtftWatch
from sim.scheduler import SCHEDULERS
from sim.scheduler.base import NO_CAPABILITIES, SchedulerLimits
from sim.scheduler.kv import KVCacheManager

GIB = 2**30
# Memory vLLM keeps per GPU outside weights and KV: activation peak of its profiling run,
# CUDA graphs, non-torch allocations (NCCL buffers when TP > 1). Fitted to the KV sizes vLLM
# 0.11 logged for the ground-truth runs on H100 80 GB at utilisation 0.9 (implied reserve:
# Llama-2-7B TP1 1.15 GiB, CodeLlama-34B TP1 0.97 GiB; Llama-2-70B TP4 1.60 GiB,
# CodeLlama-34B TP2 1.61 GiB).
RUNTIME_RESERVE_GIB_TP1 = 1.1
RUNTIME_RESERVE_GIB_TP_MULTI = 1.6


def kv_block_bytes_per_gpu(model: ModelSpec, tp: int, block_size: int) -> int:
    kv_heads = max(1, model.num_kv_heads // tp)
    return int(2 * model.num_layers * kv_heads * model.head_dim * model.kv_bytes_per_element * block_size)


def derive_num_gpu_blocks(model: ModelSpec, gpu: GpuSpec, tp: int, utilization: float, block_size: int) -> int:
    """KV blocks that fit per GPU (see module docstring). ConfigError if none fit."""
    # embeddings and LM head occupy memory too (weights_bytes counts transformer layers only);
    # quantised checkpoints keep them in the activation dtype
    weights = model.weights_bytes + 2 * model.vocab_size * model.hidden_size * model.act_bytes
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


# Host<->GPU link per GPU and direction, 1e9 B/s, for loads from the CPU offloading tier: PCIe
# x16 at 32 GT/s (Gen5, Hopper and Blackwell; H100 SXM5 datasheet: "PCIe Gen5: 128 GB/s", both
# directions) or 16 GT/s (Gen4, earlier parts: an assumption for GPUs without a Gen5 host link).
HOST_LINK_GBPS_PCIE_GEN5 = 64.0
HOST_LINK_GBPS_PCIE_GEN4 = 32.0


def default_host_link_gbps(gpu: GpuSpec) -> float:
    """The host<->GPU PCIe rate per direction (1e9 B/s) of ``gpu``'s architecture."""
    return HOST_LINK_GBPS_PCIE_GEN5 if gpu.architecture in ("hopper", "blackwell") else HOST_LINK_GBPS_PCIE_GEN4


def kv_offloading(cfg: RunConfig, model: ModelSpec, gpu: GpuSpec) -> tuple[int, float]:
    """``(CPU-tier blocks per GPU, seconds to load one block)`` of ``server.kv_offloading_size_gib``
    (``(0, 0.0)`` when off). vLLM's size is summed over the TP ranks; each GPU holds its share of
    every block and loads it over its own host link, in parallel with the other ranks."""
    s = cfg.server
    if s.kv_offloading_size_gib is None:
        return 0, 0.0
    if not s.enable_prefix_caching:
        raise ConfigError("server.kv_offloading_size_gib: CPU KV offloading extends the prefix cache; set server.enable_prefix_caching too")
    tp = cfg.tensor_parallel_size
    block_bytes = kv_block_bytes_per_gpu(model, tp, s.block_size)
    blocks = math.floor(s.kv_offloading_size_gib * GIB / tp / block_bytes)
    if blocks <= 0:
        raise ConfigError(
            f"server.kv_offloading_size_gib: {s.kv_offloading_size_gib} GiB over {tp} GPU(s) holds no KV block of {block_bytes} bytes per GPU; raise it"
        )
    bw_gbps = s.kv_offloading_bw_gbps or default_host_link_gbps(gpu)
    return blocks, block_bytes / (bw_gbps * 1e9)


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
    if s.max_model_len is not None and s.max_model_len > model.max_position_embeddings and not s.allow_long_max_model_len:
        # vLLM refuses this too (ModelConfig: "User-specified max_model_len ... is greater than
        # the derived max_model_len"), unless VLLM_ALLOW_LONG_MAX_MODEL_LEN is set
        raise ConfigError(
            f"server.max_model_len: {s.max_model_len} exceeds {model.name}'s max_position_embeddings ({model.max_position_embeddings}); "
            "lower it, give a model config with a longer context, or set server.allow_long_max_model_len (vLLM's VLLM_ALLOW_LONG_MAX_MODEL_LEN)"
        )
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


class Server:
    """The built parts of one server, nothing run yet.

    Attributes: ``cfg``, ``model``, ``gpu``, ``limits`` (effective server limits, see
    :func:`resolve_limits`), ``cost_settings``, ``cost_model``, ``kv``, ``scheduler``, ``sink``,
    ``engine``. :meth:`submit` is the server's front door: the API server's delay (the
    calibration's ``frontend_latency_ms`` + ``frontend_us_per_prompt_token`` × prompt tokens),
    then the engine. ``on_leave(req)`` (optional) is called when a request leaves the engine
    (finished, rejected or timed out), at that simulated instant.
    """

    def __init__(
        self,
        cfg: RunConfig,
        env: simpy.Environment,
        sink: MetricsSink,
        *,
        fast_forward: bool = True,
        on_leave: Callable[[Request], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.env = env
        self.model = served_model(resolve_model(cfg.model), cfg.server.quantization, cfg.server.kv_cache_dtype)
        self.gpu = resolve_gpu(cfg.gpu)
        self.limits = resolve_limits(cfg, self.model, self.gpu)
        # the calibration is read once, here, and handed to the cost model and the frontend
        self.cost_settings = resolve_cost_settings(cfg)
        self.cost_model = build_cost_model(cfg, self.cost_settings)
        num_cpu_blocks, self.kv_load_s_per_block = kv_offloading(cfg, self.model, self.gpu)
        self.kv = KVCacheManager(self.limits["num_gpu_blocks"], cfg.server.block_size, cfg.server.enable_prefix_caching, num_cpu_blocks)
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
        self.sink = sink
        if num_cpu_blocks:
            if not getattr(self.scheduler, "capabilities", NO_CAPABILITIES).kv_offload_loads:
                raise ConfigError(f"scheduler.policy: {cfg.scheduler.policy!r} does not load from a CPU KV-offloading tier; use vllm-v1, priority or sjf")
            sink.enable_kv_offload(self.kv)
        self.engine = Engine(
            env,
            self.scheduler,
            self.cost_model,
            sink,
            max_model_len=self.limits["max_model_len"],
            kv_capacity_tokens=self.limits["kv_capacity_tokens"],
            max_prefill_tokens_unchunked=None if cfg.server.enable_chunked_prefill else self.limits["max_num_batched_tokens"],
            fast_forward=fast_forward,
            async_scheduling=cfg.server.async_scheduling,
            on_leave=on_leave,
            kv_load_s_per_block=self.kv_load_s_per_block,
        )
        frontend_ms = self.cost_settings.knob("frontend_latency_ms") or 0.0
        per_token_us = self.cost_settings.knob("frontend_us_per_prompt_token") or 0.0
        self.frontend_latency_s = float(frontend_ms) * 1e-3
        self.frontend_s_per_prompt_token = float(per_token_us) * 1e-6
        self.in_frontend: dict[int, Request] = {}  # sent, not yet handed to the engine
        # vLLM's API server tokenizes in its event loop, one request at a time per API-server
        # process (--api-server-count): the per-token part is a FIFO queue, so a burst of long
        # prompts waits in line before the engine sees them; the fixed latency overlaps
        self._tokenizer_free_s = [0.0] * cfg.server.api_server_count
        self.submit: Callable[..., None] = self.engine.submit if not (frontend_ms or per_token_us) else self._frontend_submit

    def _frontend_submit(self, req: Request, sent_s: float | None = None) -> None:
        """Hand ``req`` to the engine after the API server: ``latency`` (HTTP handling, hand-off;
        requests overlap in it), then ``per_token × prompt tokens`` of tokenization on the first
        free API-server process, first come first served (a burst queues there). TTFT, E2E and
        queue delay include both; the send time stays the request's arrival."""
        self.in_frontend[req.request_id] = req
        ready_s = self.env.now + self.frontend_latency_s
        free = self._tokenizer_free_s
        worker = min(range(len(free)), key=free.__getitem__)
        done_s = max(ready_s, free[worker]) + self.frontend_s_per_prompt_token * req.prompt_tokens
        free[worker] = done_s
        self.env.process(self._deliver(req, self.env.now if sent_s is None else sent_s, done_s - self.env.now))

    def _deliver(self, req: Request, sent_s: float, delay_s: float):
        yield self.env.timeout(delay_s)
        if self.in_frontend.pop(req.request_id, None) is None:
            return  # its client gave up while the API server held it
        self.engine.submit(req, sent_s)

    def time_out(self, req: Request, timeout_s: float, sent_s: float) -> None:
        """The client gave up on ``req`` now, ``timeout_s`` after sending it at ``sent_s``: it
        leaves the API server or the engine (:meth:`Engine.time_out`), recorded ``timed_out``.
        Precondition: ``req`` was sent here and has not left."""
        if self.in_frontend.get(req.request_id) is req:
            del self.in_frontend[req.request_id]
            req.arrival_s = sent_s  # the engine, which records arrivals, never saw it
            self.engine.leave_timed_out(req, timeout_s, "in the API server, before the engine saw it")
        else:
            self.engine.time_out(req, timeout_s)

    def sync(self) -> None:
        """Bring deferred decode bookkeeping up to date (before reading request state)."""
        sync = getattr(self.scheduler, "sync", None)
        if sync is not None:
            sync()

    def requests_inside(self) -> list[Request]:
        """Requests sent to this server that have not left: in the API server, staged (async
        scheduling), waiting or running. Call :meth:`sync` first for up-to-date token counts."""
        running = self.scheduler.running
        leaving = self.engine.leaving  # timed out during the running step: left already
        if leaving:
            running = [r for r in running if r not in leaving]
        return [*self.scheduler.waiting, *running, *self.engine.staged_requests, *self.in_frontend.values()]


def percent_progress(progress: Callable[[int, int], None], total: int) -> Callable[[int], None]:
    """``done -> progress(done, total)`` called about every 1 % of ``total`` and at the end."""
    every = max(1, total // 100)

    def report(done: int) -> None:
        if done % every == 0 or done == total:
            progress(done, total)

    return report


def ttft_watch(cfg: RunConfig, num_requests: int) -> TtftWatch | None:
    """The watch of ``cfg.stop_when_slo_missed`` (None when off). ConfigError without a TTFT p99 SLO."""
    if not cfg.stop_when_slo_missed:
        return None
    if cfg.slo.ttft_p99_ms is None:
        raise ConfigError("stop_when_slo_missed: needs slo.ttft_p99_ms, the bound it watches")
    return TtftWatch(cfg.slo.ttft_p99_ms * 1e-3, num_requests)


def run_until_done(env, horizon_s: float | None) -> str:
    """Run ``env`` to ``horizon_s`` (or until no event is left); '' then, or why it stopped
    earlier (a :class:`~sim.records.metrics.TtftWatch` fired)."""
    try:
        env.run(until=horizon_s)
    except SloCertainlyMissed as err:
        return str(err)
    return ""
