"""GPU catalogue: a hardware description per GPU — tensor-core peaks per precision, memory
bandwidth and capacity, the tensor-parallel interconnect — and the seed roofline's two
calibration values.

:func:`resolve_gpu` maps a user string to a frozen :class:`GpuSpec`: a catalogue name
(``H100``, ``h100-sxm``, ``A100-80``, ``L40S`` …, case-insensitive) or the path of a YAML file
with the same fields (:func:`load_gpu_file`; ``servesim list`` and ``docs/hardware.md`` show
the schema). Peaks are vendor datasheet figures, *dense* (without the 2:4 sparsity doubling
that datasheets print first); the source of each number sits beside it.

``bw_efficiency`` (η) and ``per_layer_overhead_us`` are the *seed* model's calibration (the
seed study's ``hardware_config.json`` of inference-sim ``a410740f``, blis-reference.md §1.4;
assumed equal to H100's where it had none). A fitted calibration replaces both with
GPU-independent or GPU-relative knobs (``docs/calibration.md``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from sim.errors import ConfigError

INTERCONNECTS = ("nvlink", "pcie", "infinity-fabric", "none")
"""Kinds of tensor-parallel interconnect a GPU can have (``none``: a part that cannot run TP > 1)."""

ARCHITECTURES = ("ampere", "ada", "hopper", "blackwell", "cdna3", "other")


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """One GPU's hardware description.

    ``peak_bf16_tflops``: dense BF16 tensor-core peak, 1e12 FLOP/s. ``peak_fp8_tflops``: dense
    FP8 peak, or None where the GPU has no FP8 tensor cores (A100: FP8 checkpoints then run as
    weight-only FP8, computed in BF16). ``peak_int8_tops``: dense INT8 peak, 1e12 op/s, or
    None. ``hbm_bw_tbs``: peak memory bandwidth (HBM or GDDR), 1e12 B/s. ``memory_gib``: memory
    capacity, GiB (2**30 B). ``interconnect``: the link TP all-reduces cross (``nvlink``,
    ``pcie``, ``infinity-fabric``); ``interconnect_bw_gbps``: its bandwidth per GPU and
    direction, 1e9 B/s (NVLink: the datasheet's total / 2; PCIe x16: the per-direction rate).
    ``bw_efficiency`` (η in (0, 1]) and ``per_layer_overhead_us`` (µs per layer and step,
    before /TP) are the seed roofline's calibration.
    """

    name: str
    peak_bf16_tflops: float
    hbm_bw_tbs: float
    memory_gib: float
    bw_efficiency: float
    per_layer_overhead_us: float
    source: str = ""
    peak_fp8_tflops: float | None = None
    peak_int8_tops: float | None = None
    interconnect: str = "pcie"
    interconnect_bw_gbps: float = 32.0
    architecture: str = "other"
    memory_type: str = ""

    def __post_init__(self) -> None:
        if not (self.peak_bf16_tflops > 0 and self.hbm_bw_tbs > 0 and self.memory_gib > 0):
            raise ConfigError(f"GPU {self.name!r}: peak_bf16_tflops, hbm_bw_tbs and memory_gib must be > 0")
        for key in ("peak_fp8_tflops", "peak_int8_tops"):
            v = getattr(self, key)
            if v is not None and not v > 0:
                raise ConfigError(f"GPU {self.name!r}: {key} must be > 0, or absent when the GPU has no such tensor cores")
        if not 0 < self.bw_efficiency <= 1:
            raise ConfigError(f"GPU {self.name!r}: bw_efficiency must be in (0, 1], got {self.bw_efficiency}")
        if self.per_layer_overhead_us < 0:
            raise ConfigError(f"GPU {self.name!r}: per_layer_overhead_us must be >= 0")
        if self.interconnect not in INTERCONNECTS:
            raise ConfigError(f"GPU {self.name!r}: interconnect must be one of {', '.join(INTERCONNECTS)}, got {self.interconnect!r}")
        if not self.interconnect_bw_gbps > 0:
            raise ConfigError(f"GPU {self.name!r}: interconnect_bw_gbps must be > 0")
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"GPU {self.name!r}: architecture must be one of {', '.join(ARCHITECTURES)}, got {self.architecture!r}")

    @property
    def peak_flops(self) -> float:
        """Dense BF16 peak, FLOP/s."""
        return self.peak_bf16_tflops * 1e12

    def peak_flops_for(self, precision: str) -> float:
        """Dense tensor-core peak, FLOP/s, of GEMMs whose inputs are ``precision`` (``bf16``,
        ``fp8`` or ``int8``). A precision the GPU has no tensor cores for runs at the BF16
        peak (the weights are dequantised first, as vLLM's Marlin kernels do)."""
        if precision == "fp8" and self.peak_fp8_tflops is not None:
            return self.peak_fp8_tflops * 1e12
        if precision == "int8" and self.peak_int8_tops is not None:
            return self.peak_int8_tops * 1e12
        return self.peak_flops

    def has_precision(self, precision: str) -> bool:
        """Whether the GPU has tensor cores for ``precision`` (bf16 always)."""
        return {"fp8": self.peak_fp8_tflops, "int8": self.peak_int8_tops}.get(precision, 1.0) is not None

    @property
    def peak_bw_bytes_s(self) -> float:
        """Peak memory bandwidth, B/s (before η)."""
        return self.hbm_bw_tbs * 1e12

    @property
    def interconnect_bw_bytes_s(self) -> float:
        """TP interconnect bandwidth per GPU and direction, B/s."""
        return self.interconnect_bw_gbps * 1e9

    @property
    def memory_bytes(self) -> float:
        return self.memory_gib * 2**30

    @property
    def ridge_flop_per_byte(self) -> float:
        """BF16 peak / memory bandwidth, FLOP/B: the arithmetic intensity above which a kernel
        is compute-bound on this GPU (H100 SXM 295, A100 153, L40S 419)."""
        return self.peak_flops / self.peak_bw_bytes_s

    def describe(self) -> dict[str, Any]:
        """Every field, for reports and ``servesim list``."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


_GB_TO_GIB = 1e9 / 2**30  # datasheets quote decimal GB

# Seed calibration of the seed roofline (inference-sim hardware_config.json a410740f)
_SEED_ETA_H100 = 0.82
_SEED_ETA_A100 = 0.80
_SEED_LAYER_US = 100.0

GPU_CATALOGUE: dict[str, GpuSpec] = {
    "H100": GpuSpec(
        "H100",
        architecture="hopper",
        peak_bf16_tflops=989.5,  # H100 SXM datasheet: 1,979 TFLOP/s BF16 with sparsity → /2 dense
        peak_fp8_tflops=1979.0,  # H100 SXM datasheet: 3,958 TFLOP/s FP8 with sparsity → /2
        peak_int8_tops=1979.0,  # H100 SXM datasheet: 3,958 TOPS INT8 with sparsity → /2
        hbm_bw_tbs=3.35,  # H100 SXM datasheet: 3.35 TB/s HBM3
        memory_gib=80.0,  # seed study hardware_config.json (MemoryGiB 80)
        memory_type="HBM3",
        interconnect="nvlink",
        interconnect_bw_gbps=450.0,  # H100 SXM datasheet: NVLink 900 GB/s (both directions) → 450 per direction
        bw_efficiency=_SEED_ETA_H100,
        per_layer_overhead_us=_SEED_LAYER_US,
        source="NVIDIA H100 Tensor Core GPU datasheet (SXM5); η and overhead: inference-sim hardware_config.json a410740f",
    ),
    "H100-PCIe": GpuSpec(
        "H100-PCIe",
        architecture="hopper",
        peak_bf16_tflops=756.0,  # H100 PCIe datasheet: 1,513 TFLOP/s BF16 with sparsity → /2
        peak_fp8_tflops=1513.0,  # H100 PCIe datasheet: 3,026 TFLOP/s FP8 with sparsity → /2
        peak_int8_tops=1513.0,  # H100 PCIe datasheet: 3,026 TOPS INT8 with sparsity → /2
        hbm_bw_tbs=2.0,  # H100 PCIe datasheet: 2 TB/s HBM2e
        memory_gib=80.0,  # 80 GB HBM2e: the same stacks as the SXM part (nvidia-smi reports 81,559 MiB on both)
        memory_type="HBM2e",
        interconnect="pcie",
        interconnect_bw_gbps=64.0,  # H100 PCIe datasheet: PCIe Gen5 128 GB/s (both directions) → 64 (no NVLink bridge)
        bw_efficiency=_SEED_ETA_H100,  # assumed = H100 SXM seed value
        per_layer_overhead_us=_SEED_LAYER_US,
        source="NVIDIA H100 Tensor Core GPU datasheet (PCIe); η and overhead assumed = H100 SXM seed values",
    ),
    "A100": GpuSpec(
        "A100",
        architecture="ampere",
        peak_bf16_tflops=312.0,  # A100 datasheet: 312 TFLOP/s BF16 dense (624 with sparsity)
        peak_fp8_tflops=None,  # Ampere has no FP8 tensor cores
        peak_int8_tops=624.0,  # A100 datasheet: 624 TOPS INT8 dense (1,248 with sparsity)
        hbm_bw_tbs=2.039,  # A100 80GB SXM datasheet: 2,039 GB/s HBM2e
        memory_gib=80.0,
        memory_type="HBM2e",
        interconnect="nvlink",
        interconnect_bw_gbps=300.0,  # A100 SXM datasheet: NVLink 600 GB/s (both directions) → 300 per direction
        bw_efficiency=_SEED_ETA_A100,  # seed study hardware_config.json
        per_layer_overhead_us=_SEED_LAYER_US,  # seed study hardware_config.json
        source="NVIDIA A100 Tensor Core GPU datasheet (80GB SXM); η and overhead: inference-sim hardware_config.json a410740f",
    ),
    "A100-40": GpuSpec(
        "A100-40",
        architecture="ampere",
        peak_bf16_tflops=312.0,  # A100 datasheet: 312 TFLOP/s BF16 dense
        peak_fp8_tflops=None,  # Ampere has no FP8 tensor cores
        peak_int8_tops=624.0,  # A100 datasheet: 624 TOPS INT8 dense
        hbm_bw_tbs=1.555,  # A100 40GB SXM datasheet: 1,555 GB/s HBM2
        memory_gib=40.0,
        memory_type="HBM2",
        interconnect="nvlink",
        interconnect_bw_gbps=300.0,  # A100 SXM datasheet: NVLink 600 GB/s → 300 per direction
        bw_efficiency=_SEED_ETA_A100,  # seed study's A100 value
        per_layer_overhead_us=_SEED_LAYER_US,
        source="NVIDIA A100 Tensor Core GPU datasheet (40GB SXM); η and overhead: inference-sim hardware_config.json a410740f (A100)",
    ),
    "H200": GpuSpec(
        "H200",
        architecture="hopper",
        peak_bf16_tflops=989.5,  # H200 SXM datasheet: 1,979 TFLOP/s BF16 with sparsity → /2 dense
        peak_fp8_tflops=1979.0,  # H200 SXM datasheet: 3,958 TFLOP/s FP8 with sparsity → /2
        peak_int8_tops=1979.0,  # H200 SXM datasheet: 3,958 TOPS INT8 with sparsity → /2
        hbm_bw_tbs=4.8,  # H200 SXM datasheet: 4.8 TB/s HBM3e
        memory_gib=141.0 * _GB_TO_GIB,  # 141 GB HBM3e
        memory_type="HBM3e",
        interconnect="nvlink",
        interconnect_bw_gbps=450.0,  # H200 SXM datasheet: NVLink 900 GB/s → 450 per direction
        bw_efficiency=_SEED_ETA_H100,  # assumed equal to the H100 seed value (no H200 calibration exists)
        per_layer_overhead_us=_SEED_LAYER_US,
        source="NVIDIA H200 Tensor Core GPU datasheet (SXM); η and overhead assumed = H100 seed values",
    ),
    "L40S": GpuSpec(
        "L40S",
        architecture="ada",
        peak_bf16_tflops=362.05,  # L40S datasheet: 362.05 TFLOP/s BF16 dense (733 with sparsity)
        peak_fp8_tflops=733.0,  # L40S datasheet: 733 TFLOP/s FP8 dense (1,466 with sparsity)
        peak_int8_tops=733.0,  # L40S datasheet: 733 TOPS INT8 dense (1,466 with sparsity)
        hbm_bw_tbs=0.864,  # L40S datasheet: 864 GB/s GDDR6
        memory_gib=48.0 * _GB_TO_GIB,  # 48 GB GDDR6
        memory_type="GDDR6",
        interconnect="pcie",
        interconnect_bw_gbps=32.0,  # L40S datasheet: PCIe Gen4 x16 64 GB/s (both directions) → 32; no NVLink
        bw_efficiency=_SEED_ETA_H100,  # assumed equal to the H100 seed value
        per_layer_overhead_us=_SEED_LAYER_US,
        source="NVIDIA L40S datasheet; η and overhead assumed = H100 seed values",
    ),
}

_GPU_ALIASES: dict[str, str] = {
    "h100": "H100",
    "h100-sxm": "H100",
    "h100-sxm5": "H100",
    "h100-80": "H100",
    "h100-80gb": "H100",
    "h100-pcie": "H100-PCIe",
    "h100-pcie-80gb": "H100-PCIe",
    "a100": "A100",
    "a100-sxm": "A100",
    "a100-80": "A100",
    "a100-80gb": "A100",
    "a100-sxm-80gb": "A100",
    "a100-40": "A100-40",
    "a100-40gb": "A100-40",
    "a100-sxm-40gb": "A100-40",
    "h200": "H200",
    "h200-sxm": "H200",
    "l40s": "L40S",
}


def gpu_names() -> list[str]:
    """Canonical GPU names, sorted."""
    return sorted(GPU_CATALOGUE)


# Fields of a GPU file: required ones, then optional ones with their meaning
GPU_FILE_REQUIRED = ("name", "peak_bf16_tflops", "hbm_bw_tbs", "memory_gib", "interconnect", "interconnect_bw_gbps", "source")
GPU_FILE_OPTIONAL = ("peak_fp8_tflops", "peak_int8_tops", "architecture", "memory_type", "bw_efficiency", "per_layer_overhead_us")


def _looks_like_gpu_file(text: str) -> bool:
    return text.endswith((".yaml", ".yml")) or "/" in text or text.startswith((".", "~"))


def load_gpu_file(path: str | Path) -> GpuSpec:
    """A :class:`GpuSpec` from a YAML file with the catalogue's fields (``GPU_FILE_REQUIRED``,
    optionally ``GPU_FILE_OPTIONAL``; numbers as the catalogue's units, ``peak_fp8_tflops``
    omitted or null where the GPU has no FP8 tensor cores). ``bw_efficiency`` and
    ``per_layer_overhead_us`` default to the H100 seed values. ConfigError naming the file and
    the field for a missing file, unknown or missing keys, or a value out of range."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"gpu: file not found: {p}")
    return _load_gpu_file_cached(str(p.resolve()), p.stat().st_mtime)


@functools.lru_cache(maxsize=32)
def _load_gpu_file_cached(path: str, _mtime: float) -> GpuSpec:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as err:
        raise ConfigError(f"gpu file {path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"gpu file {path}: expected a mapping of fields ({', '.join(GPU_FILE_REQUIRED)})")
    unknown = sorted(set(map(str, data)) - set(GPU_FILE_REQUIRED) - set(GPU_FILE_OPTIONAL))
    if unknown:
        raise ConfigError(f"gpu file {path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(GPU_FILE_REQUIRED + GPU_FILE_OPTIONAL)}")
    missing = [k for k in GPU_FILE_REQUIRED if data.get(k) in (None, "")]
    if missing:
        raise ConfigError(f"gpu file {path}: missing field(s) {', '.join(missing)} (every number needs its datasheet source in 'source')")
    numeric = (
        "peak_bf16_tflops",
        "hbm_bw_tbs",
        "memory_gib",
        "interconnect_bw_gbps",
        "peak_fp8_tflops",
        "peak_int8_tops",
        "bw_efficiency",
        "per_layer_overhead_us",
    )
    for key in numeric:
        v = data.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise ConfigError(f"gpu file {path}: {key} must be a number, got {v!r}")
    for key in ("name", "source", "interconnect", "architecture", "memory_type"):
        if key in data and data[key] is not None and not isinstance(data[key], str):
            raise ConfigError(f"gpu file {path}: {key} must be a string, got {data[key]!r}")
    name = str(data["name"]).strip()
    if name.lower().replace("_", "-").replace(" ", "-") in _GPU_ALIASES:
        raise ConfigError(f"gpu file {path}: name {name!r} is a catalogue GPU's; give the file's GPU its own name")
    try:
        return GpuSpec(
            name=name,
            peak_bf16_tflops=float(data["peak_bf16_tflops"]),
            hbm_bw_tbs=float(data["hbm_bw_tbs"]),
            memory_gib=float(data["memory_gib"]),
            bw_efficiency=float(data.get("bw_efficiency") or _SEED_ETA_H100),
            per_layer_overhead_us=float(data["per_layer_overhead_us"]) if data.get("per_layer_overhead_us") is not None else _SEED_LAYER_US,
            source=str(data["source"]),
            peak_fp8_tflops=None if data.get("peak_fp8_tflops") is None else float(data["peak_fp8_tflops"]),
            peak_int8_tops=None if data.get("peak_int8_tops") is None else float(data["peak_int8_tops"]),
            interconnect=str(data["interconnect"]),
            interconnect_bw_gbps=float(data["interconnect_bw_gbps"]),
            architecture=str(data.get("architecture") or "other"),
            memory_type=str(data.get("memory_type") or ""),
        )
    except ConfigError as err:
        raise ConfigError(f"gpu file {path}: {err}") from None


def resolve_gpu(name: str) -> GpuSpec:
    """The catalogue GPU for ``name`` (case-insensitive, aliases allowed), or the GPU described
    by a YAML file when ``name`` is a path (:func:`load_gpu_file`); ConfigError otherwise."""
    text = name.strip()
    key = text.lower().replace("_", "-").replace(" ", "-")
    if key in _GPU_ALIASES:
        return GPU_CATALOGUE[_GPU_ALIASES[key]]
    if _looks_like_gpu_file(text) or Path(text).expanduser().is_file():
        return load_gpu_file(text)
    raise ConfigError(
        f"unknown GPU {name!r}; choose one of: {', '.join(gpu_names())} (aliases: {', '.join(sorted(_GPU_ALIASES))}), "
        "or give the path of a GPU YAML file (docs/hardware.md)"
    )
