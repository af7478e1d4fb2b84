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
from dataclasses import dataclass
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

    def _attn_params_per_layer(self) -> int:
        # Q (d×H·dh) + O (H·dh×d) + K and V (d×Hk·dh each)
        return 2 * self.hidden_size * self.q_dim + 2 * self.hidden_size * self.kv_dim

    @property
    def weights_bytes(self) -> float:
        """Bytes of the transformer-layer weights in memory, whole model.

        ``W = L·b·(2·d·H·dh + 2·d·Hk·dh + E·3·d·dff)`` — the reference's W
        (blis-reference.md §1.1, ``L·b·(2d² + 2d·dkv + 3d·dff)`` when ``H·dh = d``), with ``E``
        the number of stored experts (all of a MoE's experts occupy memory and, in a batch of
        any size, are assumed all read). Embeddings, LM head, norms and MoE routers are
        excluded, as in the reference: they are <3 % of a 7B model's bytes and the LM head
        runs on sampled positions only.
        """
        per_layer = self._attn_params_per_layer() + self.stored_experts * 3 * self.hidden_size * self.intermediate_size
        return float(self.num_layers * per_layer) * self.bytes_per_param

    @property
    def lm_head_bytes(self) -> float:
        """Bytes of the LM head (vocab × hidden), whole model: the logits GEMM reads all of it on
        every step that samples, however few rows it has (tied embeddings share the storage,
        but the read is the same)."""
        return float(self.vocab_size * self.hidden_size) * self.bytes_per_param

    @property
    def active_params_per_token(self) -> int:
        """Layer parameters one token multiplies by (MoE: active experts only); FLOPs ≈ 2× this."""
        per_layer = self._attn_params_per_layer() + self.active_experts * 3 * self.hidden_size * self.intermediate_size
        return self.num_layers * per_layer

    @property
    def kv_bytes_per_token(self) -> float:
        """KV-cache bytes one token occupies in the whole model: ``2·L·Hk·dh·b``.

        Divide by the tensor-parallel size yourself for a per-GPU figure.
        """
        return 2.0 * self.num_layers * self.num_kv_heads * self.head_dim * self.bytes_per_param


# --- Hugging Face config.json parsing -------------------------------------------------------


# Largest size field an HF config may hold (layers, widths, vocabulary, context): far beyond
# any model, small enough that products of a few stay exact in float64.
HF_MAX_SIZE = 2**31
# vLLM's max_model_len when a config names no length (vllm/config.py, _get_and_verify_max_len)
HF_DEFAULT_MAX_LEN = 2048


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
    experts = optional("num_local_experts", _first(cfg, "num_local_experts", "num_experts"), 0, minimum=0)
    experts_per_tok = optional("num_experts_per_tok", cfg.get("num_experts_per_tok"), 0, minimum=0) if experts else 0
    vocab = optional("vocab_size", cfg.get("vocab_size"), 0, minimum=0)
    # vLLM derives max_model_len from max_position_embeddings and falls back to 2048 when a
    # config has none of its length keys (vllm/config.py, _get_and_verify_max_len)
    max_pos = optional("max_position_embeddings", cfg.get("max_position_embeddings"), HF_DEFAULT_MAX_LEN)
    dtype = _first(cfg, "torch_dtype", "dtype")
    if dtype is None:
        raise ConfigError(f"model config {name!r}: no torch_dtype or dtype field; cannot size the weights")
    return ModelSpec(
        name=name,
        num_layers=layers,
        hidden_size=d,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=dff,
        vocab_size=vocab,
        bytes_per_param=dtype_bytes(str(dtype)),
        max_position_embeddings=max_pos,
        num_experts=experts,
        num_experts_per_tok=experts_per_tok,
        source=source or name,
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
    raise ConfigError(f"unknown model {name_or_path!r}; use a path to a Hugging Face config.json (or its folder) or one of: {', '.join(catalogue_names())}")
