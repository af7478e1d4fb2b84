"""Roofline step-cost model (the seed study's "v2-pre" structure, blis-reference.md §1).

Prices one engine step from the model architecture, the GPU's peaks and an MFU provider.
All quantities are per GPU of a tensor-parallel group of size ``tp`` (τ = 1/tp).

Notation: L layers, d hidden size, H/Hk query/KV heads, dh head dim, dff MLP width, b bytes per
parameter, P peak FLOP/s, BW = peak bandwidth·η (B/s).

* **GEMMs**, per GPU at TP-split shapes (v2-pre ``computeTransformerGEMMTimes``):
  ``G(m) = L·Σ 2·m·k·n / (P·mfu_gemm(m,k,n))`` over Q (d → H/tp·dh), K and V
  (d → max(1, Hk/tp)·dh), O (H/tp·dh → d), gate and up (d → dff/tp), down (dff/tp → d).
  No τ (shapes are already split), no weight floor (v2-pre). P is the peak of the GEMMs' input
  precision (``ModelSpec.gemm_precision``: FP8/INT8 W8A8 checkpoints at the GPU's FP8/INT8
  peak where it has those tensor cores; weight-only schemes and GPUs without them at BF16).
* **MoE** (docs/hardware.md): attention projections, router (d → E) and shared expert at
  M = m; the routed experts' gate/up/down carry the FLOPs of m·k token-expert rows at the MFU
  of ``m·k / E_t(m)`` rows (the rows one expert gets), with ``E_t(m) = E·(1 − (1 − k/E)^m)``
  the experts touched. Weights read per step W(T) are the non-expert weights plus ``E_t(T)``
  experts per MoE layer (all of them for large T).
* **Attention core** ``A(B, ctx) = 4·H·B·ctx·dh`` FLOPs per layer (QKᵀ and AV; the tables'
  MFU excludes softmax), divided across GPUs by τ.
* **Dynamic bytes** per request with context s and t new tokens (§1.1):
  ``D(s,t) = 2·L·Hk·dh·b_kv·(t + κ·s) + L·d·b_act·t·a`` (b_kv: the KV cache's bytes per
  element, 1 with ``kv_cache_dtype: fp8``; b_act: the model's dtype, whatever the weights') with κ = 0.80, a = 0.75 if t = 1, else
  κ = 0.92, a = 0.85 (the seed's calibration of cache re-use and activation traffic). The
  decode κ is ``decode_kv_read_fraction`` (default the seed's 0.80): a decode step's attention
  streams every request's whole KV from HBM (it is far larger than L2), so 1 is the physical
  value, which the shipped calibration uses.
* **Weights read per step** W: the transformer layers' (v2-pre; embeddings and LM head
  excluded). With ``lm_head_reads`` (a calibration setting; the seed's is off) W also holds the
  LM head, V·d·b: the logits GEMM streams it on every step whatever its few rows (8 % of W for
  Qwen2.5-7B's 152k vocabulary, 2 % for Llama-2-7B's 32k).
* **Decode** (N requests, contexts pᵢ; v2-pre): ``Cd = G(N) + τ·L·A(N, p*)/(P·mfu_dec(N,
  p*))``; ``Md = τ·(W + ΣD(pᵢ, 1))/BW``. p* is the longest context ``max p`` (the seed's, knob
  ``decode_attention_context='max'``) or the mean ``Σpᵢ/N`` (``'mean'``): a paged decode
  kernel reads each request's own KV, so its time follows the KV in the batch, Σpᵢ, and the
  table's latency at (N, Σpᵢ/N) prices that; ``max`` prices every request at the longest.
* **Prefill** (requests with new cⱼ, context PIⱼ): seqⱼ = PIⱼ + cⱼ goes to bucket 512·2^k ≥
  seqⱼ (cap 65536); attention per bucket is ``τ·L·Attn_b/1.8/(P·mfu_pf(bucket))``.
  ``gemm_m='tokens'`` (physical default): Attn_b = ΣA(cⱼ, seqⱼ) (the v2 attention) and one
  GEMM pass G(Σcⱼ) over all prefill tokens, as vLLM executes it (v2 instead ran one GEMM per
  bucket, paying the small-M inefficiency per bucket). ``gemm_m='requests'`` (reproduces the
  study): per bucket G(#requests) and Attn_b = A(#requests, bucket), exactly as v2-pre.
  The /1.8 is the seed's causal discount. ``Mp = τ·(W + ΣD(PIⱼ, cⱼ))/BW``.
* **Mixed steps** combine Cp, Mp, Cd, Md with a formula from :mod:`sim.cost.combine`. The
  ``additive`` inputs: fused GEMM at M = prefill rows + Nd (rows = prefill tokens under
  ``'tokens'``, prefill requests under ``'requests'``); the GEMM subtracted from Cp is
  G(#prefill requests) under ``'requests'`` (as v2-pre) and the actual per-bucket GEMM sum
  under ``'tokens'``; mixed memory τ·(W + all D)/BW.
* **Tensor-parallel communication** (knob ``allreduce_efficiency`` × the GPU's interconnect
  bandwidth per direction — NVLink or PCIe — or an absolute ``allreduce_bw_gbps``; off in the
  seed): with tp > 1 every layer all-reduces the attention and the MLP outputs, T·d·b bytes
  each for T tokens in the step (prefill tokens + decodes); a ring all-reduce moves
  2(tp − 1)/tp of that per GPU, so ``Cc = 2·L·T·d·b·2(tp−1)/tp / BWar``, added to the
  combined GPU time (vLLM does not overlap it with compute). Each of those 2·L all-reduces
  also pays a fixed latency ``allreduce_latency_us`` (knob, 0 by default; launch and
  cross-GPU synchronisation, which neither TP nor the message size shrinks).
* **Overhead** ``per_layer_overhead_us·L/tp + per_step_overhead_us (+ 2·L·allreduce_latency_us
  if tp > 1)`` µs per step, added after combination.
* **Calibration knobs** (``docs/calibration.md``; each defaults to the seed's behaviour, so an
  uncalibrated model prices exactly as before): ``prefill_compute_scale`` multiplies every
  prefill-side compute term (GEMM and attention; the fused GEMM of ``additive``),
  ``decode_compute_scale`` the decode compute terms, ``attention_scale`` the attention cores of
  both phases, ``mixed_penalty`` multiplies a mixed step's combined GPU time by ``1 + penalty``,
  ``per_step_overhead_us`` is a CPU time per step not divided by TP.

Differences from the seed, on purpose: times are float seconds (no rounding to integer µs);
an empty batch costs only the overhead (the engine never prices one).
"""

from __future__ import annotations

from collections import defaultdict

from sim.catalogue.hardware import GpuSpec
from sim.catalogue.models import ModelSpec
from sim.cost.base import DECODE_ATTENTION_CONTEXTS, DecodeAttentionContext, GemmM
from sim.cost.combine import FORMULAS, PhaseTerms, combine
from sim.cost.mfu import MfuProvider
from sim.entities import Batch, StepCost
from sim.errors import ConfigError

# Seed calibration constants (inference-sim v2-pre roofline_step.go, blis-reference.md §1.1, §1.3).
KV_REUSE_DECODE = 0.80  # κ for t = 1: fraction of the KV cache re-read per decode step


KV_REUSE_PREFILL = 0.92  # κ for t > 1


ACT_DECODE = 0.75  # a for t = 1: activation-traffic discount


ACT_PREFILL = 0.85  # a for t > 1


CAUSAL_DISCOUNT = 1.8  # prefill attention FLOPs / 1.8 ≈ the causal mask's saving


PREFILL_BUCKET_MIN_TOKENS = 512  # smallest prefill bucket


PREFILL_BUCKET_MAX_TOKENS = 65536  # largest prefill bucket (cap)


DECODE_MEMO_MAX_ENTRIES = 200_000  # bounds the decode-price memo (~40 MB); cleared when full


def prefill_bucket(seq_tokens: int) -> int:
    """Smallest 512·2^k ≥ ``seq_tokens``, capped at 65536 (v2-pre bucketing)."""
    bucket = PREFILL_BUCKET_MIN_TOKENS
    while bucket < seq_tokens and bucket < PREFILL_BUCKET_MAX_TOKENS:
        bucket *= 2
    return bucket


class RooflineCostModel:
    """MFU-table roofline over one TP group; see the module docstring for every term.

    Contract: :meth:`price` is pure and deterministic (its GEMM memo only caches values),
    never loops over layers, and returns ``total_s > 0`` for any non-empty batch (the weight
    bytes make Mp, Md > 0). Precondition: ``tp`` divides ``num_heads`` and KV heads split
    evenly (Hk % tp == 0) or are replicated (tp % Hk == 0), as vLLM requires.
    """

    name = "roofline"

    def __init__(
        self,
        model: ModelSpec,
        gpu: GpuSpec,
        tp: int,
        formula: str,
        gemm_m: GemmM,
        mfu: MfuProvider,
        bw_efficiency: float | None = None,
        per_layer_overhead_us: float | None = None,
        *,
        per_step_overhead_us: float | None = None,
        prefill_compute_scale: float | None = None,
        decode_compute_scale: float | None = None,
        attention_scale: float | None = None,
        mixed_penalty: float | None = None,
        allreduce_bw_gbps: float | None = None,
        allreduce_latency_us: float | None = None,
        allreduce_efficiency: float | None = None,
        decode_attention_context: DecodeAttentionContext = "max",
        decode_kv_read_fraction: float | None = None,
        lm_head_reads: bool = False,
    ) -> None:
        if tp < 1:
            raise ConfigError(f"tensor_parallel_size must be >= 1, got {tp}")
        if model.num_heads % tp:
            raise ConfigError(f"tensor_parallel_size {tp} must divide {model.name}'s num_heads ({model.num_heads})")
        if model.num_kv_heads % tp and tp % model.num_kv_heads:
            raise ConfigError(f"tensor_parallel_size {tp} must divide, or be a multiple of, {model.name}'s num_kv_heads ({model.num_kv_heads})")
        if decode_attention_context not in DECODE_ATTENTION_CONTEXTS:
            raise ConfigError(f"cost.decode_attention_context: expected {' or '.join(DECODE_ATTENTION_CONTEXTS)}, got {decode_attention_context!r}")
        if gemm_m not in ("tokens", "requests"):
            raise ConfigError(f"cost.gemm_m: expected 'tokens' or 'requests', got {gemm_m!r}")
        FORMULAS.get(formula, "cost.formula")  # validate the name now, not at the first mixed step
        eta = gpu.bw_efficiency if bw_efficiency is None else bw_efficiency
        if not 0 < eta <= 1:
            raise ConfigError(f"cost.bw_efficiency must be in (0, 1], got {eta}")
        overhead_us = gpu.per_layer_overhead_us if per_layer_overhead_us is None else per_layer_overhead_us
        if overhead_us < 0:
            raise ConfigError(f"cost.per_layer_overhead_us must be >= 0, got {overhead_us}")

        self.model, self.gpu, self.tp = model, gpu, tp
        self.formula, self.gemm_m, self.mfu = formula, gemm_m, mfu
        self.bw_efficiency = eta
        self.per_layer_overhead_us = overhead_us
        # calibration knobs; None = the seed's behaviour (×1, +0)
        step_us = 0.0 if per_step_overhead_us is None else float(per_step_overhead_us)
        knobs = {
            "prefill_compute_scale": 1.0 if prefill_compute_scale is None else float(prefill_compute_scale),
            "decode_compute_scale": 1.0 if decode_compute_scale is None else float(decode_compute_scale),
            "attention_scale": 1.0 if attention_scale is None else float(attention_scale),
        }
        for name, value in knobs.items():
            if not value > 0:
                raise ConfigError(f"cost.{name} must be > 0, got {value}")
        pen = 0.0 if mixed_penalty is None else float(mixed_penalty)
        if step_us < 0:
            raise ConfigError(f"cost.per_step_overhead_us must be >= 0, got {step_us}")
        if pen < 0:
            raise ConfigError(f"cost.mixed_penalty must be >= 0, got {pen}")
        self.per_step_overhead_us = step_us
        self.prefill_compute_scale = knobs["prefill_compute_scale"]
        self.decode_compute_scale = knobs["decode_compute_scale"]
        self.attention_scale = knobs["attention_scale"]
        self.mixed_penalty = pen
        if allreduce_bw_gbps is not None and not allreduce_bw_gbps > 0:
            raise ConfigError(f"cost.allreduce_bw_gbps must be > 0, got {allreduce_bw_gbps}")
        if allreduce_efficiency is not None and not 0 < allreduce_efficiency <= 1:
            raise ConfigError(f"cost.allreduce_efficiency must be in (0, 1], got {allreduce_efficiency}")
        # the all-reduce bus bandwidth: an absolute figure wins (allreduce_bw_gbps), else the
        # share of this GPU's own interconnect (allreduce_efficiency: what a calibration carries
        # to another GPU); neither = no communication term (the seed's)
        if allreduce_bw_gbps is None and allreduce_efficiency is not None:
            allreduce_bw_gbps = allreduce_efficiency * gpu.interconnect_bw_gbps
        self.allreduce_bw_gbps = allreduce_bw_gbps
        self.allreduce_efficiency = allreduce_efficiency
        # seconds of all-reduce per token in the step (0 without TP or without the knob);
        # the reduced tensors are activations (BF16 even when the weights are quantised)
        self._comm_s_per_token = (
            2.0 * model.num_layers * model.hidden_size * model.act_bytes * 2.0 * (tp - 1) / tp / (allreduce_bw_gbps * 1e9)
            if allreduce_bw_gbps is not None and tp > 1
            else 0.0
        )
        self._ps, self._ds, self._as = self.prefill_compute_scale, self.decode_compute_scale, self.attention_scale

        lat_us = 0.0 if allreduce_latency_us is None else float(allreduce_latency_us)
        if not lat_us >= 0:
            raise ConfigError(f"cost.allreduce_latency_us must be >= 0, got {allreduce_latency_us}")
        self.allreduce_latency_us = lat_us
        # two all-reduces per layer and step (attention and MLP outputs), each paying a fixed
        # latency that TP does not divide (launch, synchronisation); none at tp = 1
        comm_fixed_s = 2.0 * model.num_layers * lat_us * 1e-6 if tp > 1 else 0.0
        self.decode_attention_context = decode_attention_context
        kappa = KV_REUSE_DECODE if decode_kv_read_fraction is None else float(decode_kv_read_fraction)
        if not 0 < kappa <= 1:
            raise ConfigError(f"cost.decode_kv_read_fraction must be in (0, 1], got {decode_kv_read_fraction}")
        self.decode_kv_read_fraction = kappa
        self._attn_at_mean = decode_attention_context == "mean"

        self._tau = 1.0 / tp
        # attention runs in BF16 (FP8 KV is dequantised in the kernel); the linear layers'
        # GEMMs at the peak of their input precision where the GPU has those tensor cores
        self._peak_flops = gpu.peak_flops
        self._gemm_peak_flops = gpu.peak_flops_for(model.gemm_precision)
        self._bw_bytes_s = gpu.peak_bw_bytes_s * eta
        self._overhead_s = overhead_us * model.num_layers / tp * 1e-6 + step_us * 1e-6 + comm_fixed_s
        self.lm_head_reads = bool(lm_head_reads)
        # bytes every step streams from HBM besides KV and activations (the seed: layers only)
        self._weights_bytes = model.weights_bytes + (model.lm_head_bytes if self.lm_head_reads else 0.0)
        self._kv_bytes_per_token = model.kv_bytes_per_token  # 2·L·Hk·dh·b, whole model
        self._act_bytes_per_token = float(model.num_layers * model.hidden_size) * model.act_bytes
        # attention FLOPs per (query token × context token), all layers: L·4·H·dh
        self._attn_flops_per_pair = 4.0 * model.num_heads * model.head_dim * model.num_layers

        d, dh = model.hidden_size, model.head_dim
        q_pg = (model.num_heads // tp) * dh
        kv_pg = max(1, model.num_kv_heads // tp) * dh
        dff_pg = model.intermediate_size // tp
        experts = 1  # MoE layers are priced by _moe_gemm_s
        # (k, n, multiplicity) of each GEMM in one layer, per GPU
        self._gemm_shapes: tuple[tuple[int, int, int], ...] = (
            (d, q_pg, 1),  # Q
            (d, kv_pg, 2),  # K, V
            (q_pg, d, 1),  # O
            (d, dff_pg, 2 * experts),  # gate, up
            (dff_pg, d, experts),  # down
        )
        self._moe = model.is_moe
        if self._moe:
            e_pg = model.expert_width // tp
            s_pg = model.shared_expert_intermediate_size // tp
            # per MoE layer, per GPU: (k, n, multiplicity) at M = m (router replicated, shared
            # expert split by TP) and the routed experts' shapes at M = per-expert tokens
            self._moe_dense_shapes: tuple[tuple[int, int, int], ...] = ((d, model.num_experts, 1),) + (((d, s_pg, 2), (s_pg, d, 1)) if s_pg else ())
            self._moe_expert_shapes: tuple[tuple[int, int, int], ...] = ((d, e_pg, 2), (e_pg, d, 1))
            self._attn_shapes = self._gemm_shapes[:3]
            self._dense_mlp_shapes = ((d, dff_pg, 2), (dff_pg, d, 1))
            self._weights_memo: dict[int, float] = {}
        self._gemm_memo: dict[int, float] = {}
        self._decode_memo: dict[tuple[int, int, int], StepCost] = {}
        self._lone_step_memo: dict[int, float] = {}  # decode_step_fn(1): context -> seconds

    # --- building blocks ---------------------------------------------------------------------
    def gemm_s(self, m: int) -> float:
        """G(m): all layers' projection GEMMs at M = m rows, seconds per GPU (memoised)."""
        if m <= 0:
            return 0.0
        hit = self._gemm_memo.get(m)
        if hit is not None:
            return hit
        if self._moe:
            total = self._moe_gemm_s(m)
        else:
            per_layer = 0.0
            for k, n, mult in self._gemm_shapes:
                per_layer += mult * 2.0 * m * k * n / (self._gemm_peak_flops * self.mfu.gemm(m, k, n))
            total = per_layer * self.model.num_layers
        self._gemm_memo[m] = total
        return total

    def _moe_gemm_s(self, m: int) -> float:
        """G(m) of a MoE model: attention projections, router and shared expert at M = m; the
        routed experts' FLOPs are those of m·k token-expert rows, at the MFU of the rows one
        expert gets, m·k / (experts touched) — many small GEMMs, not one of M = m."""
        peak, mfu = self._gemm_peak_flops, self.mfu.gemm
        spec = self.model

        def shapes_s(rows: float, shapes, mfu_m: int) -> float:
            return sum(mult * 2.0 * rows * k * n / (peak * mfu(mfu_m, k, n)) for k, n, mult in shapes)

        attn = shapes_s(m, self._attn_shapes, m) * spec.num_layers
        dense = shapes_s(m, self._dense_mlp_shapes, m) * spec.num_dense_layers if spec.num_dense_layers else 0.0
        rows = m * spec.num_experts_per_tok
        per_expert = max(1, round(rows / spec.experts_touched(m)))
        moe = (shapes_s(m, self._moe_dense_shapes, m) + shapes_s(rows, self._moe_expert_shapes, per_expert)) * spec.num_moe_layers
        return attn + dense + moe

    def weights_read_bytes(self, tokens: int) -> float:
        """Weight bytes a step of ``tokens`` tokens streams, whole model (before /TP): every layer
        weight for a dense model; a MoE model's non-expert weights and the experts its tokens
        route to (:meth:`ModelSpec.weights_bytes_touched`); plus the LM head with
        ``lm_head_reads``."""
        if not self._moe:
            return self._weights_bytes
        hit = self._weights_memo.get(tokens)
        if hit is None:
            extra = self.model.lm_head_bytes if self.lm_head_reads else 0.0
            hit = self._weights_memo[tokens] = self.model.weights_bytes_touched(tokens) + extra
        return hit

    def dynamic_bytes(self, context_tokens: int, new_tokens: int) -> float:
        """D(s, t): KV writes + discounted KV reads + activations, whole model, bytes."""
        if new_tokens == 1:
            kappa, act = self.decode_kv_read_fraction, ACT_DECODE
        else:
            kappa, act = KV_REUSE_PREFILL, ACT_PREFILL
        return self._kv_bytes_per_token * (new_tokens + kappa * context_tokens) + self._act_bytes_per_token * new_tokens * act

    def _memory_s(self, dynamic_bytes: float, tokens: int = 0) -> float:
        """Memory time of a step (or phase) of ``tokens`` tokens: weights once + ``dynamic_bytes``
        (``tokens`` matters for MoE only: which experts are read)."""
        weights = self.weights_read_bytes(tokens) if self._moe else self._weights_bytes
        return self._tau * (weights + dynamic_bytes) / self._bw_bytes_s

    # --- phases ------------------------------------------------------------------------------
    def decode_terms(self, contexts: list[int]) -> tuple[float, float, float]:
        """(Cd, Md, G(N)) for decode requests with KV lengths ``contexts`` (v2-pre §1.4)."""
        n = len(contexts)
        gemm = self.gemm_s(n) * self._ds
        attn = self._decode_attention_s(n, sum(contexts), max(contexts))
        dyn = sum(self.dynamic_bytes(p, 1) for p in contexts)
        return gemm + attn, self._memory_s(dyn, n), gemm

    def _decode_attention_s(self, n: int, context_sum: int, context_max: int) -> float:
        """Attention-core time of a decode step of ``n`` requests, seconds (scaled): FLOPs
        4·H·dh·L per (request × context token) at the table's MFU for (n, p*), p* per
        ``decode_attention_context``. Under ``'mean'`` the FLOPs are those of Σp exactly and
        the MFU is read at the mean context rounded to whole tokens."""
        if self._attn_at_mean:
            attn_flops = self._attn_flops_per_pair * context_sum
            ctx = max(1, round(context_sum / n))
        else:
            attn_flops = self._attn_flops_per_pair * n * context_max
            ctx = context_max
        if not attn_flops:
            return 0.0
        return self._tau * attn_flops / (self._peak_flops * self.mfu.attn_decode(n, ctx)) * (self._as * self._ds)

    def decode_terms_aggregate(self, n: int, context_sum: int, context_max: int) -> tuple[float, float, float]:
        """:meth:`decode_terms` from the batch aggregates, O(1): ΣD(pᵢ, 1) is linear in Σpᵢ.

        Equal to ``decode_terms(contexts)`` for any contexts with that count, sum and max
        (a test compares both on random batches).
        """
        gemm = self.gemm_s(n) * self._ds
        attn = self._decode_attention_s(n, context_sum, context_max)
        dyn = self._kv_bytes_per_token * (n + self.decode_kv_read_fraction * context_sum) + self._act_bytes_per_token * n * ACT_DECODE
        return gemm + attn, self._memory_s(dyn, n), gemm

    def prefill_terms(self, items: list[tuple[int, int]]) -> tuple[float, float, float]:
        """(Cp, Mp, GEMM part of Cp) for prefill items ``(context, new)`` (see module docstring)."""
        buckets: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for ctx, new in items:
            buckets[prefill_bucket(ctx + new)].append((ctx, new))
        attn_total = gemm_total = 0.0
        for bucket in sorted(buckets):
            group = buckets[bucket]
            if self.gemm_m == "requests":
                gemm_total += self.gemm_s(len(group))  # one GEMM per bucket at M = #requests (v2-pre)
                pairs = float(len(group) * bucket)  # A(#reqs, bucket), v2-pre
            else:
                pairs = float(sum(new * (ctx + new) for ctx, new in group))  # ΣA(c, seq), v2
            attn_flops = self._attn_flops_per_pair * pairs / CAUSAL_DISCOUNT
            attn_total += self._tau * attn_flops / (self._peak_flops * self.mfu.attn_prefill(bucket))
        if self.gemm_m == "tokens":
            # vLLM runs one GEMM over all scheduled tokens; one call keeps the weight-streaming
            # part of G paid once, whatever the bucket split (v2 paid it per bucket).
            gemm_total = self.gemm_s(sum(new for _, new in items))
        gemm_total *= self._ps
        attn_total *= self._as * self._ps
        dyn = sum(self.dynamic_bytes(ctx, new) for ctx, new in items)
        return gemm_total + attn_total, self._memory_s(dyn, sum(new for _, new in items)), gemm_total

    # --- the step -----------------------------------------------------------------------------
    def phase_terms(self, batch: Batch) -> PhaseTerms:
        """Every roofline term of ``batch`` (no overhead), for :func:`combine` and reports."""
        n_dec = batch.num_decode_reqs
        pre = [(it.context_tokens, it.new_tokens) for it in batch.items if not it.is_decode and it.new_tokens > 0] if batch.num_prefill_reqs else []
        cd = md = gd = cp = mp = gp = 0.0
        dyn_dec = 0.0
        if n_dec:
            cd, md, gd = self.decode_terms_aggregate(n_dec, batch.decode_context_sum, batch.decode_context_max)
            dyn_dec = (
                self._kv_bytes_per_token * (n_dec + self.decode_kv_read_fraction * batch.decode_context_sum) + self._act_bytes_per_token * n_dec * ACT_DECODE
            )
        if pre:
            cp, mp, gp = self.prefill_terms(pre)
        np_tokens = sum(new for _, new in pre)
        dyn_all = dyn_dec + sum(self.dynamic_bytes(c, n) for c, n in pre)
        dec = n_dec
        if self.gemm_m == "requests":
            pre_rows = len(pre)
            pre_gemm_sub = self.gemm_s(pre_rows) * self._ps  # v2-pre subtracts G(#prefill reqs)
        else:
            pre_rows = np_tokens
            pre_gemm_sub = gp
        return PhaseTerms(
            prefill_compute_s=cp,
            prefill_memory_s=mp,
            decode_compute_s=cd,
            decode_memory_s=md,
            num_prefill_tokens=np_tokens,
            num_decode_reqs=n_dec,
            prefill_gemm_s=pre_gemm_sub,
            decode_gemm_s=gd,
            fused_gemm_s=self.gemm_s(pre_rows + n_dec) * (self._ps if pre_rows else self._ds),
            mixed_memory_s=self._memory_s(dyn_all, np_tokens + n_dec) if (dec or pre) else 0.0,
        )

    def price_decode(self, n: int, context_sum: int, context_max: int) -> StepCost:
        """Price of a decode-only step of ``n`` decodes whose contexts sum to ``context_sum``
        tokens with maximum ``context_max`` — equal to ``price`` of any such batch. The engine
        uses it to fast-forward runs of identical-shape decode steps."""
        key = (n, context_sum, context_max)
        hit = self._decode_memo.get(key)
        if hit is not None:  # small batches revisit the same shapes (a lone request: every context once per request)
            return hit
        cd, md, gd = self.decode_terms_aggregate(n, context_sum, context_max)
        td = cd if cd > md else md
        oh = self._overhead_s
        comm = self._comm_s_per_token * n
        cost = StepCost(total_s=td + comm + oh, compute_s=gd + max(0.0, cd - gd), memory_s=md, overhead_s=oh, prefill_s=0.0, decode_s=td)
        if len(self._decode_memo) >= DECODE_MEMO_MAX_ENTRIES:
            self._decode_memo.clear()
        self._decode_memo[key] = cost
        return cost

    def decode_step_fn(self, n: int):
        """``f(context_sum, context_max)``: ``price_decode(n, …).total_s`` with the terms that
        depend only on ``n`` computed once — the same operations in the same order, so the
        same float (a test compares both). Precondition for ``n == 1``: ``context_sum ==
        context_max`` (one request), which its memo relies on."""
        gemm = self.gemm_s(n) * self._ds
        attn_n = self._attn_flops_per_pair * n
        attn_pair = self._attn_flops_per_pair
        at_mean = self._attn_at_mean
        tau, peak, attn_scale = self._tau, self._peak_flops, self._as * self._ds
        mfu_decode = self.mfu.attn_decode
        kv_b = self._kv_bytes_per_token
        act_n = self._act_bytes_per_token * n * ACT_DECODE
        kappa = self.decode_kv_read_fraction
        weights = self.weights_read_bytes(n)  # _memory_s's weights
        bw = self._bw_bytes_s
        comm = self._comm_s_per_token * n
        oh = self._overhead_s

        def step_s(context_sum: int, context_max: int) -> float:
            # _decode_attention_s and decode_terms_aggregate inlined: this runs once per
            # fast-forwarded step, and must give their float exactly (a test compares)
            if at_mean:
                attn_flops = attn_pair * context_sum
                ctx = max(1, round(context_sum / n))
            else:
                attn_flops = attn_n * context_max
                ctx = context_max
            attn = tau * attn_flops / (peak * mfu_decode(n, ctx)) * attn_scale if attn_flops else 0.0
            cd = gemm + attn
            md = tau * (weights + (kv_b * (n + kappa * context_sum) + act_n)) / bw
            return (cd if cd > md else md) + comm + oh

        if n != 1:
            return step_s
        # A lone request (synchronous runs) revisits every context length once per request:
        # memoise by context (its sum and maximum are equal).
        memo = self._lone_step_memo
        if len(memo) >= DECODE_MEMO_MAX_ENTRIES:
            memo.clear()

        def lone_step_s(context_sum: int, context_max: int) -> float:
            hit = memo.get(context_max)
            if hit is None:
                hit = memo[context_max] = step_s(context_sum, context_max)
            return hit

        return lone_step_s

    def price(self, batch: Batch) -> StepCost:
        """Duration of ``batch``, seconds: combined GPU time + overhead.

        ``compute_s``/``memory_s`` are the single-pass bounds of the whole step (Cmix, Mmix:
        fused GEMM + attention; weights read once); ``prefill_s``/``decode_s`` are Tp and Td.
        """
        oh = self._overhead_s
        if batch.num_prefill_reqs == 0 and batch.num_decode_reqs:
            # Decode-only step, the common case: O(1) from the batch aggregates, and the same
            # arithmetic as the general path below (combine() of one phase is max(C, M)).
            return self.price_decode(batch.num_decode_reqs, batch.decode_context_sum, batch.decode_context_max)
        terms = self.phase_terms(batch)
        if not (terms.has_prefill or terms.has_decode):
            return StepCost(total_s=oh, overhead_s=oh)
        gpu_s = combine(self.formula, terms)
        if self.mixed_penalty and terms.has_prefill and terms.has_decode:
            gpu_s *= 1.0 + self.mixed_penalty
        gpu_s += self._comm_s_per_token * (terms.num_prefill_tokens + terms.num_decode_reqs)
        return StepCost(
            total_s=gpu_s + self._overhead_s,
            compute_s=terms.mixed_compute_s,
            memory_s=terms.mixed_memory_s,
            overhead_s=self._overhead_s,
            prefill_s=terms.prefill_s,
            decode_s=terms.decode_s,
        )
