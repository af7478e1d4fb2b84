"""GPU catalogue: peak compute, memory bandwidth and roofline calibration per GPU.

:func:`resolve_gpu` maps a user string (``H100``, ``h100-sxm``, ``A100-80`` …, case-insensitive)
to a frozen :class:`GpuSpec`. Peaks are NVIDIA datasheet figures (dense, i.e. without the 2:4
sparsity doubling). ``bw_efficiency`` (η, the share of peak HBM bandwidth a roofline should
assume) and ``per_layer_overhead_us`` (CPU/launch time per layer and step, divided by TP)
are the seed study's calibration (``hardware_config.json`` of inference-sim ``a410740f``,
blis-reference.md §1.4); where the study had no value they are assumed equal to H100's.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.errors import ConfigError


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """One GPU's roofline parameters.

    ``peak_bf16_tflops``: dense BF16 tensor-core peak, 1e12 FLOP/s. ``hbm_bw_tbs``: peak HBM
    bandwidth, 1e12 B/s. ``memory_gib``: HBM capacity, GiB (2**30 B). ``bw_efficiency``: η in
    (0, 1]. ``per_layer_overhead_us``: µs per transformer layer per step (before /TP).
    """

    name: str
    peak_bf16_tflops: float
    hbm_bw_tbs: float
    memory_gib: float
    bw_efficiency: float
    per_layer_overhead_us: float
    source: str = ""

    def __post_init__(self) -> None:
        if not (self.peak_bf16_tflops > 0 and self.hbm_bw_tbs > 0 and self.memory_gib > 0):
            raise ConfigError(f"GPU {self.name!r}: peaks and memory must be > 0")
        if not 0 < self.bw_efficiency <= 1:
            raise ConfigError(f"GPU {self.name!r}: bw_efficiency must be in (0, 1], got {self.bw_efficiency}")
        if self.per_layer_overhead_us < 0:
            raise ConfigError(f"GPU {self.name!r}: per_layer_overhead_us must be >= 0")

    @property
    def peak_flops(self) -> float:
        """Dense BF16 peak, FLOP/s."""
        return self.peak_bf16_tflops * 1e12

    @property
    def peak_bw_bytes_s(self) -> float:
        """Peak HBM bandwidth, B/s (before η)."""
        return self.hbm_bw_tbs * 1e12

    @property
    def memory_bytes(self) -> float:
        return self.memory_gib * 2**30


_GB_TO_GIB = 1e9 / 2**30  # datasheets quote decimal GB

GPU_CATALOGUE: dict[str, GpuSpec] = {
    "H100": GpuSpec(
        "H100",
        peak_bf16_tflops=989.5,  # H100 SXM datasheet: 1979 TFLOP/s BF16 with sparsity → /2 dense
        hbm_bw_tbs=3.35,  # H100 SXM datasheet
        memory_gib=80.0,  # seed study hardware_config.json (MemoryGiB 80)
        bw_efficiency=0.82,  # seed study calibration (H1), hardware_config.json a410740f
        per_layer_overhead_us=100.0,  # seed study calibration (H2b), hardware_config.json a410740f
        source="NVIDIA H100 Tensor Core GPU datasheet (SXM5); η and overhead: inference-sim hardware_config.json a410740f",
    ),
    "A100": GpuSpec(
        "A100",
        peak_bf16_tflops=312.0,  # A100 datasheet: 312 TFLOP/s BF16 dense
        hbm_bw_tbs=2.039,  # A100 80GB SXM datasheet
        memory_gib=80.0,
        bw_efficiency=0.80,  # seed study hardware_config.json
        per_layer_overhead_us=100.0,  # seed study hardware_config.json
        source="NVIDIA A100 Tensor Core GPU datasheet (80GB SXM); η and overhead: inference-sim hardware_config.json a410740f",
    ),
    "H200": GpuSpec(
        "H200",
        peak_bf16_tflops=989.5,  # H200 SXM datasheet: 1979 TFLOP/s BF16 with sparsity → /2 dense
        hbm_bw_tbs=4.8,  # H200 SXM datasheet
        memory_gib=141.0 * _GB_TO_GIB,  # 141 GB HBM3e
        bw_efficiency=0.82,  # assumed equal to the H100 seed value (no H200 calibration exists)
        per_layer_overhead_us=100.0,  # assumed equal to the H100 seed value
        source="NVIDIA H200 Tensor Core GPU datasheet (SXM); η and overhead assumed = H100 seed values",
    ),
    "L40S": GpuSpec(
        "L40S",
        peak_bf16_tflops=362.05,  # L40S datasheet: 733 TFLOP/s BF16 with sparsity; 362.05 dense
        hbm_bw_tbs=0.864,  # L40S datasheet: 864 GB/s GDDR6
        memory_gib=48.0 * _GB_TO_GIB,  # 48 GB GDDR6
        bw_efficiency=0.82,  # assumed equal to the H100 seed value
        per_layer_overhead_us=100.0,  # assumed equal to the H100 seed value
        source="NVIDIA L40S datasheet; η and overhead assumed = H100 seed values",
    ),
}

_GPU_ALIASES: dict[str, str] = {
    "h100": "H100",
    "h100-sxm": "H100",
    "h100-sxm5": "H100",
    "h100-80": "H100",
    "h100-80gb": "H100",
    "a100": "A100",
    "a100-sxm": "A100",
    "a100-80": "A100",
    "a100-80gb": "A100",
    "h200": "H200",
    "h200-sxm": "H200",
    "l40s": "L40S",
}


def gpu_names() -> list[str]:
    """Canonical GPU names, sorted."""
    return sorted(GPU_CATALOGUE)


def resolve_gpu(name: str) -> GpuSpec:
    """The catalogue GPU for ``name`` (case-insensitive, aliases allowed); ConfigError otherwise."""
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    if key in _GPU_ALIASES:
        return GPU_CATALOGUE[_GPU_ALIASES[key]]
    raise ConfigError(f"unknown GPU {name!r}; choose one of: {', '.join(gpu_names())} (aliases: {', '.join(sorted(_GPU_ALIASES))})")
