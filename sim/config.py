"""Typed, frozen run configuration, loaded strictly.

One :class:`RunConfig` fully describes a simulation: model, GPU, tensor parallelism, the
server's limits (vLLM flag names), scheduler policy, step-cost model and mixed-batch formula,
workload, arrival strategy and seed. Unknown keys, wrong types and out-of-range values raise
:class:`~sim.errors.ConfigError` naming the field (``server.max_num_seqs: ...``). Loading from a
file is the CLI's job; this module parses mappings only (no I/O).
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sim.errors import ConfigError

# vLLM defaults (vllm/engine/arg_utils.py, EngineArgs and _set_default_args_v1; vllm 0.11):
VLLM_DEFAULT_MAX_NUM_SEQS = 256
VLLM_DEFAULT_BLOCK_SIZE = 16
VLLM_DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
# The OpenAI API server picks 8192 batched tokens on GPUs with >= 70 GiB, else 2048.
VLLM_DEFAULT_BATCHED_TOKENS_LARGE_GPU = 8192
VLLM_DEFAULT_BATCHED_TOKENS_SMALL_GPU = 2048
VLLM_LARGE_GPU_THRESHOLD_GIB = 70.0


# Largest integer any config field accepts: float64 holds it exactly and numpy's int64
# arithmetic (length sampling, sums over requests) cannot overflow with it.
MAX_CONFIG_INT = 2**53


def _numeric_not_bool(annotation: Any) -> bool:
    """Whether a field of this type takes numbers but not booleans (int, float, optionals)."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (annotation,)
    return any(a in (int, float) for a in args) and bool not in args


# The simulated clock is float64 seconds. Below 2**32 s (136 years) consecutive floats are at
# most 2**-20 s (0.95 us) apart (IEEE 754 binary64: 52 fraction bits), so every time and
# latency keeps microsecond resolution; arrival schedules and horizons beyond it are refused.
MAX_CLOCK_S = 2.0**32


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _no_bools_as_numbers(cls, data: Any) -> Any:
        # pydantic's lax mode reads true as 1: a `num_requests: true` would run one request
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                value = data.get(name)
                if isinstance(value, bool) and _numeric_not_bool(field.annotation):
                    raise ValueError(f"{name}: expected a number, got {str(value).lower()}")
        return data

    @model_validator(mode="after")
    def _finite(self) -> "_Strict":
        for name, value in self:
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_CONFIG_INT:
                raise ValueError(f"{name} must be at most 2**53 in magnitude, got {value}")
        return self


class ServerConfig(_Strict):
    """Server limits, named and defaulted as vLLM's engine flags."""

    max_num_seqs: int = Field(VLLM_DEFAULT_MAX_NUM_SEQS, gt=0, description="--max-num-seqs: seats (requests per step)")
    max_num_batched_tokens: int | None = Field(
        None, gt=0, description="--max-num-batched-tokens: token budget per step; None = vLLM's pick (8192 on >=70 GiB GPUs, else 2048)"
    )
    long_prefill_token_threshold: int = Field(0, ge=0, description="--long-prefill-token-threshold: cap on one request's prefill chunk per step; 0 = no cap")
    enable_chunked_prefill: bool = Field(True, description="--enable-chunked-prefill (vLLM V1 default on)")
    enable_prefix_caching: bool = Field(
        True, description="--enable-prefix-caching: reuse KV blocks of identical prefixes (vLLM V1 default on; --no-enable-prefix-caching)"
    )
    block_size: int = Field(VLLM_DEFAULT_BLOCK_SIZE, gt=0, description="--block-size: tokens per KV block")
    num_gpu_blocks: int | None = Field(None, gt=0, le=50_000_000, description="--num-gpu-blocks-override: KV blocks; None = derive from GPU memory")
    gpu_memory_utilization: float = Field(
        VLLM_DEFAULT_GPU_MEMORY_UTILIZATION, gt=0, le=1, description="--gpu-memory-utilization: share of GPU memory vLLM may use"
    )
    max_model_len: int | None = Field(None, gt=0, description="--max-model-len: longest prompt+output; None = the model's")
    api_server_count: int = Field(
        1, gt=0, le=1024, description="--api-server-count: API-server processes; each tokenizes one request at a time (the calibration's per-prompt-token time)"
    )
    allow_long_max_model_len: bool = Field(
        False, description="allow max_model_len beyond the model's max_position_embeddings (vLLM's VLLM_ALLOW_LONG_MAX_MODEL_LEN=1)"
    )
    quantization: str | None = Field(
        None,
        description="--quantization: None = the checkpoint's own (its config.json quantization_config); fp8 quantises a BF16 checkpoint online (W8A8 FP8); awq, gptq, compressed-tensors, fbgemm_fp8, modelopt must match the checkpoint",
    )
    kv_cache_dtype: Literal["auto", "bfloat16", "float16", "fp8", "fp8_e4m3", "fp8_e5m2"] = Field(
        "auto", description="--kv-cache-dtype: auto = the model's dtype; fp8* = one byte per element (twice the KV capacity, half the attention reads)"
    )
    async_scheduling: bool = Field(
        False,
        description="--async-scheduling: the scheduler plans step k+1 when step k launches, so a request that reaches the engine during step k joins step k+2 at the earliest (vLLM's default since late 2025; off in 0.11)",
    )
    kv_offloading_size_gib: float | None = Field(
        None,
        gt=0,
        description="--kv-offloading-size: CPU tier for KV blocks the GPU prefix cache evicts, GiB summed over the TP ranks (vLLM's native OffloadingConnector); needs enable_prefix_caching; None = off",
    )
    kv_offloading_bw_gbps: float | None = Field(
        None,
        gt=0,
        description="host<->GPU link per GPU and direction for loads from the CPU tier, 1e9 B/s; None = PCIe x16: 64 (Gen5) on Hopper/Blackwell, else 32 (Gen4)",
    )


class SchedulerConfig(_Strict):
    policy: str = Field("vllm-v1", description="scheduler policy name (see `servesim list`)")
    chunk_size_tokens: int = Field(512, gt=0, description="fixed chunk for the 'sarathi' policy")
    starvation_age_s: float = Field(10.0, gt=0, description="priority/sjf: a request waiting longer than this goes first")


class CostConfig(_Strict):
    """Step-cost model selection and calibration knobs."""

    model: str = Field("roofline", description="cost model name: roofline | fixed | linear")
    formula: str | None = Field(None, description="mixed-batch formula (roofline only); None = the calibration's (cost.calibration), else weighted-average")
    gemm_m: Literal["tokens", "requests"] = Field("tokens", description="GEMM M dimension: token count (physical) or request count (reproduces the seed study)")
    mfu_lookup: Literal["nearest", "interpolate"] | None = Field(
        None,
        description="MFU table lookup: nearest (the seed's floor row) or interpolate (linear in M / seq / bilinear); None = the calibration's, else nearest",
    )
    bench_data_dir: str | None = Field(None, description="microbenchmark directory (bench_data/); None = built-in MFU model")
    bw_efficiency: float | None = Field(None, gt=0, le=1, description="HBM bandwidth efficiency; None = GPU default")
    per_layer_overhead_us: float | None = Field(None, ge=0, description="CPU overhead per layer, µs (divided by TP); None = GPU default")
    # calibration knobs (docs/calibration.md); None = the calibration's value, else the seed's
    per_step_overhead_us: float | None = Field(
        None, ge=0, le=1e5, description="CPU time per step, µs, not divided by TP (scheduler, sampling, launch); None = 0"
    )
    prefill_compute_scale: float | None = Field(
        None, gt=0, le=10, description="multiplier on prefill compute time (GEMM + attention; 1/MFU correction); None = 1"
    )
    decode_compute_scale: float | None = Field(
        None, gt=0, le=10, description="multiplier on decode compute time (GEMM + attention; 1/MFU correction); None = 1"
    )
    attention_scale: float | None = Field(None, gt=0, le=10, description="extra multiplier on the attention cores of both phases; None = 1")
    mixed_penalty: float | None = Field(None, ge=0, le=5, description="a mixed step's combined GPU time is multiplied by 1 + penalty; None = 0")
    frontend_latency_ms: float | None = Field(
        None,
        ge=0,
        le=10_000,
        description="API-server latency before the engine sees a request (HTTP, tokenization, hand-off), ms; counts in TTFT and E2E, not TPOT; None = 0",
    )
    frontend_us_per_prompt_token: float | None = Field(
        None,
        ge=0,
        le=1000,
        description="API-server time per prompt token before the engine sees a request (tokenization, input processing), µs, not divided by TP; adds to frontend_latency_ms; None = 0",
    )
    allreduce_bw_gbps: float | None = Field(
        None,
        gt=0,
        le=10_000,
        description="effective all-reduce bus bandwidth per GPU, GB/s: TP>1 steps pay two all-reduces of the step's activations per layer; None = no communication term (the seed)",
    )
    allreduce_efficiency: float | None = Field(
        None,
        gt=0,
        le=1,
        description="all-reduce bus bandwidth as a share of the GPU's interconnect bandwidth per direction (NVLink or PCIe, `servesim list`); the GPU-relative form a calibration carries; allreduce_bw_gbps overrides it; None = the calibration's, else no communication term",
    )
    allreduce_latency_us: float | None = Field(
        None,
        ge=0,
        le=1000,
        description="fixed latency of each all-reduce, µs: TP>1 steps pay 2 per layer (launch, cross-GPU synchronisation), not divided by TP; None = 0",
    )
    decode_kv_read_fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        description="share of each decoding request's KV cache a decode step reads from HBM (κ): 1 = all of it (physical: attention streams the whole KV); None = the calibration's, else the seed's 0.8",
    )
    lm_head_reads: bool | None = Field(
        None,
        description="every step reads the LM head's weights (vocab x hidden, split by TP) besides the layers' (physical: the logits GEMM streams them whatever the rows); None = the calibration's, else the seed's false (layers only)",
    )
    decode_attention_context: Literal["max", "mean"] | None = Field(
        None,
        description="context at which a decode step's attention is priced: max (the seed's: every request at the batch's longest context) or mean (Σ contexts / N: the kernel reads each request's own KV); None = the calibration's, else max",
    )
    calibration: str | None = Field(
        None,
        description="fitted calibration: a shipped name (e.g. h100; `servesim calibrate --list`) or a path to its YAML; fills the knobs (and the formula and settings) left unset with those it fitted for cost.formula; None = the shipped h100 calibration for the roofline (it transfers to any GPU), 'none' = the seed roofline",
    )
    # fixed / linear test models
    fixed_step_s: float = Field(0.01, gt=0, description="fixed model: seconds per step")
    linear_base_s: float = Field(0.005, ge=0, description="linear model: seconds per step")
    linear_per_prefill_token_s: float = Field(2e-5, ge=0, description="linear model: seconds per prefill token")
    linear_per_decode_token_s: float = Field(1e-4, ge=0, description="linear model: seconds per decode token")

    @model_validator(mode="after")
    def _linear_positive(self) -> "CostConfig":
        if self.model == "linear" and self.linear_base_s <= 0:
            raise ValueError("linear_base_s must be > 0 so that every step takes time")
        return self


class LengthDist(_Strict):
    """A token-length distribution. ``normal`` is clipped to [min, max] then rounded."""

    dist: Literal["fixed", "normal", "uniform"] = Field("normal", description="fixed | normal (clipped) | uniform")
    value: int | None = Field(None, ge=1, description="fixed: the length")
    mean: float | None = Field(None, gt=0, description="normal: mean tokens")
    stdev: float = Field(0.0, ge=0, description="normal: standard deviation, tokens")
    min: int = Field(1, ge=1, description="lower clip / uniform low, tokens")
    max: int = Field(1_000_000, ge=1, description="upper clip / uniform high, tokens")

    @model_validator(mode="after")
    def _check(self) -> "LengthDist":
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        if self.dist == "fixed" and self.value is None:
            raise ValueError("dist 'fixed' needs 'value'")
        if self.dist == "normal" and self.mean is None:
            raise ValueError("dist 'normal' needs 'mean' (and usually 'stdev', 'min', 'max')")
        return self


class TraceConfig(_Strict):
    """A measured per-request CSV (columns start_offset_s, prompt_tokens, output_tokens)."""

    path: str = Field(description="CSV path")
    benchmark_index: int | None = Field(None, ge=0, description="keep only rows of this benchmark (ground-truth CSVs)")
    only_ok: bool = Field(True, description="drop rows whose ok column is 0")


class WorkloadConfig(_Strict):
    num_requests: int | None = Field(None, gt=0, le=100_000_000, description="requests to simulate; None = 100 synthetic, or every trace row")
    prompt_tokens: LengthDist = LengthDist(dist="normal", mean=512, stdev=256, min=2, max=7000)
    output_tokens: LengthDist = LengthDist(dist="normal", mean=215, stdev=100, min=2, max=7000)
    prefix_tokens: int = Field(0, ge=0, description="shared prefix prepended to every prompt (counted in prompt_tokens)")
    prefix_groups: int = Field(
        1, gt=0, description="number of distinct shared prefixes; requests pick one uniformly (with prompt_pool: each pool prompt keeps one group)"
    )
    priority_levels: int = Field(1, gt=0, description="each request draws a priority uniformly in 0..levels-1 (0 = most urgent); for the 'priority' policy")
    prompt_pool: int | None = Field(
        None,
        gt=0,
        description="distinct prompts the requests cycle through: request i sends pool prompt i mod prompt_pool, token for token (inference-perf's shared_prefix data: num_groups x num_prompts_per_group prompts, reused in order), so the prefix cache can hit whole prompts; None = every prompt unique",
    )
    prompt_pool_warm: bool = Field(
        False,
        description="the pool's prompts are in the prefix cache when the run starts (a stage that follows an earlier one on the same server); needs prompt_pool",
    )
    trace: TraceConfig | None = None

    @model_validator(mode="after")
    def _check_pool(self) -> "WorkloadConfig":
        if self.prompt_pool_warm and self.prompt_pool is None:
            raise ValueError("prompt_pool_warm needs prompt_pool (the number of distinct prompts)")
        return self


# arrival strategies that offer a request rate (rate_rps); the others are closed loops or bursts
OPEN_LOOP_STRATEGIES = ("constant", "poisson", "open-loop-at-measured-rate")

ArrivalStrategy = Literal["synchronous", "constant", "poisson", "throughput", "concurrent", "replay", "open-loop-at-measured-rate"]


class ArrivalConfig(_Strict):
    strategy: ArrivalStrategy = Field("poisson", description="synchronous | constant | poisson | throughput | concurrent | replay | open-loop-at-measured-rate")
    rate_rps: float | None = Field(None, gt=0, description="requests per second (constant, poisson, open-loop-at-measured-rate)")
    concurrency: int | None = Field(None, gt=0, description="users (concurrent) or in-flight cap (throughput)")
    request_timeout_s: float | None = Field(
        None,
        gt=0,
        description="client timeout per request, s from its send (inference-perf load.request_timeout): a request not finished by then fails as timed_out and the server aborts it; None = wait forever",
    )

    @model_validator(mode="after")
    def _check(self) -> "ArrivalConfig":
        if self.strategy in OPEN_LOOP_STRATEGIES and self.rate_rps is None:
            raise ValueError(f"strategy {self.strategy!r} needs rate_rps (requests per second, > 0)")
        if self.strategy == "concurrent" and self.concurrency is None:
            raise ValueError("strategy 'concurrent' needs concurrency (number of closed-loop users)")
        return self


class SweepConfig(_Strict):
    """A guidellm-style sweep (used by ``sweep``; ignored by ``run``).

    Without ``rates_rps``: a synchronous point, a throughput point, then ``num_points - 2``
    rates ``linspace(sync_rps, throughput_rps, num_points - 1)[1:]`` (guidellm's rule, with
    ``num_points`` = guidellm's ``--rate`` for ``sweep``). With ``rates_rps``: those rates only.
    """

    num_points: int = Field(10, ge=3, description="benchmarks in the sweep, incl. synchronous and throughput")
    rates_rps: list[float] | None = Field(None, description="explicit request rates instead of guidellm's rule")
    rate_strategy: Literal["constant", "poisson"] = Field("constant", description="arrival process of the rate points")
    concurrencies: list[int] | None = Field(
        None, description="a concurrency sweep instead (guidellm concurrent with several rates): one closed-loop point per number of users"
    )
    duration_s: float | None = Field(None, gt=0, description="each rate point sends rate·duration requests (else workload.num_requests)")
    overload_factor: float | None = Field(
        1.25,
        gt=1,
        description="guidellm rule only: one more rate at this multiple of the throughput point's rate, to see past saturation; None = guidellm's points only",
    )

    @field_validator("concurrencies")
    @classmethod
    def _users(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if not v:
                raise ValueError("must not be empty")
            if any(isinstance(n, bool) or n < 1 for n in v):
                raise ValueError(f"every concurrency must be an integer >= 1, got {v}")
            if len(set(v)) != len(v):
                raise ValueError(f"concurrencies repeat a value: {v}")
        return v

    @field_validator("rates_rps")
    @classmethod
    def _rates(cls, v: list[float] | None) -> list[float] | None:
        if v is not None:
            if not v:
                raise ValueError("must not be empty")
            for r in v:
                if not (math.isfinite(r) and r > 0):
                    raise ValueError(f"every rate must be a finite number > 0, got {r}")
        return v


class SloConfig(_Strict):
    """Service-level objectives for ``capacity`` and goodput; None = not constrained."""

    ttft_p99_ms: float | None = Field(None, gt=0, description="bound on p99 TTFT, ms")
    tpot_p99_ms: float | None = Field(None, gt=0, description="bound on p99 TPOT, ms")
    e2e_p99_ms: float | None = Field(None, gt=0, description="bound on p99 E2E latency, ms")
    ttft_ms: float | None = Field(None, gt=0, description="per-request TTFT bound for goodput")
    tpot_ms: float | None = Field(None, gt=0, description="per-request TPOT bound for goodput")


class InstanceGroupConfig(_Strict):
    """A group of identical replicas (one deployment shape) in a fleet.

    ``gpu``, ``tensor_parallel_size``, ``server`` and ``cost`` override the run's top-level
    fields for this group's replicas (``server``/``cost``: any of those sections' keys, merged
    over the top-level section). The model is the fleet's (a router serves one model).
    """

    name: str | None = Field(None, description="label in tables and the replica column; default g0, g1, …")
    replicas: int = Field(1, gt=0, le=4096, description="identical replicas in the group (vLLM --data-parallel-size for one group)")
    role: Literal["mixed", "prefill", "decode"] = Field(
        "mixed", description="mixed: serves whole requests; prefill / decode: one side of prefill/decode disaggregation"
    )
    gpu: str | None = Field(None, description="GPU catalogue name; None = the run's gpu")
    tensor_parallel_size: int | None = Field(None, gt=0, description="GPUs per replica; None = the run's tensor_parallel_size")
    server: dict[str, Any] = Field(default_factory=dict, description="server fields for this group, over the run's server section")
    cost: dict[str, Any] = Field(default_factory=dict, description="cost fields for this group (e.g. its calibration), over the run's cost section")


class RouterConfig(_Strict):
    """How the fleet's router picks a replica (see docs/cluster.md)."""

    policy: str = Field("round-robin", description="router name (see `servesim list`)")
    refresh_interval_ms: float = Field(
        0.0,
        ge=0,
        description="the router sees replica load as snapshots refreshed this often, ms, 0 or >= 1 (vLLM DP coordinator 100 ms, llm-d 50 ms); 0 = live state (oracle)",
    )
    count_own_sends: bool = Field(
        True, description="between refreshes, add each request the router sends to that replica's waiting count (as vLLM's DP client does)"
    )
    latency_ms: float = Field(0.0, ge=0, description="routing delay per request, ms (the proxy / gateway hop)")
    weights: dict[str, float] | None = Field(
        None,
        description="weighted router: scorer → weight, over llm-d's default profile (prefix-cache 2, queue 1, kv 1); 0 drops a scorer; None = that profile",
    )
    prefix_index_blocks: int | None = Field(None, gt=0, description="router-side prefix index per replica, KV blocks (LRU); None = the replica's KV cache size")
    # SGLang router's cache-aware defaults (sgl-router CacheAwareConfig: cache_threshold 0.5,
    # balance_abs_threshold 32, balance_rel_threshold 1.0001)
    cache_threshold: float = Field(0.5, ge=0, le=1, description="prefix-affinity: route to the best prefix match only above this share of the prompt's blocks")
    balance_abs_threshold: int = Field(32, ge=0, description="prefix-affinity: balance load first when outstanding requests differ by more than this")
    balance_rel_threshold: float = Field(1.0001, ge=1, description="… and the most loaded has more than this times the least loaded's")

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None:
            for name, w in v.items():
                if isinstance(w, bool) or not isinstance(w, (int, float)) or not (math.isfinite(w) and w >= 0):
                    raise ValueError(f"weight of {name!r} must be a finite number >= 0, got {w!r}")
        return v

    @model_validator(mode="after")
    def _meaningful(self) -> "RouterConfig":
        # compared with the defaults, not with the keys given: a dumped and re-read config
        # names every key
        defaults = type(self).model_fields
        if 0 < self.refresh_interval_ms < 1:
            raise ValueError(f"refresh_interval_ms: {self.refresh_interval_ms:g} ms is below 1 ms (real routers refresh every 50-100 ms); use 0 for live state")
        if not self.count_own_sends and self.refresh_interval_ms == 0:
            raise ValueError("count_own_sends: only matters with snapshots (refresh_interval_ms > 0); the live state already counts every send")
        if self.weights is not None and self.policy != "weighted":
            raise ValueError(f"weights: only the weighted router uses scorer weights, not {self.policy!r}; drop weights or use policy weighted")
        if self.prefix_index_blocks is not None and self.policy not in ("prefix-affinity", "weighted"):
            raise ValueError(f"prefix_index_blocks: only prefix-affinity and weighted keep a prefix index, not {self.policy!r}")
        for name in ("cache_threshold", "balance_abs_threshold", "balance_rel_threshold"):
            if getattr(self, name) != defaults[name].default and self.policy != "prefix-affinity":
                raise ValueError(f"{name}: only the prefix-affinity router uses it, not {self.policy!r}")
        return self


class AdmissionConfig(_Strict):
    """Admission control in front of the router; a refused request is recorded ``rejected``."""

    policy: str = Field("unlimited", description="unlimited | max-in-flight | token-bucket")
    max_in_flight: int | None = Field(None, gt=0, description="max-in-flight: requests admitted and not yet left, fleet-wide")
    rate_rps: float | None = Field(None, gt=0, description="token-bucket: sustained admissions per second")
    burst: int | None = Field(None, gt=0, description="token-bucket: bucket size, requests (default 1)")


class KvTransferConfig(_Strict):
    """The link a request's KV cache crosses from a prefill to a decode replica."""

    link: str = Field("rdma", description="preset: rdma | nvlink | tcp (see `servesim list`)")
    bandwidth_gb_per_s: float | None = Field(None, gt=0, description="GB/s (1e9 bytes) per transfer; None = the preset's")
    latency_ms: float | None = Field(None, ge=0, description="fixed time per transfer, ms; None = the preset's")


class ClusterConfig(_Strict):
    """A fleet: instance groups behind one router (with admission, and a KV link for P/D)."""

    groups: list[InstanceGroupConfig] = Field(min_length=1, max_length=64, description="the instance groups")
    router: RouterConfig = RouterConfig()
    admission: AdmissionConfig = AdmissionConfig()
    kv_transfer: KvTransferConfig = KvTransferConfig()

    @model_validator(mode="after")
    def _roles(self) -> "ClusterConfig":
        roles = {g.role for g in self.groups}
        if roles & {"prefill", "decode"} and roles != {"prefill", "decode"}:
            raise ValueError(
                f"groups: prefill/decode disaggregation needs prefill and decode groups only, got roles {sorted(roles)}; "
                "give every group role prefill or decode, or every group role mixed"
            )
        if self.kv_transfer != KvTransferConfig() and not roles & {"prefill", "decode"}:
            raise ValueError(
                "kv_transfer: only prefill/decode disaggregation moves KV between replicas; give groups roles prefill and decode, or drop kv_transfer"
            )
        names = [g.name for g in self.groups if g.name is not None]
        if len(set(names)) != len(names):
            raise ValueError(f"groups: names must be unique, got {names}")
        if sum(g.replicas for g in self.groups) > 4096:
            raise ValueError("groups: at most 4096 replicas in all")
        return self


class RunConfig(_Strict):
    """Everything one simulation needs."""

    seed: int = Field(42, ge=0, description="run seed; every random stream derives from it")
    model: str = Field("llama-2-7b", description="catalogue name or path to a Hugging Face config.json (or its folder)")
    gpu: str = Field("H100", description="GPU catalogue name")
    tensor_parallel_size: int = Field(1, gt=0, description="--tensor-parallel-size: GPUs per replica; must divide the attention heads")
    server: ServerConfig = ServerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    cost: CostConfig = CostConfig()
    workload: WorkloadConfig = WorkloadConfig()
    arrival: ArrivalConfig = ArrivalConfig(strategy="poisson", rate_rps=1.0)
    horizon_s: float | None = Field(
        None, gt=0, le=MAX_CLOCK_S, description="stop the clock here; None = run until every request left (at most 2**32 s: the clock's microsecond range)"
    )
    record_itls: bool = Field(True, description="keep every inter-token gap (needed for ITL percentiles)")
    stop_when_slo_missed: bool = Field(
        False,
        description="end the run as soon as it is certain to miss slo.ttft_p99_ms (more requests got their first token later than "
        "it than p99 allows): a search's clearly overloaded run stops early, its remaining requests in_flight / not_sent",
    )
    sweep: SweepConfig = SweepConfig()
    slo: SloConfig = SloConfig()
    cluster: ClusterConfig | None = Field(None, description="a fleet of replicas behind a router; None = one server")

    @model_validator(mode="after")
    def _group_overrides(self) -> "RunConfig":
        """Each group's server/cost overrides must form a valid section over the run's."""
        if self.cluster is not None:
            for i, g in enumerate(self.cluster.groups):
                for section, model, base in (("server", ServerConfig, self.server), ("cost", CostConfig, self.cost)):
                    override = getattr(g, section)
                    try:
                        model.model_validate(merge(base.model_dump(mode="json"), override))
                    except ValidationError as err:
                        first = err.errors()[0]
                        loc = ".".join(_loc_part(p) for p in first["loc"])
                        msg = "unknown key; check its spelling" if first["type"] == "extra_forbidden" else first["msg"]
                        raise ValueError(f"cluster.groups.{i}.{section}.{loc}: {msg}") from None
        return self

    @field_validator("model", "gpu")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v


def _loc_part(part: Any) -> str:
    """One element of an error location; keys that would not read as a name (empty, blank,
    with dots, colons or control characters) are quoted."""
    text = str(part)
    if isinstance(part, str) and (not text or not text.isprintable() or any(c.isspace() or c in ".:" for c in text)):
        return repr(text)
    return text


def _format_validation_error(err: ValidationError, source: str | None) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(_loc_part(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "value_error" and msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
            if not e["loc"] and ": " in msg:  # a whole-config check that names its field itself
                lines.append(msg)
                continue
            head, sep, rest = msg.partition(": ")
            if sep and head.isidentifier():  # a section's check naming one of its fields
                lines.append(f"{loc}.{head}: {rest}")
                continue
        if e["type"] == "extra_forbidden":
            parent = ".".join(_loc_part(p) for p in e["loc"][:-1])
            msg = f"unknown key; check its spelling{' under ' + parent if parent else ''}"
        lines.append(f"{loc}: {msg}")
    head = f"invalid config{' in ' + source if source else ''}"
    return head + ":\n  " + "\n  ".join(lines)


def parse_run_config(data: dict[str, Any] | None, source: str | None = None) -> RunConfig:
    """Validate ``data`` into a :class:`RunConfig`; ConfigError naming each bad field otherwise."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config{' in ' + source if source else ''}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base`` (mappings merge, other values replace)."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def with_overrides(cfg: RunConfig, override: dict[str, Any]) -> RunConfig:
    """A copy of ``cfg`` with ``override`` deep-merged and re-validated."""
    return parse_run_config(merge(cfg.model_dump(mode="json"), override))
