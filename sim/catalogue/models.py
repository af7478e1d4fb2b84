"""Model architectures for the step-cost model: a catalogue and a Hugging Face config parser.

A :class:`ModelSpec` holds the few numbers a roofline needs (layers, widths, heads, bytes per
parameter, experts). :func:`resolve_model` turns a user string into one: a catalogue name
(case-insensitive, or a Hugging Face id alias such as ``meta-llama/Llama-2-7b-hf``), or a path
to a ``config.json`` (or a folder holding one). Parsing follows the seed simulator's rules
(``blis-reference.md`` §3): ``text_config`` is merged over the top level, and the documented
fallbacks apply. Reading a config file is the only I/O here, and only when a path is given.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from sim.errors import ConfigError

# Bytes per parameter by dtype name (blis-reference.md §3). int4/nf4 are 1 byte there, not the
# packed 0.5: we keep 1 so that quantised configs price as the seed study did; weights of a
# packed int4 model are therefore overestimated 2x (documented in docs/cost-model.md).
_DTYPE_BYTES: dict[str, float] = {
    "float32": 4.0,
    "float": 4.0,
    "fp32": 4.0,
    "float16": 2.0,
    "half": 2.0,
    "fp16": 2.0,
    "bfloat16": 2.0,
    "bf16": 2.0,
    "int8": 1.0,
    "uint8": 1.0,
    "int4": 1.0,
    "nf4": 1.0,
}


def dtype_bytes(dtype: str) -> float:
    """Bytes per parameter of a HF dtype string; ConfigError for an unknown dtype."""
    key = dtype.strip().lower().removeprefix("torch.")
    if key in _DTYPE_BYTES:
        return _DTYPE_BYTES[key]
    if key.startswith("fp8") or key.startswith("float8"):
        return 1.0
    raise ConfigError(f"unknown dtype {dtype!r}; expected one of float32, float16, bfloat16, int8, uint8, fp8*, int4, nf4")


GEMM_PRECISIONS = ("bf16", "fp8", "int8")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A decoder-only transformer, as the roofline sees it.

    All counts are for the whole (unsharded) model. ``num_experts == 0`` means a dense MLP;
    otherwise every layer has ``num_experts`` SwiGLU experts of width ``intermediate_size`` and
    each token uses ``num_experts_per_tok`` of them. ``head_dim`` is the config's ``head_dim``
    when given, else ``hidden_size // num_heads`` (the seed's rule).
    """

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    bytes_per_param: float
    max_position_embeddings: int = 0
    num_experts: int = 0
    num_experts_per_tok: int = 0
    source: str = ""
    # --- precision (quantization) -----------------------------------------------------------
    # bytes_per_param above is the weights' storage; activations and the KV cache keep the
    # model's dtype unless said otherwise (None = bytes_per_param, the unquantised case)
    activation_bytes: float | None = None
    kv_cache_bytes: float | None = None
    gemm_precision: str = "bf16"  # inputs of the linear layers' GEMMs: bf16 | fp8 | int8
    quantization: str = ""  # scheme name as read ("" = none)
    # --- MoE structure (0 = as a dense layer / none) -----------------------------------------
    moe_intermediate_size: int = 0  # width of one expert; 0 = intermediate_size
    shared_expert_intermediate_size: int = 0  # total width of the always-on shared expert(s)
    num_dense_layers: int = 0  # layers whose MLP is dense (intermediate_size) in a MoE model

    def __post_init__(self) -> None:
        for field in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "intermediate_size"):
            if getattr(self, field) <= 0:
                raise ConfigError(f"model {self.name!r}: {field} must be > 0, got {getattr(self, field)}")
        if not self.bytes_per_param > 0:
            raise ConfigError(f"model {self.name!r}: bytes_per_param must be > 0, got {self.bytes_per_param}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"model {self.name!r}: num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.num_experts < 0 or self.num_experts_per_tok < 0:
            raise ConfigError(f"model {self.name!r}: expert counts must be >= 0")
        if self.num_experts and not 0 < self.num_experts_per_tok <= self.num_experts:
            raise ConfigError(f"model {self.name!r}: num_experts_per_tok must be in 1..num_experts ({self.num_experts}), got {self.num_experts_per_tok}")
        for field in ("activation_bytes", "kv_cache_bytes"):
            v = getattr(self, field)
            if v is not None and not v > 0:
                raise ConfigError(f"model {self.name!r}: {field} must be > 0, got {v}")
        if self.gemm_precision not in GEMM_PRECISIONS:
            raise ConfigError(f"model {self.name!r}: gemm_precision must be one of {', '.join(GEMM_PRECISIONS)}, got {self.gemm_precision!r}")
        if self.moe_intermediate_size < 0 or self.shared_expert_intermediate_size < 0:
            raise ConfigError(f"model {self.name!r}: expert widths must be >= 0")
        if not 0 <= self.num_dense_layers <= self.num_layers:
            raise ConfigError(f"model {self.name!r}: num_dense_layers must be in 0..num_layers ({self.num_layers}), got {self.num_dense_layers}")

    # --- derived sizes ---------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def q_dim(self) -> int:
        """Width of the query projection output, H·dh."""
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of each of the K and V projection outputs, Hk·dh."""
        return self.num_kv_heads * self.head_dim

    @property
    def active_experts(self) -> int:
        """MLPs each token runs through: 1 for a dense model, ``num_experts_per_tok`` for MoE."""
        return self.num_experts_per_tok if self.is_moe else 1

    @property
    def stored_experts(self) -> int:
        """MLPs stored per layer: 1 for a dense model, ``num_experts`` for MoE."""
        return self.num_experts if self.is_moe else 1

    @property
    def act_bytes(self) -> float:
        """Bytes per activation element (the model's dtype; quantised weights keep BF16 activations
        between layers)."""
        return self.bytes_per_param if self.activation_bytes is None else self.activation_bytes

    @property
    def kv_bytes_per_element(self) -> float:
        """Bytes per KV-cache element: the activation dtype unless an FP8 KV cache is set."""
        return self.act_bytes if self.kv_cache_bytes is None else self.kv_cache_bytes

    @property
    def expert_width(self) -> int:
        """Width of one routed expert's MLP (``moe_intermediate_size``, else ``intermediate_size``)."""
        return self.moe_intermediate_size or self.intermediate_size

    @property
    def num_moe_layers(self) -> int:
        """Layers with routed experts (0 for a dense model)."""
        return self.num_layers - self.num_dense_layers if self.is_moe else 0

    def _attn_params_per_layer(self) -> int:
        # Q (d×H·dh) + O (H·dh×d) + K and V (d×Hk·dh each)
        return 2 * self.hidden_size * self.q_dim + 2 * self.hidden_size * self.kv_dim

    @property
    def expert_params(self) -> int:
        """Parameters of one routed expert (gate, up, down): 3·d·dff_e."""
        return 3 * self.hidden_size * self.expert_width

    @property
    def non_expert_params(self) -> int:
        """Layer parameters every step reads whatever the routing: attention, dense MLPs, shared
        experts and routers (all layers)."""
        d = self.hidden_size
        if not self.is_moe:
            return self.num_layers * (self._attn_params_per_layer() + 3 * d * self.intermediate_size)
        moe_layer = 3 * d * self.shared_expert_intermediate_size + d * self.num_experts  # shared expert(s) + router
        return self.num_layers * self._attn_params_per_layer() + self.num_dense_layers * 3 * d * self.intermediate_size + self.num_moe_layers * moe_layer

    @property
    def weights_bytes(self) -> float:
        """Bytes of the transformer-layer weights in memory, whole model.

        Dense: ``W = L·b·(2·d·H·dh + 2·d·Hk·dh + 3·d·dff)`` — the reference's W
        (blis-reference.md §1.1, ``L·b·(2d² + 2d·dkv + 3d·dff)`` when ``H·dh = d``), b the
        weights' storage bytes (quantised: the packed size with its scales). MoE: the
        non-expert parameters plus every stored expert of every MoE layer (a step reads only
        those it routes to: :meth:`weights_bytes_touched`). Embeddings, LM head and norms are
        excluded, as in the reference: they are <3 % of a 7B model's bytes and the LM head
        runs on sampled positions only.
        """
        if not self.is_moe:
            per_layer = self._attn_params_per_layer() + 3 * self.hidden_size * self.intermediate_size
            return float(self.num_layers * per_layer) * self.bytes_per_param
        return float(self.non_expert_params + self.num_moe_layers * self.num_experts * self.expert_params) * self.bytes_per_param

    def experts_touched(self, tokens: int) -> float:
        """Expected distinct routed experts per MoE layer that ``tokens`` tokens reach, each
        choosing ``k`` of ``E`` experts: ``E·(1 − (1 − k/E)^tokens)`` — uniform, independent
        routing (balanced routers are trained towards it). 0 tokens touch none, 1 touches
        ``k``, a large batch all ``E``."""
        if not self.is_moe or tokens <= 0:
            return 0.0
        e, k = self.num_experts, self.num_experts_per_tok
        return e * (1.0 - (1.0 - k / e) ** tokens)

    def weights_bytes_touched(self, tokens: int) -> float:
        """Layer-weight bytes a step of ``tokens`` tokens reads: everything for a dense model;
        for MoE the non-expert weights plus the experts it routes to (:meth:`experts_touched`)."""
        if not self.is_moe:
            return self.weights_bytes
        return float(self.non_expert_params + self.num_moe_layers * self.experts_touched(tokens) * self.expert_params) * self.bytes_per_param

    @property
    def lm_head_bytes(self) -> float:
        """Bytes of the LM head (vocab × hidden), whole model: the logits GEMM reads all of it on
        every step that samples, however few rows it has (tied embeddings share the storage,
        but the read is the same). Quantised checkpoints keep it in the activation dtype."""
        return float(self.vocab_size * self.hidden_size) * self.act_bytes

    @property
    def active_params_per_token(self) -> int:
        """Layer parameters one token multiplies by (MoE: active experts only); FLOPs ≈ 2× this."""
        if not self.is_moe:
            return self.num_layers * (self._attn_params_per_layer() + 3 * self.hidden_size * self.intermediate_size)
        return self.non_expert_params + self.num_moe_layers * self.num_experts_per_tok * self.expert_params

    @property
    def kv_bytes_per_token(self) -> float:
        """KV-cache bytes one token occupies in the whole model: ``2·L·Hk·dh·b_kv``.

        Divide by the tensor-parallel size yourself for a per-GPU figure.
        """
        return 2.0 * self.num_layers * self.num_kv_heads * self.head_dim * self.kv_bytes_per_element


# --- Hugging Face config.json parsing -------------------------------------------------------


# Largest size field an HF config may hold (layers, widths, vocabulary, context): far beyond
# any model, small enough that products of a few stay exact in float64.
HF_MAX_SIZE = 2**31
# vLLM's max_model_len when a config names no length (vllm/config.py, _get_and_verify_max_len)
HF_DEFAULT_MAX_LEN = 2048


# --- quantization -------------------------------------------------------------------------
# A scheme as the roofline sees it: weight storage bytes per parameter (packed, with scales),
# and the precision the GEMMs run in where the GPU has tensor cores for it.


@dataclass(frozen=True, slots=True)
class Quantization:
    """How a quantised checkpoint is stored and computed. ``weight_bytes``: bytes per weight
    parameter including per-group scales; ``gemm_precision``: bf16 for weight-only schemes
    (dequantised to BF16 in the GEMM), fp8 or int8 for W8A8 schemes; ``scheme``: a label."""

    scheme: str
    weight_bytes: float
    gemm_precision: str


SUPPORTED_QUANTIZATION = "fp8, fbgemm_fp8, compressed-tensors (FP8/INT8 W8A8, W8A16, W4A16), awq, gptq, modelopt (FP8)"
FP8_SCALE_BYTES = 0.0  # per-tensor / per-channel FP8 scales: a few bytes per row, < 0.1 % of the weights


def _weight_only_bytes(bits: int, group_size: Any, where: str) -> float:
    """Packed bytes per parameter of a ``bits``-bit weight-only scheme with one FP16 scale per
    ``group_size`` weights (AWQ/GPTQ store scales and zeros: 2 B + bits/8 per group; -1 or
    None = per channel, negligible)."""
    if isinstance(bits, bool) or bits not in (2, 3, 4, 8):
        raise ConfigError(f"{where}: weight bits must be 2, 3, 4 or 8, got {bits!r}")
    per_group = 0.0
    if isinstance(group_size, int) and not isinstance(group_size, bool) and group_size > 0:
        per_group = (2.0 + bits / 8.0) / group_size  # FP16 scale + packed zero point per group
    return bits / 8.0 + per_group


def parse_quantization(qcfg: Any, name: str) -> Quantization:
    """The :class:`Quantization` of a HF ``quantization_config`` mapping. ConfigError naming
    the scheme for anything else (never BF16 by default)."""
    where = f"model config {name!r}: quantization_config"
    if not isinstance(qcfg, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {type(qcfg).__name__}")
    method = str(qcfg.get("quant_method") or "").strip().lower()
    if method in ("fp8", "fbgemm_fp8"):
        return Quantization(method, 1.0 + FP8_SCALE_BYTES, "fp8")
    if method == "modelopt":
        algo = str(qcfg.get("quant_algo") or (qcfg.get("quantization") or {}).get("quant_algo") or "").upper()
        if algo == "FP8":
            return Quantization("modelopt-fp8", 1.0, "fp8")
        raise ConfigError(f"{where}: modelopt quant_algo {algo or '(none)'!r} is not supported (only FP8); supported schemes: {SUPPORTED_QUANTIZATION}")
    if method in ("awq", "gptq", "awq_marlin", "gptq_marlin"):
        bits = qcfg.get("bits", qcfg.get("w_bit"))
        group = qcfg.get("group_size", qcfg.get("q_group_size"))
        return Quantization(f"{method.removesuffix('_marlin')}-w{bits}a16", _weight_only_bytes(bits, group, where), "bf16")
    if method == "compressed-tensors":
        groups = qcfg.get("config_groups")
        if not isinstance(groups, Mapping) or not groups:
            raise ConfigError(f"{where}: compressed-tensors config without config_groups")
        found: set[Quantization] = set()
        for gname, g in groups.items():
            if not isinstance(g, Mapping) or not isinstance(g.get("weights"), Mapping):
                raise ConfigError(f"{where}.config_groups.{gname}: no weights section")
            w, a = g["weights"], g.get("input_activations")
            wbits, wtype = w.get("num_bits"), str(w.get("type") or "int").lower()
            if isinstance(a, Mapping) and a.get("num_bits") == 8 and wbits == 8:
                atype = str(a.get("type") or "int").lower()
                if atype != wtype:
                    raise ConfigError(f"{where}.config_groups.{gname}: weights {wtype} with activations {atype} is not supported")
                found.add(Quantization(f"compressed-tensors-w8a8-{'fp8' if wtype == 'float' else 'int8'}", 1.0, "fp8" if wtype == "float" else "int8"))
            elif a is None and wbits in (4, 8):
                scheme = f"compressed-tensors-w{wbits}a16" + ("-fp8" if wtype == "float" else "")
                found.add(Quantization(scheme, _weight_only_bytes(wbits, w.get("group_size"), where), "bf16"))
            else:
                raise ConfigError(
                    f"{where}.config_groups.{gname}: weights {wbits}-bit {wtype} with activations {a!r} is not a supported scheme; "
                    f"supported: {SUPPORTED_QUANTIZATION}"
                )
        if len(found) != 1:
            raise ConfigError(f"{where}: config groups with different schemes ({', '.join(sorted(q.scheme for q in found))}) are not supported")
        return found.pop()
    raise ConfigError(f"{where}: quant_method {method or '(missing)'!r} is not supported; supported schemes: {SUPPORTED_QUANTIZATION}")


# vLLM --quantization values servesim prices, and what each means for a checkpoint that has
# no quantization_config (only fp8 quantises a BF16 checkpoint online; the others need one)
VLLM_QUANTIZATION = ("fp8", "fbgemm_fp8", "compressed-tensors", "awq", "awq_marlin", "gptq", "gptq_marlin", "modelopt")
KV_CACHE_DTYPES = {"auto": None, "bfloat16": 2.0, "float16": 2.0, "fp8": 1.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0}


def served_model(spec: ModelSpec, quantization: str | None = None, kv_cache_dtype: str = "auto") -> ModelSpec:
    """``spec`` as a vLLM server runs it with ``--quantization`` and ``--kv-cache-dtype``.

    ``quantization`` None keeps the checkpoint's own scheme. ``fp8`` on an unquantised
    checkpoint is vLLM's online (dynamic) FP8: FP8 weights, W8A8 GEMMs. Any other value must
    match the checkpoint's ``quant_method`` (vLLM refuses a mismatch too). ``kv_cache_dtype``
    ``fp8*`` stores the KV cache in one byte per element (capacity doubles, attention reads
    halve). ConfigError naming the field otherwise.
    """
    out = spec
    if quantization is not None:
        q = quantization.strip().lower()
        if q not in VLLM_QUANTIZATION:
            raise ConfigError(f"server.quantization: {quantization!r} is not supported; choose one of {', '.join(VLLM_QUANTIZATION)} (or leave it unset)")
        if not spec.quantization:
            if q != "fp8":
                raise ConfigError(
                    f"server.quantization: {q!r} needs a checkpoint quantised that way, and {spec.name}'s config has no quantization_config; only fp8 quantises online"
                )
            out = replace(out, bytes_per_param=1.0, activation_bytes=spec.act_bytes, gemm_precision="fp8", quantization="fp8-online")
        elif not spec.quantization.startswith(q.removesuffix("_marlin")):
            raise ConfigError(
                f"server.quantization: {q!r} does not match the checkpoint's scheme {spec.quantization!r}; leave it unset to use the checkpoint's"
            )
    kv_key = str(kv_cache_dtype).strip().lower()
    if kv_key not in KV_CACHE_DTYPES:
        raise ConfigError(f"server.kv_cache_dtype: {kv_cache_dtype!r} is not supported; choose one of {', '.join(KV_CACHE_DTYPES)}")
    kv_bytes = KV_CACHE_DTYPES[kv_key]
    if kv_bytes is not None and kv_bytes != out.kv_bytes_per_element:
        out = replace(out, activation_bytes=out.act_bytes, kv_cache_bytes=kv_bytes)
    return out


def _first(cfg: Mapping[str, Any], *keys: str) -> Any:
    for k in keys:
        v = cfg.get(k)
        if v is not None:
            return v
    return None


def model_spec_from_hf(mapping: Mapping[str, Any], name: str, source: str = "") -> ModelSpec:
    """Parse a Hugging Face ``config.json`` mapping into a :class:`ModelSpec`.

        Rules (blis-reference.md §3): ``text_config`` is merged over the top level;
        ``intermediate_size`` → ``ffn_hidden_size`` → 4·d; KV heads ``num_key_value_heads`` →
        ``num_kv_heads`` → ``multi_query_group_num`` → H; dtype ``torch_dtype`` → ``dtype``
        (bytes per :func:`dtype_bytes`). MoE: ``num_local_experts`` or ``num_experts`` with
        ``num_experts_per_tok`` (the reference treats MoE as dense; we price active experts for
        compute and all experts for memory). ``max_position_embeddings`` absent: 2048, vLLM's
    fallback. Size fields must be whole numbers in range (a JSON ``true``, ``32.7`` or a negative
    vocabulary is an error, not 1, 32 or accepted); missing required fields raise ConfigError
    naming them.
    """
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"model config {name!r}: expected a JSON object, got {type(mapping).__name__}")
    cfg: dict[str, Any] = dict(mapping)
    text = mapping.get("text_config")
    if isinstance(text, Mapping):
        cfg.update({k: v for k, v in text.items() if v is not None})

    missing = [k for k in ("num_hidden_layers", "hidden_size", "num_attention_heads") if cfg.get(k) is None]
    if missing:
        raise ConfigError(f"model config {name!r}: missing required field(s) {', '.join(missing)}")

    def whole(field: str, value: Any, minimum: int = 1) -> int:
        # a JSON true is not 1 layer, 32.7 is not 32, -1 is not a vocabulary
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not (math.isfinite(value) and value == int(value))):
            raise ConfigError(f"model config {name!r}: {field} must be a whole number, got {value!r}")
        if not minimum <= value <= HF_MAX_SIZE:
            raise ConfigError(f"model config {name!r}: {field} must be between {minimum} and {HF_MAX_SIZE}, got {value!r}")
        return int(value)

    def optional(field: str, value: Any, default: int, minimum: int = 1) -> int:
        return default if value is None else whole(field, value, minimum)

    layers = whole("num_hidden_layers", cfg["num_hidden_layers"])
    d = whole("hidden_size", cfg["hidden_size"])
    heads = whole("num_attention_heads", cfg["num_attention_heads"])
    kv_heads = optional("num_key_value_heads", _first(cfg, "num_key_value_heads", "num_kv_heads", "multi_query_group_num"), heads)
    dff = optional("intermediate_size", _first(cfg, "intermediate_size", "ffn_hidden_size"), 4 * d)
    head_dim = optional("head_dim", cfg.get("head_dim"), d // heads)
    experts = optional("num_local_experts", _first(cfg, "num_local_experts", "num_experts", "n_routed_experts"), 0, minimum=0)
    experts_per_tok = optional("num_experts_per_tok", cfg.get("num_experts_per_tok"), 0, minimum=0) if experts else 0
    moe_width = shared_width = dense_layers = 0
    if experts:
        # routed-expert width: Qwen-MoE / DeepSeek moe_intermediate_size; Mixtral and Llama 4
        # use intermediate_size for the experts
        moe_width = optional("moe_intermediate_size", cfg.get("moe_intermediate_size"), 0, minimum=0)
        # shared experts: Qwen2-MoE shared_expert_intermediate_size; DeepSeek n_shared_experts ×
        # moe_intermediate_size; Llama 4 one shared expert of intermediate_size
        shared_width = optional("shared_expert_intermediate_size", cfg.get("shared_expert_intermediate_size"), 0, minimum=0)
        n_shared = optional("n_shared_experts", cfg.get("n_shared_experts"), 0, minimum=0)
        if n_shared and not shared_width:
            shared_width = n_shared * (moe_width or dff)
        step = cfg.get("interleave_moe_layer_step")
        if step is not None:  # Llama 4: every step-th layer is MoE, the others dense of intermediate_size_mlp
            step = whole("interleave_moe_layer_step", step)
            shared_width = shared_width or dff
            dense_layers = layers - layers // step
            if dense_layers:
                dff_dense = optional("intermediate_size_mlp", cfg.get("intermediate_size_mlp"), dff)
                moe_width, dff = moe_width or dff, dff_dense
        dense_layers += optional("first_k_dense_replace", cfg.get("first_k_dense_replace"), 0, minimum=0)
        only = cfg.get("mlp_only_layers")
        if isinstance(only, list):  # Qwen-MoE: these layers have a dense MLP
            dense_layers += len(only)
        sparse_step = cfg.get("decoder_sparse_step")
        if sparse_step not in (None, 1) and not only:
            dense_layers += layers - layers // whole("decoder_sparse_step", sparse_step)
        dense_layers = min(dense_layers, layers)
    vocab = optional("vocab_size", cfg.get("vocab_size"), 0, minimum=0)
    # vLLM derives max_model_len from max_position_embeddings and falls back to 2048 when a
    # config has none of its length keys (vllm/config.py, _get_and_verify_max_len)
    max_pos = optional("max_position_embeddings", cfg.get("max_position_embeddings"), HF_DEFAULT_MAX_LEN)
    dtype = _first(cfg, "torch_dtype", "dtype")
    if dtype is None:
        raise ConfigError(f"model config {name!r}: no torch_dtype or dtype field; cannot size the weights")
    act_bytes = dtype_bytes(str(dtype))
    qcfg = _first(cfg, "quantization_config", "compression_config")
    quant = parse_quantization(qcfg, name) if qcfg is not None else None
    return ModelSpec(
        name=name,
        num_layers=layers,
        hidden_size=d,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=dff,
        vocab_size=vocab,
        bytes_per_param=act_bytes if quant is None else quant.weight_bytes,
        max_position_embeddings=max_pos,
        num_experts=experts,
        num_experts_per_tok=experts_per_tok,
        source=source or name,
        activation_bytes=None if quant is None else act_bytes,
        gemm_precision="bf16" if quant is None else quant.gemm_precision,
        quantization="" if quant is None else quant.scheme,
        moe_intermediate_size=moe_width,
        shared_expert_intermediate_size=shared_width,
        num_dense_layers=dense_layers,
    )


# --- built-in catalogue -----------------------------------------------------------------------
# Written by hand from the public Hugging Face config.json of each model (source named per
# entry). Fields: L, d, H, Hk, head_dim, dff, vocab, dtype, max_position_embeddings, experts, k.
_CATALOGUE_ROWS: dict[str, tuple] = {
    "llama-2-7b": (32, 4096, 32, 32, 128, 11008, 32000, "float16", 4096, 0, 0, "meta-llama/Llama-2-7b-hf"),
    "llama-2-13b": (40, 5120, 40, 40, 128, 13824, 32000, "float16", 4096, 0, 0, "meta-llama/Llama-2-13b-hf"),
    "llama-2-70b": (80, 8192, 64, 8, 128, 28672, 32000, "float16", 4096, 0, 0, "meta-llama/Llama-2-70b-hf"),
    "codellama-34b": (48, 8192, 64, 8, 128, 22016, 32000, "bfloat16", 16384, 0, 0, "codellama/CodeLlama-34b-Instruct-hf"),
    "llama-3.1-8b": (32, 4096, 32, 8, 128, 14336, 128256, "bfloat16", 131072, 0, 0, "meta-llama/Llama-3.1-8B-Instruct"),
    "llama-3.1-70b": (80, 8192, 64, 8, 128, 28672, 128256, "bfloat16", 131072, 0, 0, "meta-llama/Llama-3.1-70B-Instruct"),
    "qwen2.5-7b": (28, 3584, 28, 4, 128, 18944, 152064, "bfloat16", 32768, 0, 0, "Qwen/Qwen2.5-7B-Instruct"),
    "qwen3-14b": (40, 5120, 40, 8, 128, 17408, 151936, "bfloat16", 40960, 0, 0, "Qwen/Qwen3-14B"),
    "mixtral-8x7b": (32, 4096, 32, 8, 128, 14336, 32000, "bfloat16", 32768, 8, 2, "mistralai/Mixtral-8x7B-v0.1"),
}

# Extra spellings accepted by resolve_model (lower-cased). HF ids of the catalogue entries are
# added automatically, with and without the organisation prefix.
_EXTRA_ALIASES: dict[str, str] = {
    "llama2-7b": "llama-2-7b",
    "llama2-13b": "llama-2-13b",
    "llama2-70b": "llama-2-70b",
    "meta-llama/llama-2-7b-chat-hf": "llama-2-7b",
    "meta-llama/llama-2-13b-chat-hf": "llama-2-13b",
    "meta-llama/llama-2-70b-chat-hf": "llama-2-70b",
    "codellama/codellama-34b-hf": "codellama-34b",
    "codellama-34b-instruct": "codellama-34b",
    "meta-llama/llama-3.1-8b": "llama-3.1-8b",
    "meta-llama/meta-llama-3.1-8b-instruct": "llama-3.1-8b",
    "meta-llama/llama-3.1-70b": "llama-3.1-70b",
    "meta-llama/meta-llama-3.1-70b-instruct": "llama-3.1-70b",
    "qwen/qwen2.5-7b": "qwen2.5-7b",
    "qwen2.5-7b-instruct": "qwen2.5-7b",
    "mixtral-8x7b-instruct": "mixtral-8x7b",
    "mistralai/mixtral-8x7b-instruct-v0.1": "mixtral-8x7b",
}


def _build_catalogue() -> tuple[dict[str, ModelSpec], dict[str, str]]:
    specs: dict[str, ModelSpec] = {}
    aliases: dict[str, str] = {}
    for name, (L, d, H, Hk, dh, dff, vocab, dtype, max_pos, E, k, hf_id) in _CATALOGUE_ROWS.items():
        specs[name] = ModelSpec(
            name=name,
            num_layers=L,
            hidden_size=d,
            num_heads=H,
            num_kv_heads=Hk,
            head_dim=dh,
            intermediate_size=dff,
            vocab_size=vocab,
            bytes_per_param=dtype_bytes(dtype),
            max_position_embeddings=max_pos,
            num_experts=E,
            num_experts_per_tok=k,
            source=f"HF {hf_id} config.json",
        )
        aliases[name] = name
        aliases[hf_id.lower()] = name
        aliases[hf_id.lower().split("/", 1)[1]] = name
    for alias, target in _EXTRA_ALIASES.items():
        aliases.setdefault(alias, target)
    return specs, aliases


MODEL_CATALOGUE, _MODEL_ALIASES = _build_catalogue()


def catalogue_names() -> list[str]:
    """Canonical names of the built-in models, sorted."""
    return sorted(MODEL_CATALOGUE)


def load_model_config(path: str | Path) -> ModelSpec:
    """Read a HF ``config.json`` (or a folder holding one) into a :class:`ModelSpec`."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise ConfigError(f"model config file not found: {p}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"model config {p}: not valid JSON ({err})") from None
    except RecursionError:
        raise ConfigError(f"model config {p}: nested too deeply to be a model config") from None
    name = p.parent.name or p.stem
    return model_spec_from_hf(data, name=name, source=str(p))


def resolve_model(name_or_path: str) -> ModelSpec:
    """A catalogue model by name/alias (case-insensitive), or a config.json path or its folder.

    Raises ConfigError: unknown names list the valid ones; a path-like string that does not
    exist names the path; malformed JSON names the file.
    """
    key = name_or_path.strip().lower()
    if key in _MODEL_ALIASES:
        return MODEL_CATALOGUE[_MODEL_ALIASES[key]]
    p = Path(name_or_path).expanduser()
    looks_like_path = p.exists() or name_or_path.endswith(".json") or name_or_path.startswith((".", "/", "~"))
    if looks_like_path:
        return load_model_config(p)
    if _HF_REPO_ID.match(name_or_path.strip()):
        return load_model_config(cached_hf_config(name_or_path.strip()))
    raise ConfigError(f"unknown model {name_or_path!r}; use a path to a Hugging Face config.json (or its folder) or one of: {', '.join(catalogue_names())}")


_HF_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hf_hub_cache() -> Path:
    """The local Hugging Face hub cache, as ``huggingface_hub`` resolves it: ``$HF_HUB_CACHE``,
    else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub`` (``~/.cache`` by default)."""
    env = os.environ
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "huggingface" / "hub"


def cached_hf_config(repo_id: str) -> Path:
    """``config.json`` of ``repo_id`` (``org/name``) in the local Hugging Face cache
    (``models--org--name/snapshots/<rev>/config.json``, the revision ``refs/main`` names, else
    the only snapshot that has one). ConfigError naming where it looked and how to fix it."""
    repo = hf_hub_cache() / ("models--" + repo_id.replace("/", "--"))
    ref = repo / "refs" / "main"
    if ref.is_file():
        cand = repo / "snapshots" / ref.read_text().strip() / "config.json"
        if cand.is_file():
            return cand
    found = sorted((repo / "snapshots").glob("*/config.json")) if (repo / "snapshots").is_dir() else []
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise ConfigError(
            f"model {repo_id!r}: the Hugging Face cache holds {len(found)} snapshots and no refs/main; "
            f"pass the config.json of the one you serve, e.g. --model {found[-1]}"
        )
    raise ConfigError(
        f"model {repo_id!r} is not in servesim's catalogue ({', '.join(catalogue_names())}) nor in the local Hugging Face cache "
        f"(looked for {repo}/snapshots/*/config.json); download its config (huggingface-cli download {repo_id} config.json) "
        "or pass the path of its config.json"
    )
