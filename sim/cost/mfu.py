"""Model FLOPs utilisation (MFU): microbenchmark tables and a built-in analytic model.

An *MFU provider* answers three questions for one model on one GPU at one TP size:
``gemm(m, k, n)``, ``attn_decode(batch_size, kv_len)`` and ``attn_prefill(seq_len)``, each a
fraction of the GPU's dense peak in (0, 1]. Two kinds exist:

* :class:`TableMfu` — from a ``bench_data`` directory laid out like the seed study's
  (blis-reference.md §2): ``gemm/<gpu>/data.csv`` (m,k,n,latency_us,mfu),
  ``mha/decode/<gpu>/{H}-{Hk}-{dh}-tp{N}.csv`` (dtype,kv_dtype,batch_size,kv_len,latency_us,mfu),
  ``mha/prefill/<gpu>/{H}-{Hk}-{dh}.csv`` (dtype,seq_len,latency_us,mfu); ``<gpu>`` lowercase.
  Lookups are ``nearest`` (the seed "v2-pre" semantics) or ``interpolate`` (the "v2" ones).
* :class:`BuiltinMfu` — smooth saturating curves fitted to the H100 tables (no files needed),
  carried to every GPU through its datasheet ratios (:func:`builtin_mfu_for`); the default when
  no bench_data directory is configured.

Loading reads files (only :func:`load_mfu_database`); lookups are pure and cached.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import pandas as pd

from sim.catalogue.hardware import GPU_CATALOGUE
from sim.errors import ConfigError

MFU_FLOOR = 1e-4
"""Smallest usable MFU: table rows below it are measurement artefacts (e.g. 32-8-128-tp1 at
(bs 1, kv 1024) reads 0.0). A lookup below it takes the nearest row at or above it
(blis-reference.md §2, "Any result < 1e-4")."""

Lookup = Literal["nearest", "interpolate"]


class MfuProvider(Protocol):
    """MFU for one (model, GPU, TP). All results are in [MFU_FLOOR, 1]."""

    def gemm(self, m: int, k: int, n: int) -> float:
        """MFU of an (m×k)·(k×n) GEMM."""
        ...

    def attn_decode(self, batch_size: int, kv_len: int) -> float:
        """MFU of decode attention for ``batch_size`` requests at KV length ``kv_len``."""
        ...

    def attn_prefill(self, seq_len: int) -> float:
        """MFU of causal prefill attention at sequence length ``seq_len``."""
        ...


# --- built-in analytic model -----------------------------------------------------------------
# Constants fitted by scripts/fit_builtin_mfu.py to ../shared/ground_truth/bench_data (H100,
# 880 rows with MFU >= 1e-4). Measured fit error, absolute relative error |pred-meas|/meas:
#   GEMM    (112 rows): median 0.065, mean 0.083, p90 0.173 (without the K, N terms 0.065 / 0.099 / 0.224)
#   decode  (738 rows): median 0.044, mean 0.170, p90 0.369  (tables are rounded to 0.001)
#   prefill  (30 rows): median 0.028, mean 0.052, p90 0.141
#   all     (880 rows): median 0.044, mean 0.157
# The GEMM exponent is fixed at 1 and the decode exponent bounded by 1 so that time = FLOPs/MFU
# grows with work (a free GEMM exponent fits to 1.14, median error 0.048, but then time falls
# with m for m < ~40).
GEMM_MFU_MAX = 0.6714
GEMM_HILL_P = 1.0
GEMM_M0 = 327.2  # the knee at K = GEMM_K_REF, N = GEMM_N_REF
GEMM_M_MIN = 8  # smallest M in the GEMM tables; below it both table lookups clamp to its MFU
# Larger GEMMs (more K per output tile, more N tiles to fill the SMs) leave the weight-streaming
# regime at a smaller M: the knee scales as (K_REF/K)^a·(N_REF/N)^b, with K and N held within
# the tables' range (K 2048–8192, N 6144–11008) rather than extrapolated
GEMM_K_REF, GEMM_N_REF = 4096.0, 8192.0
GEMM_K_EXP, GEMM_N_EXP = 0.2372, 0.3038
GEMM_K_RANGE, GEMM_N_RANGE = (2048.0, 8192.0), (6144.0, 11008.0)
DECODE_MFU_PER_GROUP = 0.003163
DECODE_HILL_Q = 0.8668
DECODE_X0 = 20539.5
PREFILL_MFU_MAX = 0.7322
PREFILL_HILL_R = 1.9331
PREFILL_S0 = 1420.2

BUILTIN_FIT_ERROR = {
    # component: (median, mean) absolute relative error, as printed by the fit script
    "gemm": (0.065, 0.083),
    "decode": (0.044, 0.170),
    "prefill": (0.028, 0.052),
}


@lru_cache(maxsize=256)
def gemm_knee_factor(k: int, n: int) -> float:
    """Factor on the GEMM knee for a (K, N) weight: ``(K_REF/K)^a · (N_REF/N)^b`` with K and N
    clamped to the measured range; 1 at the reference shape. Time = FLOPs/MFU still grows with
    K and N (a, b < 1)."""
    kc = min(max(float(k), GEMM_K_RANGE[0]), GEMM_K_RANGE[1])
    nc = min(max(float(n), GEMM_N_RANGE[0]), GEMM_N_RANGE[1])
    return (GEMM_K_REF / kc) ** GEMM_K_EXP * (GEMM_N_REF / nc) ** GEMM_N_EXP


def _hill(x: float, p: float, x0: float) -> float:
    """Saturating curve x^p/(x^p + x0^p) in (0, 1) for x > 0; increasing in x."""
    r = (x0 / x) ** p
    return 1.0 / (1.0 + r)


class MfuTableWarning(UserWarning):
    """A table lookup had to borrow another shape (a head config or TP the tables lack)."""


@dataclass(frozen=True)
class BuiltinMfu:
    """Analytic MFU curves fitted to the H100 microbenchmarks (constants above).

    ``gemm = GEMM_MFU_MAX·hill(max(m, 8))`` with the knee moved by the GEMM's K and N
    (:func:`gemm_knee_factor`; the tables' MFU at M = 512 is 0.42 for K = 2048 and 0.58 for
    K = 8192);
    ``attn_decode = DECODE_MFU_PER_GROUP·g·hill(batch·kv)`` with g = H/Hk, because decode
    attention is memory bound and its FLOPs per KV byte grow with the GQA group;
    ``attn_prefill = PREFILL_MFU_MAX·hill(seq)``. Each is increasing in its argument, so the
    attention/GEMM time (FLOPs/MFU) never falls when work grows. ``gemm_m0`` and
    ``decode_mfu_per_group`` default to the H100 BF16 fit; :func:`builtin_mfu_for` scales them
    to another GPU or precision.
    """

    num_heads: int
    num_kv_heads: int
    gemm_m0: float = GEMM_M0
    decode_mfu_per_group: float = DECODE_MFU_PER_GROUP

    def gemm(self, m: int, k: int, n: int) -> float:
        # below the tables' smallest M the MFU is held (time then scales ∝ m, like the tables)
        return max(MFU_FLOOR, GEMM_MFU_MAX * _hill(max(m, GEMM_M_MIN), GEMM_HILL_P, self.gemm_m0 * gemm_knee_factor(k, n)))

    def attn_decode(self, batch_size: int, kv_len: int) -> float:
        group = self.num_heads / self.num_kv_heads
        x = max(batch_size, 1) * max(kv_len, 1)
        return min(1.0, max(MFU_FLOOR, self.decode_mfu_per_group * group * _hill(x, DECODE_HILL_Q, DECODE_X0)))

    def attn_prefill(self, seq_len: int) -> float:
        return max(MFU_FLOOR, PREFILL_MFU_MAX * _hill(max(seq_len, 1), PREFILL_HILL_R, PREFILL_S0))


# The GPU the built-in curves were fitted on (H100 SXM; datasheet figures in the catalogue,
# read from it so that the H100's own values reproduce the fit exactly)
_REF_PEAK_FLOPS = GPU_CATALOGUE["H100"].peak_flops
_REF_BW_BYTES_S = GPU_CATALOGUE["H100"].peak_bw_bytes_s


def _gemm_ridge_rows(peak_flops: float, bw_bytes_s: float, weight_bytes: float) -> float:
    """M at which a GEMM's FLOPs (2·M·k·n) per weight byte (b·k·n) reach the GPU's ridge."""
    return peak_flops * weight_bytes / (2.0 * bw_bytes_s)


def builtin_mfu_for(
    num_heads: int,
    num_kv_heads: int,
    gemm_peak_flops: float = _REF_PEAK_FLOPS,
    attn_peak_flops: float = _REF_PEAK_FLOPS,
    bw_bytes_s: float = _REF_BW_BYTES_S,
    weight_bytes: float = 2.0,
    kv_bytes: float = 2.0,
) -> BuiltinMfu:
    """The built-in curves carried from the H100 fit to another GPU or precision by physics,
    with no table (docs/cost-model.md, "MFU on other GPUs"):

    * **GEMM knee** ∝ the GEMM's ridge in rows, ``peak · b_w / (2 · BW)``: the H100 fit's knee
      (327 rows at the reference shape) sits at 1.11× H100's ridge (295 rows), so small-M GEMMs
      cost about the time of streaming their weights at any peak/bandwidth ratio (A100: knee
      169 rows; L40S 464; FP8 weights on H100: the same 327, since both the peak and the bytes
      change by 2). The (K, N) factor of :func:`gemm_knee_factor` applies on every GPU.
    * **Decode attention** is memory-bound: its MFU is achieved bandwidth × FLOPs per KV byte
      / peak, so the H100 coefficient scales by ``(BW/peak) / (BW/peak)_H100 · 2/b_kv`` (FP8 KV
      doubles the FLOPs per byte).
    * **Prefill attention** and the GEMMs' plateau (``GEMM_MFU_MAX``) are fractions of the
      GPU's own peak, kept as fitted: FlashAttention-2 reaches ~70 % of A100's peak and
      FlashAttention-3 ~75 % of H100's (Dao 2023, Shah et al. 2024), cuBLAS large-GEMM
      efficiency is similar across these generations.

    At the H100's own BF16 figures this returns exactly the fitted constants."""
    ref_rows = _gemm_ridge_rows(_REF_PEAK_FLOPS, _REF_BW_BYTES_S, 2.0)
    rows = _gemm_ridge_rows(gemm_peak_flops, bw_bytes_s, weight_bytes)
    m0 = GEMM_M0 if rows == ref_rows else GEMM_M0 * rows / ref_rows
    intensity = (bw_bytes_s / attn_peak_flops) * (2.0 / kv_bytes)
    ref_intensity = _REF_BW_BYTES_S / _REF_PEAK_FLOPS
    per_group = DECODE_MFU_PER_GROUP if intensity == ref_intensity else DECODE_MFU_PER_GROUP * intensity / ref_intensity
    return BuiltinMfu(num_heads, num_kv_heads, m0, per_group)


# --- tables ------------------------------------------------------------------------------------


def _read_csv(path: Path, columns: dict[str, type]) -> pd.DataFrame:
    """Read ``path`` and check that ``columns`` exist and parse as numbers; ConfigError otherwise."""
    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        raise ConfigError(f"MFU table not found: {path}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ConfigError(f"MFU table {path}: malformed CSV ({err})") from None
    if df.empty:
        raise ConfigError(f"MFU table {path}: no data rows")
    for col, typ in columns.items():
        if col not in df.columns:
            raise ConfigError(f"MFU table {path}: missing column {col!r} (has: {', '.join(map(str, df.columns))})")
        values = pd.to_numeric(df[col], errors="coerce")
        if values.isna().any():
            bad = int(values.isna().to_numpy().nonzero()[0][0]) + 2  # +1 header, +1 one-based
            raise ConfigError(f"MFU table {path}: column {col!r} has a non-numeric value on line {bad}")
        if typ is int and not np.all(values == np.round(values)):
            raise ConfigError(f"MFU table {path}: column {col!r} must hold integers")
        df[col] = values.astype(typ)
    return df


@dataclass(frozen=True)
class GemmTable:
    """GEMM MFU by (k, n) shape: sorted m axis and MFU values per shape."""

    shapes: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]

    def select_shape(self, k: int, n: int) -> tuple[int, int]:
        """The benchmarked (K, N) with K ≥ k and N ≥ n nearest to (k, n); else the largest K²+N².

        Both seed versions pick the shape this way (blis-reference.md §2).
        """
        fits = [(K, N) for (K, N) in self.shapes if K >= k and N >= n]
        if fits:
            return min(fits, key=lambda s: ((s[0] - k) ** 2 + (s[1] - n) ** 2, s))
        return max(self.shapes, key=lambda s: (s[0] ** 2 + s[1] ** 2, s))


@dataclass(frozen=True)
class DecodeTable:
    """Decode attention MFU rows (batch_size, kv_len, mfu) of one head config and TP."""

    bs: np.ndarray
    kv: np.ndarray
    mfu: np.ndarray
    grid: dict[tuple[int, int], float] = field(repr=False)
    bs_axis: np.ndarray = field(repr=False)
    kv_axis: np.ndarray = field(repr=False)

    @classmethod
    def from_frame(cls, df: pd.DataFrame) -> "DecodeTable":
        bs = df["batch_size"].to_numpy(np.int64)
        kv = df["kv_len"].to_numpy(np.int64)
        mfu = df["mfu"].to_numpy(float)
        grid = {(int(b), int(k)): float(v) for b, k, v in zip(bs, kv, mfu)}
        return cls(bs, kv, mfu, grid, np.unique(bs), np.unique(kv))


@dataclass(frozen=True)
class MfuDatabase:
    """Every table of one GPU in a bench_data directory."""

    root: Path
    gpu: str
    gemm: GemmTable
    prefill: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]]  # (H,Hk,dh) -> (seq, mfu)
    decode: dict[tuple[int, int, int, int], DecodeTable]  # (H,Hk,dh,tp) -> table

    def match_config(self, num_heads: int, num_kv_heads: int, head_dim: int) -> tuple[int, int, int]:
        """The prefill head config equal to (H, Hk, dh), else the nearest by Euclidean distance."""
        target = (num_heads, num_kv_heads, head_dim)
        if target in self.prefill:
            return target
        best = min(self.prefill, key=lambda c: (sum((a - b) ** 2 for a, b in zip(c, target)), c))
        warnings.warn(
            f"MFU tables in {self.root} have no head config {'-'.join(map(str, target))} for {self.gpu}; "
            f"using the nearest, {'-'.join(map(str, best))} (leave cost.bench_data_dir unset for the built-in curves)",
            MfuTableWarning,
            stacklevel=2,
        )
        return best

    def match_decode(self, config: tuple[int, int, int], tp: int) -> tuple[int, int, int, int]:
        """Decode table key for ``config`` at ``tp``; falls back to the nearest available TP."""
        tps = sorted(k[3] for k in self.decode if k[:3] == config)
        if not tps:
            raise ConfigError(
                f"MFU tables in {self.root}: no decode table for head config {'-'.join(map(str, config))} "
                f"(prefill table exists but mha/decode/{self.gpu}/{'-'.join(map(str, config))}-tp*.csv is missing)"
            )
        best = min(tps, key=lambda t: (abs(t - tp), t))
        if best != tp:
            warnings.warn(
                f"MFU tables in {self.root} have no decode table {'-'.join(map(str, config))}-tp{tp} for {self.gpu}; using tp{best}",
                MfuTableWarning,
                stacklevel=2,
            )
        return (*config, best)

    def for_model(self, num_heads: int, num_kv_heads: int, head_dim: int, tp: int, lookup: Lookup) -> "TableMfu":
        """A provider bound to a model's nearest head config and TP."""
        config = self.match_config(num_heads, num_kv_heads, head_dim)
        dkey = self.match_decode(config, tp)
        seq, pmfu = self.prefill[config]
        return TableMfu(self.gemm, seq, pmfu, self.decode[dkey], lookup, config, dkey[3])


_DECODE_RE = re.compile(r"^(\d+)-(\d+)-(\d+)-tp(\d+)$")
_PREFILL_RE = re.compile(r"^(\d+)-(\d+)-(\d+)$")


def load_mfu_database(bench_data_dir: str | Path, gpu: str) -> MfuDatabase:
    """Read all MFU tables of ``gpu`` (folder name lower-cased) under ``bench_data_dir``.

    Raises ConfigError naming the missing directory/file, or the file and column of a
    malformed CSV.
    """
    root = Path(bench_data_dir).expanduser()
    if not root.is_dir():
        raise ConfigError(f"bench_data directory not found: {root}")
    g = gpu.lower()
    gemm_path = root / "gemm" / g / "data.csv"
    pre_dir = root / "mha" / "prefill" / g
    dec_dir = root / "mha" / "decode" / g
    for d in (gemm_path.parent, pre_dir, dec_dir):
        if not d.is_dir():
            raise ConfigError(f"bench_data {root}: no folder {d.relative_to(root)} for GPU {gpu!r}")

    gdf = _read_csv(gemm_path, {"m": int, "k": int, "n": int, "mfu": float})
    shapes: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    for (k, n), part in gdf.groupby(["k", "n"], sort=True):
        part = part.sort_values("m", kind="stable")
        shapes[(int(k), int(n))] = (part["m"].to_numpy(np.int64), part["mfu"].to_numpy(float))

    prefill: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}
    for path in sorted(pre_dir.glob("*.csv")):
        mt = _PREFILL_RE.match(path.stem)
        if not mt:
            raise ConfigError(f"MFU table {path}: file name must be <H>-<Hk>-<dh>.csv")
        df = _read_csv(path, {"seq_len": int, "mfu": float}).sort_values("seq_len", kind="stable")
        h, hk, dh = map(int, mt.groups())
        prefill[(h, hk, dh)] = (df["seq_len"].to_numpy(np.int64), df["mfu"].to_numpy(float))
    if not prefill:
        raise ConfigError(f"bench_data {root}: no prefill tables in {pre_dir}")

    decode: dict[tuple[int, int, int, int], DecodeTable] = {}
    for path in sorted(dec_dir.glob("*.csv")):
        mt = _DECODE_RE.match(path.stem)
        if not mt:
            raise ConfigError(f"MFU table {path}: file name must be <H>-<Hk>-<dh>-tp<N>.csv")
        df = _read_csv(path, {"batch_size": int, "kv_len": int, "mfu": float})
        h, hk, dh, tp = map(int, mt.groups())
        decode[(h, hk, dh, tp)] = DecodeTable.from_frame(df)
    if not decode:
        raise ConfigError(f"bench_data {root}: no decode tables in {dec_dir}")
    return MfuDatabase(root, g, GemmTable(shapes), prefill, decode)


def _lerp_clamped(x: float, xs: np.ndarray, ys: np.ndarray) -> float:
    """Linear interpolation on sorted ``xs``, clamped to the end values."""
    return float(np.interp(x, xs, ys))


def _bracket(axis: np.ndarray, x: int) -> tuple[int, int]:
    """Floor and ceiling grid values around x on a sorted axis (both the end value if outside)."""
    if x <= axis[0]:
        return int(axis[0]), int(axis[0])
    if x >= axis[-1]:
        return int(axis[-1]), int(axis[-1])
    hi = int(np.searchsorted(axis, x))
    if axis[hi] == x:
        return int(x), int(x)
    return int(axis[hi - 1]), int(axis[hi])


class TableMfu:
    """MFU from microbenchmark tables for one model's head config and TP.

    ``nearest`` (seed v2-pre, blis-reference.md §2):
      GEMM: last row with M ≤ m of the selected (K, N), else the smallest M;
      decode: nearest row (Euclidean on raw bs, kv) among rows with bs ≤ and kv ≤ target,
      else nearest overall; prefill: the floor row (seq ≤ target), else the ceiling row.
    ``interpolate`` (v2): GEMM linear in m, prefill linear in seq, decode bilinear on the
      unique bs/kv axes — all clamped at the ends; a missing decode corner reads as 0.
    Both: a result < MFU_FLOOR is replaced by the nearest row with MFU ≥ MFU_FLOOR (Euclidean
    over the raw axes). Results are memoised per argument tuple.
    """

    def __init__(
        self,
        gemm: GemmTable,
        prefill_seq: np.ndarray,
        prefill_mfu: np.ndarray,
        decode: DecodeTable,
        lookup: Lookup,
        config: tuple[int, int, int],
        decode_tp: int,
    ) -> None:
        if lookup not in ("nearest", "interpolate"):
            raise ConfigError(f"cost.mfu_lookup: unknown lookup {lookup!r}; choose nearest or interpolate")
        self._gemm = gemm
        self._pseq, self._pmfu = prefill_seq, prefill_mfu
        self._dec = decode
        self.lookup = lookup
        self.config = config
        self.decode_tp = decode_tp
        # per-instance memo tables (lru_cache on methods would share state across instances)
        self.gemm = lru_cache(maxsize=4096)(self._gemm_uncached)
        self.attn_decode = lru_cache(maxsize=65536)(self._decode_uncached)
        self.attn_prefill = lru_cache(maxsize=1024)(self._prefill_uncached)

    # GEMM
    def _gemm_uncached(self, m: int, k: int, n: int) -> float:
        ms, mfus = self._gemm.shapes[self._gemm.select_shape(k, n)]
        if self.lookup == "interpolate":
            v = _lerp_clamped(m, ms.astype(float), mfus)
        else:
            i = int(np.searchsorted(ms, m, side="right")) - 1
            v = float(mfus[max(i, 0)])
        if v < MFU_FLOOR:
            ok = mfus >= MFU_FLOOR
            if not ok.any():
                return MFU_FLOOR
            v = float(mfus[ok][np.argmin(np.abs(ms[ok] - m))])
        return v

    # decode attention
    def _decode_uncached(self, batch_size: int, kv_len: int) -> float:
        t = self._dec
        if self.lookup == "interpolate":
            b0, b1 = _bracket(t.bs_axis, batch_size)
            k0, k1 = _bracket(t.kv_axis, kv_len)
            q = {c: t.grid.get(c, 0.0) for c in ((b0, k0), (b1, k0), (b0, k1), (b1, k1))}
            tb = 0.0 if b1 == b0 else (batch_size - b0) / (b1 - b0)
            tk = 0.0 if k1 == k0 else (kv_len - k0) / (k1 - k0)
            low = q[(b0, k0)] + (q[(b1, k0)] - q[(b0, k0)]) * tb
            high = q[(b0, k1)] + (q[(b1, k1)] - q[(b0, k1)]) * tb
            v = low + (high - low) * tk
        else:
            d2 = (t.bs - batch_size).astype(float) ** 2 + (t.kv - kv_len).astype(float) ** 2
            below = (t.bs <= batch_size) & (t.kv <= kv_len)
            idx = np.flatnonzero(below) if below.any() else np.arange(len(t.bs))
            v = float(t.mfu[idx[np.argmin(d2[idx])]])
        if v < MFU_FLOOR:
            ok = np.flatnonzero(t.mfu >= MFU_FLOOR)
            if len(ok) == 0:
                return MFU_FLOOR
            d2 = (t.bs[ok] - batch_size).astype(float) ** 2 + (t.kv[ok] - kv_len).astype(float) ** 2
            v = float(t.mfu[ok[np.argmin(d2)]])
        return v

    # prefill attention
    def _prefill_uncached(self, seq_len: int) -> float:
        seq, mfu = self._pseq, self._pmfu
        if self.lookup == "interpolate":
            v = _lerp_clamped(seq_len, seq.astype(float), mfu)
        else:
            i = int(np.searchsorted(seq, seq_len, side="right")) - 1
            v = float(mfu[max(i, 0)])
        if v < MFU_FLOOR:
            ok = mfu >= MFU_FLOOR
            if not ok.any():
                return MFU_FLOOR
            v = float(mfu[ok][np.argmin(np.abs(seq[ok] - seq_len))])
        return v


def builtin_fit_errors(bench_data_dir: str | Path) -> dict[str, tuple[float, float]]:
    """(median, mean) absolute relative error of :class:`BuiltinMfu` against the H100 tables.

    Rows with MFU < MFU_FLOOR are skipped. Used by the fit script and the tests; reads files.
    """
    db = load_mfu_database(bench_data_dir, "h100")
    errs: dict[str, list[float]] = {"gemm": [], "decode": [], "prefill": []}
    any_model = BuiltinMfu(1, 1)
    for (k, n), (ms, mfus) in db.gemm.shapes.items():
        for m, y in zip(ms, mfus):
            if y >= MFU_FLOOR:
                errs["gemm"].append(abs(any_model.gemm(int(m), k, n) - y) / y)
    for (H, Hk, _dh, _tp), t in db.decode.items():
        bm = BuiltinMfu(H, Hk)
        for b, kv, y in zip(t.bs, t.kv, t.mfu):
            if y >= MFU_FLOOR:
                errs["decode"].append(abs(bm.attn_decode(int(b), int(kv)) - y) / y)
    for _cfg, (seq, mfus) in db.prefill.items():
        for s, y in zip(seq, mfus):
            if y >= MFU_FLOOR:
                errs["prefill"].append(abs(any_model.attn_prefill(int(s)) - y) / y)
    return {k: (float(np.median(v)), float(np.mean(v))) for k, v in errs.items()}


def make_mfu_provider(
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    tp: int,
    gpu: str,
    bench_data_dir: str | Path | None,
    lookup: Lookup,
    *,
    gemm_peak_flops: float = _REF_PEAK_FLOPS,
    attn_peak_flops: float = _REF_PEAK_FLOPS,
    bw_bytes_s: float = _REF_BW_BYTES_S,
    weight_bytes: float = 2.0,
    kv_bytes: float = 2.0,
) -> MfuProvider:
    """Tables from ``bench_data_dir`` for ``gpu`` if given, else the built-in curves carried to
    that GPU and precision (:func:`builtin_mfu_for`, from the keyword arguments).

    Tables are loaded once per (directory, GPU) per process (cached: they are immutable).
    """
    if bench_data_dir is None:
        return builtin_mfu_for(num_heads, num_kv_heads, gemm_peak_flops, attn_peak_flops, bw_bytes_s, weight_bytes, kv_bytes)
    db = _cached_database(str(Path(bench_data_dir).expanduser().resolve()), gpu.lower())
    return db.for_model(num_heads, num_kv_heads, head_dim, tp, lookup)


@lru_cache(maxsize=8)
def _cached_database(root: str, gpu: str) -> MfuDatabase:
    return load_mfu_database(root, gpu)


__all__ = [
    "MFU_FLOOR",
    "BuiltinMfu",
    "MfuDatabase",
    "MfuProvider",
    "MfuTableWarning",
    "TableMfu",
    "builtin_fit_errors",
    "builtin_mfu_for",
    "load_mfu_database",
    "make_mfu_provider",
]
