"""Workloads: the requests of a run (sizes, prefix groups, and trace send offsets).

Synthetic lengths come from :class:`~sim.config.LengthDist` (``fixed``; ``normal`` clipped to
[min, max] then rounded, as BLIS and guidellm's synthetic data; ``uniform`` integers in
[min, max]). A shared prefix of ``prefix_tokens`` is *prepended* to each synthetic prompt, so
``prompt_tokens`` includes it; with ``prefix_groups`` > 1 each request draws its group
uniformly. A trace (a per-request CSV such as ``ground_truth/requests/<exp>.csv``) gives
the lengths (its prompt counts already include any prefix) and send offsets for replay.

With ``prompt_pool`` = K the requests cycle through K distinct prompts, as inference-perf's
``shared_prefix`` data does (it pre-generates num_groups × num_prompts_per_group prompts and
sends prompt ``i mod K`` as request ``i``): request ``i`` gets ``prompt_id = i mod K`` (a
trace's ``request_index`` column, when present, takes the place of ``i``, so a later stage
continues the cycle). Synthetic lengths are drawn once per pool prompt; each pool prompt
belongs to one prefix group (groups dealt out evenly, in a shuffled order).

Randomness: named streams ``workload.prompt``, ``workload.output``, ``workload.prefix``,
``workload.priority``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sim.config import LengthDist, WorkloadConfig
from sim.entities import Request
from sim.errors import ConfigError
from sim.rng import RandomStreams

DEFAULT_NUM_SYNTHETIC_REQUESTS = 100


WORKLOAD_CHUNK = 65536  # requests drawn at a time by a synthetic workload


class ChunkedColumns:
    """Per-request columns drawn ``chunk`` requests at a time, in id order, on demand.

    ``draw(m)`` returns the next ``m`` requests' columns (a dict of int64 arrays); it consumes
    its random streams in order, so the columns are the same whatever the chunk size (numpy's
    generators give the same values drawn in pieces as at once). A run reads the requests it
    sends, so a run that ends early (a horizon) never draws the others; the rows of requests
    never sent are read once at the end with :meth:`iter_from`, without being kept.
    """

    def __init__(self, n: int, draw, chunk: int = WORKLOAD_CHUNK) -> None:
        if chunk < 1:
            raise ValueError("chunk must be >= 1")
        self.n = n
        self.chunk = chunk
        self._draw = draw
        self._chunks: list[dict[str, np.ndarray]] = []  # drawn and kept, in order
        self._streamed = False  # iter_from drew past the kept chunks: nothing more can be kept

    @property
    def num_drawn(self) -> int:
        """Requests drawn and kept so far."""
        return min(self.n, len(self._chunks) * self.chunk)

    def _chunk(self, k: int) -> dict[str, np.ndarray]:
        while len(self._chunks) <= k:
            if self._streamed:
                raise RuntimeError("workload columns read after the requests never sent were streamed out")
            lo = len(self._chunks) * self.chunk
            self._chunks.append(self._draw(min(self.chunk, self.n - lo)))
        return self._chunks[k]

    def value(self, name: str, i: int) -> int:
        if not 0 <= i < self.n:
            raise IndexError(f"request {i} out of range 0..{self.n - 1}")
        return int(self._chunk(i // self.chunk)[name][i % self.chunk])

    def array(self, name: str) -> np.ndarray:
        """The whole column (draws every request: for inspection and small runs)."""
        if self.n == 0:
            return np.empty(0, dtype=np.int64)
        return np.concatenate([self._chunk(k)[name] for k in range(-(-self.n // self.chunk))])

    def iter_from(self, lo: int):
        """``(first id, columns)`` of requests ``lo..n-1`` in pieces: the kept chunks' rows,
        then the rest drawn and dropped piece by piece (bounded memory). Call once, last."""
        k = lo // self.chunk
        while lo < self.n:
            if k < len(self._chunks):
                cols = self._chunks[k]
            else:
                self._streamed = True
                cols = self._draw(min(self.chunk, self.n - k * self.chunk))
            off = lo - k * self.chunk
            yield lo, {name: col[off:] for name, col in cols.items()}
            lo = (k + 1) * self.chunk
            k += 1


class _LazyColumn:
    """One column of :class:`ChunkedColumns` behaving like a read-only int64 array for
    ``col[i]``, ``len(col)``, numpy conversion and array methods (these draw every request)."""

    def __init__(self, store: ChunkedColumns, name: str) -> None:
        self.store, self.name = store, name

    def __len__(self) -> int:
        return self.store.n

    def __getitem__(self, i):
        if isinstance(i, (int, np.integer)):
            return self.store.value(self.name, int(i))
        return self.store.array(self.name)[i]

    def __array__(self, dtype=None, copy=None):
        a = self.store.array(self.name)
        return a if dtype is None else a.astype(dtype)

    def __getattr__(self, attr: str):
        # array methods (sum, mean, max, ...) on the whole column, for inspection
        if attr.startswith("__") or attr in ("store", "name"):
            raise AttributeError(attr)
        return getattr(self.store.array(self.name), attr)


@dataclass
class Workload:
    """The requests of a run as arrays, in send order (request id = index).

    Request objects are created lazily by :meth:`iter_requests`, so a million-request run
    holds only the requests in flight. ``offsets_s`` are trace send offsets when the source
    has them.
    """

    prompt_tokens: np.ndarray | _LazyColumn
    output_tokens: np.ndarray | _LazyColumn
    prefix_groups: np.ndarray | _LazyColumn
    prefix_tokens: np.ndarray | _LazyColumn
    priorities: np.ndarray | _LazyColumn
    offsets_s: np.ndarray | None = None
    prompt_ids: np.ndarray | None = None  # pool prompt of each request (prompt_pool), else None
    created: int = 0
    columns: ChunkedColumns | None = None  # a synthetic workload's lazily drawn columns

    def __len__(self) -> int:
        return len(self.prompt_tokens)

    def not_sent_columns(self, lo: int):
        """``(first id, {prompt_tokens, output_tokens, prefix_tokens})`` pieces of requests
        ``lo..n-1`` (those never sent), in id order, in bounded memory. Call once, last."""
        names = ("prompt_tokens", "output_tokens", "prefix_tokens")
        if self.columns is not None:
            for first, cols in self.columns.iter_from(lo):
                yield first, {k: cols[k] for k in names}
            return
        for first in range(lo, len(self), WORKLOAD_CHUNK):
            hi = min(len(self), first + WORKLOAD_CHUNK)
            yield first, {k: np.asarray(getattr(self, k)[first:hi], dtype=np.int64) for k in names}

    def make_request(self, i: int) -> Request:
        group = int(self.prefix_groups[i])
        return Request(
            request_id=i,
            prompt_tokens=int(self.prompt_tokens[i]),
            output_tokens=int(self.output_tokens[i]),
            prefix_group=group,
            prefix_tokens=int(self.prefix_tokens[i]) if group >= 0 else 0,
            priority=int(self.priorities[i]),
            prompt_id=int(self.prompt_ids[i]) if self.prompt_ids is not None else -1,
        )

    def pool_prompts(self) -> dict[int, Request]:
        """One request per pool prompt that occurs, keyed by ``prompt_id`` (its first
        occurrence; ids, lengths and groups as sent). Empty without a prompt pool."""
        if self.prompt_ids is None:
            return {}
        ids, first = np.unique(self.prompt_ids, return_index=True)
        return {int(q): self.make_request(int(i)) for q, i in zip(ids, first)}

    def iter_requests(self) -> Iterator[Request]:
        """Requests 0..n-1 in order, created on demand (``created`` counts them)."""
        for i in range(len(self)):
            self.created = i + 1
            yield self.make_request(i)

    @property
    def requests(self) -> list[Request]:
        """All requests as new objects (for inspection; simulations use :meth:`iter_requests`)."""
        return [self.make_request(i) for i in range(len(self))]


def sample_lengths(dist: LengthDist, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` integer lengths >= 1 drawn from ``dist``."""
    if dist.dist == "fixed":
        assert dist.value is not None  # LengthDist requires it for 'fixed'
        return np.full(n, int(dist.value), dtype=np.int64)
    if dist.dist == "uniform":
        return rng.integers(dist.min, dist.max + 1, size=n, dtype=np.int64)
    assert dist.mean is not None  # LengthDist requires it for 'normal'
    x = rng.normal(float(dist.mean), float(dist.stdev), size=n) if dist.stdev > 0 else np.full(n, float(dist.mean))
    return np.maximum(np.rint(np.clip(x, dist.min, dist.max)), 1).astype(np.int64)


TRACE_REQUIRED_COLUMNS = ("prompt_tokens", "output_tokens")
# Largest token count a trace cell may hold: far beyond any model's context, and small enough
# that float64 holds it exactly and int64 sums of many requests cannot overflow.
TRACE_MAX_TOKENS = 2**40


def _check_csv_shape(p: Path) -> None:
    """Every row has as many fields as the header, and the header names each column once."""
    import csv

    try:
        with p.open(newline="", encoding="utf-8") as fh:
            rows = csv.reader(fh)
            header = next(rows, None)
            if header is None:
                raise ConfigError(f"workload.trace.path: {p} is empty; it needs a header line and one row per request")
            seen: set[str] = set()
            for name in header:
                if name in seen:
                    raise ConfigError(f"workload.trace.path: {p}: column {name!r} appears twice in the header; name each column once")
                seen.add(name)
            for line_no, row in enumerate(rows, start=2):
                if row and len(row) != len(header):
                    raise ConfigError(f"workload.trace.path: {p}: line {line_no} has {len(row)} fields, the header has {len(header)}")
    except (UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(f"workload.trace.path: cannot read {p} as CSV: {err}") from None


def _int_column(p: Path, df: pd.DataFrame, col: str) -> pd.Series:
    vals = pd.to_numeric(df[col].astype(str).str.strip(), errors="coerce")
    bad = vals.isna() | (vals != np.floor(vals))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ConfigError(f"workload.trace.path: {p}: column {col} must hold integers; row {row} has {df[col].iloc[row]!r}")
    return vals.astype(np.int64)


def load_trace(path: str | Path, benchmark_index: int | None = None, only_ok: bool = True) -> pd.DataFrame:
    """Read a per-request CSV: columns ``prompt_tokens``, ``output_tokens`` (required) and
    ``start_offset_s`` (needed for replay), optionally ``benchmark_index`` and ``ok``.

    Returns rows sorted by send offset (stable), ``start_offset_s`` in seconds after the
    earliest row kept (computed exactly, also from wall-clock timestamps). Raises ConfigError
    naming the file and the problem for a missing file, missing columns, or invalid values.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"workload.trace.path: file not found: {p}")
    _check_csv_shape(p)
    try:
        # the columns read here as text: pandas would read "true" as a 1 (they are parsed below,
        # strictly); no implicit index column (a row with one field too many is refused above)
        text = dict.fromkeys((*TRACE_REQUIRED_COLUMNS, "start_offset_s", "benchmark_index", "ok"), str)
        df = pd.read_csv(p, index_col=False, dtype=text)
    except Exception as err:  # pandas raises many types for malformed CSV
        raise ConfigError(f"workload.trace.path: cannot read {p} as CSV: {err}") from None
    missing = [c for c in TRACE_REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ConfigError(
            f"workload.trace.path: {p} lacks column(s) {', '.join(missing)}; it needs {', '.join(TRACE_REQUIRED_COLUMNS)} (and start_offset_s to replay)"
        )
    for col in ("benchmark_index", "ok"):
        if col in df.columns:
            df = df.assign(**{col: _int_column(p, df, col)})
    if benchmark_index is not None:
        if "benchmark_index" not in df.columns:
            raise ConfigError(f"workload.trace.benchmark_index: {p} has no benchmark_index column")
        df = df[df["benchmark_index"] == benchmark_index]
        if df.empty:
            raise ConfigError(f"workload.trace.benchmark_index: {p} has no rows with benchmark_index {benchmark_index}")
    if only_ok and "ok" in df.columns:
        df = df[df["ok"] == 1]
    if df.empty:
        raise ConfigError(f"workload.trace.path: {p} has no usable rows")
    for col in TRACE_REQUIRED_COLUMNS:
        vals = pd.to_numeric(df[col].astype(str).str.strip(), errors="coerce").astype(float)
        # inf and values past TRACE_MAX_TOKENS would not survive the int64 cast below
        bad = vals.isna() | ~np.isfinite(vals) | (vals < 1) | (vals > TRACE_MAX_TOKENS) | (vals != np.floor(vals))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ConfigError(f"workload.trace.path: {p}: column {col} must hold integers >= 1 and <= {TRACE_MAX_TOKENS}; row {row} has {df[col].iloc[row]!r}")
        df = df.assign(**{col: vals.astype(np.int64)})
    if "start_offset_s" in df.columns:
        df = df.assign(start_offset_s=_relative_offsets(p, df["start_offset_s"])).sort_values("start_offset_s", kind="stable")
    return df.reset_index(drop=True)


def _relative_offsets(p: Path, text: pd.Series) -> np.ndarray:
    """The ``start_offset_s`` cells (text) as seconds after the earliest one. Large offsets
    (a trace of wall-clock timestamps, 1e9 s and up) are subtracted in decimal, so requests
    keep their microsecond spacing that float64 values of that size no longer hold."""
    cells = text.astype(str).str.strip()
    bad_type = cells.str.lower().isin(("true", "false"))  # not numbers, whatever pandas thinks
    off = pd.to_numeric(cells.where(~bad_type), errors="coerce")
    if off.isna().any() or (off < 0).any() or not np.isfinite(off).all():
        row = int(np.flatnonzero((off.isna() | ~np.isfinite(off) | (off < 0)).to_numpy())[0])
        raise ConfigError(f"workload.trace.path: {p}: start_offset_s must be finite numbers >= 0; row {row} has {text.iloc[row]!r}")
    values = cells.astype(float).to_numpy()  # Python's correctly rounded parse of each cell
    if values.min() == 0.0:
        return values  # already relative: each value is its cell, correctly rounded
    # each offset minus the earliest, computed exactly and rounded once (a float subtraction
    # would round twice; of wall-clock timestamps little but the seconds would be left)
    from decimal import Decimal

    exact = [Decimal(c) for c in cells.tolist()]
    first = min(exact)
    return np.array([float(d - first) for d in exact], dtype=float)


def _lazy_synthetic(cfg: WorkloadConfig, n: int, streams: RandomStreams, chunk: int) -> Workload:
    """A synthetic workload without a prompt pool: every column drawn per request from its
    own stream, so it is drawn a chunk at a time as the run reads it (the same values as
    drawing all ``n`` at once)."""
    rng_prompt, rng_output = streams.get("workload.prompt"), streams.get("workload.output")
    rng_prefix = streams.get("workload.prefix")
    rng_priority = streams.get("workload.priority") if cfg.priority_levels > 1 else None

    def draw(m: int) -> dict[str, np.ndarray]:
        prompts = sample_lengths(cfg.prompt_tokens, m, rng_prompt) + cfg.prefix_tokens
        outputs = sample_lengths(cfg.output_tokens, m, rng_output)
        if cfg.prefix_tokens > 0:
            groups = rng_prefix.integers(0, cfg.prefix_groups, size=m) if cfg.prefix_groups > 1 else np.zeros(m, dtype=np.int64)
        else:
            groups = np.full(m, -1, dtype=np.int64)
        priorities = rng_priority.integers(0, cfg.priority_levels, size=m) if rng_priority is not None else np.zeros(m, dtype=np.int64)
        return {
            "prompt_tokens": np.asarray(prompts, dtype=np.int64),
            "output_tokens": np.asarray(outputs, dtype=np.int64),
            "prefix_groups": np.asarray(groups, dtype=np.int64),
            "prefix_tokens": np.where(groups >= 0, cfg.prefix_tokens, 0).astype(np.int64),
            "priorities": np.asarray(priorities, dtype=np.int64),
        }

    store = ChunkedColumns(n, draw, chunk)
    cols = {k: _LazyColumn(store, k) for k in ("prompt_tokens", "output_tokens", "prefix_groups", "prefix_tokens", "priorities")}
    return Workload(cols["prompt_tokens"], cols["output_tokens"], cols["prefix_groups"], cols["prefix_tokens"], cols["priorities"], columns=store)


def build_workload(cfg: WorkloadConfig, streams: RandomStreams, chunk: int = WORKLOAD_CHUNK) -> Workload:
    """The requests of a run, ids 0..n-1 in send order. A synthetic workload without a prompt
    pool is drawn ``chunk`` requests at a time as the run reads it (same values for any
    ``chunk``); trace and pool workloads are arrays."""
    prefix_rng = streams.get("workload.prefix")
    pool = cfg.prompt_pool
    prompt_ids: np.ndarray | None = None
    if cfg.trace is not None:
        df = load_trace(cfg.trace.path, cfg.trace.benchmark_index, cfg.trace.only_ok)
        if cfg.num_requests is not None:
            df = df.iloc[: cfg.num_requests]
        prompts = df["prompt_tokens"].to_numpy()
        outputs = df["output_tokens"].to_numpy()
        # relative to the earliest of the rows kept (load_trace made them relative, exactly)
        offsets = df["start_offset_s"].to_numpy(dtype=float) if "start_offset_s" in df.columns else None
        if offsets is not None and len(offsets):
            offsets = offsets - offsets.min()
        prefix = np.minimum(cfg.prefix_tokens, prompts)
        if pool is not None:
            seq = _trace_sequence_numbers(df, cfg.trace.path)
            prompt_ids = seq % pool
    else:
        n = cfg.num_requests or DEFAULT_NUM_SYNTHETIC_REQUESTS
        if pool is None:
            return _lazy_synthetic(cfg, n, streams, chunk)
        else:
            # lengths belong to the pool prompt (inference-perf draws them per prompt)
            prompt_ids = np.arange(n, dtype=np.int64) % pool
            unique = sample_lengths(cfg.prompt_tokens, pool, streams.get("workload.prompt"))[prompt_ids]
            outputs = sample_lengths(cfg.output_tokens, pool, streams.get("workload.output"))[prompt_ids]
        prompts = unique + cfg.prefix_tokens
        prefix = np.full(n, cfg.prefix_tokens, dtype=np.int64)
        offsets = None
    n = len(prompts)
    if cfg.prefix_tokens > 0 and prompt_ids is not None and pool is not None:  # pool set iff prompt_ids
        # a pool prompt keeps its group: groups dealt out evenly over the pool, shuffled
        pool_groups = prefix_rng.permutation(np.arange(pool, dtype=np.int64) % cfg.prefix_groups)
        groups = pool_groups[prompt_ids]
    elif cfg.prefix_tokens > 0:
        groups = prefix_rng.integers(0, cfg.prefix_groups, size=n) if cfg.prefix_groups > 1 else np.zeros(n, dtype=np.int64)
    else:
        groups = np.full(n, -1, dtype=np.int64)
    if cfg.priority_levels > 1:
        priorities = streams.get("workload.priority").integers(0, cfg.priority_levels, size=n)
    else:
        priorities = np.zeros(n, dtype=np.int64)
    prefix = np.where(groups >= 0, prefix, 0)
    return Workload(
        np.asarray(prompts, dtype=np.int64),
        np.asarray(outputs, dtype=np.int64),
        np.asarray(groups, dtype=np.int64),
        np.asarray(prefix, dtype=np.int64),
        np.asarray(priorities, dtype=np.int64),
        offsets,
        None if prompt_ids is None else np.asarray(prompt_ids, dtype=np.int64),
    )


def _trace_sequence_numbers(df: pd.DataFrame, path: str | Path) -> np.ndarray:
    """Each trace row's position in the harness's request sequence: its ``request_index``
    column when present (a later stage continues the count), else its row position."""
    if "request_index" not in df.columns:
        return np.arange(len(df), dtype=np.int64)
    idx = pd.to_numeric(df["request_index"], errors="coerce")
    if idx.isna().any() or not np.isfinite(idx).all() or (idx < 0).any() or (idx != np.floor(idx)).any():
        raise ConfigError(f"workload.trace.path: {path}: column request_index must hold integers >= 0 (used by workload.prompt_pool)")
    return idx.to_numpy(dtype=np.int64)
