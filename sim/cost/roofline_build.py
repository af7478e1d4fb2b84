"""Building a :class:`~sim.cost.roofline.RooflineCostModel` from names (model, GPU, TP, the MFU
provider) and registering it as the ``roofline`` cost model; plus :func:`price_reference`, the
term-by-term price that the fast paths of :meth:`RooflineCostModel.price` are tested against.
"""

from __future__ import annotations

from sim.catalogue.hardware import GpuSpec, resolve_gpu
from sim.catalogue.models import ModelSpec, resolve_model, served_model
from sim.cost.base import COST_MODELS, DecodeAttentionContext, GemmM
from sim.cost.combine import PhaseTerms, combine
from sim.cost.mfu import make_mfu_provider
from sim.cost.roofline import RooflineCostModel
from sim.entities import Batch, StepCost


def price_reference(model: RooflineCostModel, batch: Batch) -> StepCost:
    """The straightforward pricing of ``batch``: per-item decode terms (:meth:`decode_terms`
    over every context, Σ D(p, 1) item by item), no aggregates, no fast path. Equal to
    :meth:`RooflineCostModel.price` up to floating-point rounding; tests compare the two."""
    dec = [it.context_tokens for it in batch.items if it.is_decode]
    pre = [(it.context_tokens, it.new_tokens) for it in batch.items if not it.is_decode and it.new_tokens > 0]
    cd = md = gd = cp = mp = gp = 0.0
    if dec:
        cd, md, gd = model.decode_terms(dec)
    if pre:
        cp, mp, gp = model.prefill_terms(pre)
    np_tokens = sum(new for _, new in pre)
    if model.gemm_m == "requests":
        pre_rows, pre_gemm_sub = len(pre), model.gemm_s(len(pre)) * model.prefill_compute_scale
    else:
        pre_rows, pre_gemm_sub = np_tokens, gp
    dyn_all = sum(model.dynamic_bytes(p, 1) for p in dec) + sum(model.dynamic_bytes(c, n) for c, n in pre)
    terms = PhaseTerms(
        prefill_compute_s=cp,
        prefill_memory_s=mp,
        decode_compute_s=cd,
        decode_memory_s=md,
        num_prefill_tokens=np_tokens,
        num_decode_reqs=len(dec),
        prefill_gemm_s=pre_gemm_sub,
        decode_gemm_s=gd,
        fused_gemm_s=model.gemm_s(pre_rows + len(dec)) * (model.prefill_compute_scale if pre_rows else model.decode_compute_scale),
        mixed_memory_s=model._memory_s(dyn_all, np_tokens + len(dec)),
    )
    oh = model._overhead_s
    gpu_s = combine(model.formula, terms)
    if model.mixed_penalty and pre and dec:
        gpu_s *= 1.0 + model.mixed_penalty
    if model.allreduce_bw_gbps is not None and model.tp > 1:
        tokens = np_tokens + len(dec)
        layer_bytes = tokens * model.model.hidden_size * model.model.act_bytes
        gpu_s += 2 * model.model.num_layers * layer_bytes * 2 * (model.tp - 1) / model.tp / (model.allreduce_bw_gbps * 1e9)
    return StepCost(
        total_s=gpu_s + oh, compute_s=terms.mixed_compute_s, memory_s=terms.mixed_memory_s, overhead_s=oh, prefill_s=terms.prefill_s, decode_s=terms.decode_s
    )


def build_roofline(
    model: str | ModelSpec,
    gpu: str | GpuSpec = "H100",
    tp: int = 1,
    formula: str = "weighted-average",
    gemm_m: GemmM = "tokens",
    mfu_lookup: str = "nearest",
    bench_data_dir: str | None = None,
    bw_efficiency: float | None = None,
    per_layer_overhead_us: float | None = None,
    decode_attention_context: DecodeAttentionContext = "max",
    decode_kv_read_fraction: float | None = None,
    lm_head_reads: bool = False,
    **knobs: float | None,
) -> RooflineCostModel:
    """Convenience constructor from names (used by the factory, scripts and tests); ``knobs``
    are the calibration keywords of :class:`RooflineCostModel` (per_step_overhead_us, …)."""
    spec = resolve_model(model) if isinstance(model, str) else model
    hw = resolve_gpu(gpu) if isinstance(gpu, str) else gpu
    mfu = make_mfu_provider(
        spec.num_heads,
        spec.num_kv_heads,
        spec.head_dim,
        tp,
        hw.name,
        bench_data_dir,
        mfu_lookup,  # type: ignore[arg-type]
        gemm_peak_flops=hw.peak_flops_for(spec.gemm_precision),
        attn_peak_flops=hw.peak_flops,
        bw_bytes_s=hw.peak_bw_bytes_s,
        weight_bytes=spec.bytes_per_param,
        kv_bytes=spec.kv_bytes_per_element,
    )
    return RooflineCostModel(
        spec,
        hw,
        tp,
        formula,
        gemm_m,
        mfu,
        bw_efficiency,
        per_layer_overhead_us,
        decode_attention_context=decode_attention_context,
        decode_kv_read_fraction=decode_kv_read_fraction,
        lm_head_reads=lm_head_reads,
        **knobs,
    )


@COST_MODELS.register("roofline", "MFU-table roofline (seed v2-pre structure) with a mixed-batch formula (cost.formula).")
def _roofline_factory(cfg, settings) -> RooflineCostModel:
    """The roofline of ``cfg``'s model, GPU and TP, priced with the resolved ``settings``
    (:class:`~sim.cost.calibration.CostSettings`: the config's own values, else its
    calibration's, else the seed's)."""
    k = dict(settings.knobs)
    k.pop("frontend_latency_ms", None)  # not step costs: the simulation applies them to arrivals
    k.pop("frontend_us_per_prompt_token", None)
    efficiency = k.pop("allreduce_efficiency", None)
    return build_roofline(
        served_model(resolve_model(cfg.model), cfg.server.quantization, cfg.server.kv_cache_dtype),
        cfg.gpu,
        cfg.tensor_parallel_size,
        settings.formula,
        cfg.cost.gemm_m,
        settings.mfu_lookup,
        cfg.cost.bench_data_dir,
        k.pop("bw_efficiency"),
        k.pop("per_layer_overhead_us"),
        settings.decode_attention_context,
        settings.decode_kv_read_fraction,
        settings.lm_head_reads,
        allreduce_efficiency=efficiency,
        **k,
    )
