"""Result files of the command line (the only module besides scripts that writes files).

Every file is written atomically: to a temporary file in the same folder, flushed, then
renamed over the target, so an interrupted run never leaves a half-written result. Outputs
are deterministic: same config ⇒ byte-identical files (no wall-clock time in them).

Layout of a results directory::

    config.yaml            the effective config (after file, format conversion and flags)
    summary.json           per-point summaries, derived limits, sweep/capacity findings
    benchmarks.json        guidellm-compatible report
    runs/<label>/requests.parquet, steps.parquet
    plots/*.png
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from sim.config import OPEN_LOOP_STRATEGIES
from sim.core.simulation import SimResult
from sim.version import __version__

_SAFE = re.compile(r"[^A-Za-z0-9._@+=-]")


def safe_file_part(text: str, max_chars: int = 80) -> str:
    """``text`` as one file-name component: characters outside ``A-Z a-z 0-9 . _ @ + = -``
    become ``_``, no leading dot, at most ``max_chars``; when anything changed, a short hash
    of the original keeps distinct texts distinct. A label from data can never name a path
    outside the result folder."""
    clean = _SAFE.sub("_", str(text)).lstrip(".")[:max_chars]
    if clean != text or not clean:
        clean = f"{clean}-{hashlib.sha256(str(text).encode()).hexdigest()[:8]}"
    return clean


def _file_mode() -> int:
    """The mode a plain ``open()`` would give a new file: 0o666 less the umask (mkstemp's
    temporary files are 0o600, which would leave every result readable by its owner only)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename), with the mode a plain
    ``open()`` would give it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf → None, numpy scalars → Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def json_text(obj: Any) -> str:
    """``obj`` as the indented JSON the result files hold (NaN/inf → null), for stdout."""
    return json.dumps(_clean(obj), indent=2, sort_keys=False)


def write_json(path: Path, obj: Any, indent: int | None = 2, clean: bool = True) -> None:
    """``obj`` as JSON (NaN/inf → null). ``indent=None`` writes it compact, with the C encoder:
    for large reports (``indent`` forces Python's pure-Python encoder, several times slower).
    ``clean=False`` for an object that is JSON-ready already (no numpy scalars, no NaN/inf:
    the encoder is then told to refuse them rather than write invalid JSON)."""
    text = json.dumps(_clean(obj), indent=indent) if clean else json.dumps(obj, indent=indent, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())


def write_yaml(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, yaml.safe_dump(_clean(obj), sort_keys=False).encode())


def write_parquet(path: Path, df) -> None:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf, compression="zstd")
    atomic_write_bytes(path, buf.getvalue())


def write_figure(path: Path, fig) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_run_tables(out: Path, label: str, res: SimResult) -> None:
    d = out / "runs" / label
    write_parquet(d / "requests.parquet", res.requests)
    write_parquet(d / "steps.parquet", res.steps)
    if res.replicas is not None:
        write_parquet(d / "replicas.parquet", res.replicas)


def run_entry(label: str, res: SimResult, offered_rps: float | None = None, stable: bool | None = None) -> dict:
    """One point of summary.json."""
    a = res.config.arrival
    return {
        "label": label,
        "strategy": a.strategy,
        "offered_rate_rps": offered_rps if offered_rps is not None else (a.rate_rps if a.strategy in OPEN_LOOP_STRATEGIES else None),
        "concurrency": a.concurrency,
        "stable": stable,
        "derived": res.derived,
        "summary": res.summary,
        **({"replicas": res.replicas.to_dict(orient="records")} if res.replicas is not None else {}),
    }


def cost_label(cfg) -> str:
    """``roofline/smooth-wa, calibration h100`` — and ``(fitted on H100, transferred)`` when the
    run's GPU is another — for table titles."""
    from sim.cost.calibration import calibration_origin, effective_formula

    text = f"{cfg.cost.model}/{effective_formula(cfg)}" if cfg.cost.model == "roofline" else cfg.cost.model
    name, fitted = calibration_origin(cfg)
    if name is None:
        return text + (", seed knobs (no calibration)" if cfg.cost.model == "roofline" else "")
    return f"{text}, calibration {name}" + (f" (fitted on {fitted}, transferred)" if fitted else "")


def header(cfg) -> dict:
    from sim.cost.calibration import calibration_origin, effective_formula

    name, fitted = calibration_origin(cfg)
    return {
        "servesim_version": __version__,
        "model": cfg.model,
        "gpu": cfg.gpu,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "cost_model": cfg.cost.model,
        "formula": effective_formula(cfg),
        "gemm_m": cfg.cost.gemm_m,
        "calibration": name,
        "calibration_transferred_from": fitted,
        "policy": cfg.scheduler.policy,
        "seed": cfg.seed,
        **(_cluster_header(cfg.cluster) if cfg.cluster is not None else {}),
    }


def _cluster_header(cluster) -> dict:
    """A fleet's whole shape in summary.json headers: groups (names defaulted to g0, g1, …),
    router, admission and KV link, so runs that differ only there can be told apart."""
    data = cluster.model_dump(mode="json")
    for i, g in enumerate(data["groups"]):
        g["name"] = g["name"] or f"g{i}"
    return {"cluster": data}


class StreamingParquet:
    """Parquet files written chunk by chunk for streaming runs; atomic as a whole.

    Chunks go to hidden temporary files next to the targets; :meth:`commit` renames them into
    place, :meth:`abort` deletes them (so an interrupted run leaves no partial result file).
    Use as the ``spill(kind, frame)`` callable of a streaming simulation. A fleet's step
    chunks (a ``replica`` column first) arrive interleaved across replicas; each replica's go
    to a part file of their own, joined in replica order at :meth:`commit` one row group at a
    time, so the file holds the rows in the order of the in-memory table.
    """

    def __init__(self, targets: dict[str, Path]) -> None:
        self.targets = targets
        self.tmp = {k: p.parent / f".{p.name}.partial" for k, p in targets.items()}
        self.writers: dict[str, pq.ParquetWriter] = {}
        self.parts: dict[tuple[str, int], tuple[Path, pq.ParquetWriter]] = {}  # (kind, replica) -> part
        for p in targets.values():
            p.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, kind: str, frame) -> None:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if kind == "steps" and frame.columns[0] == "replica" and len(frame):
            replicas = frame["replica"].unique()
            if len(replicas) != 1:
                raise ValueError("a fleet's step chunk holds one replica's steps")
            key = (kind, int(replicas[0]))
            part = self.parts.get(key)
            if part is None:
                path = self.tmp[kind].with_name(f"{self.tmp[kind].name}.{key[1]}")
                part = self.parts[key] = (path, pq.ParquetWriter(path, table.schema, compression="zstd"))
            part[1].write_table(table)
            return
        w = self.writers.get(kind)
        if w is None:
            w = self.writers[kind] = pq.ParquetWriter(self.tmp[kind], table.schema, compression="zstd")
        w.write_table(table)

    def _join_parts(self) -> None:
        """Each kind's replica parts, appended in replica order to its temporary file."""
        for _, w in self.parts.values():
            w.close()
        for kind in dict.fromkeys(k for k, _ in self.parts):
            keys = sorted(k for k in self.parts if k[0] == kind)
            w = self.writers.get(kind)
            for key in keys:
                path = self.parts[key][0]
                pf = pq.ParquetFile(path)
                for i in range(pf.num_row_groups):
                    table = pf.read_row_group(i)
                    if w is None:
                        w = self.writers[kind] = pq.ParquetWriter(self.tmp[kind], table.schema, compression="zstd")
                    w.write_table(table)
                pf.close()
                os.unlink(path)
                del self.parts[key]

    def commit(self) -> None:
        self._join_parts()
        for kind, w in self.writers.items():
            w.close()
            os.replace(self.tmp[kind], self.targets[kind])
        self.writers = {}

    def abort(self) -> None:
        for kind, w in self.writers.items():
            w.close()
        for path, w in self.parts.values():
            w.close()
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self.parts = {}
        for tmp in self.tmp.values():
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        self.writers = {}


def write_config_yaml(out: Path, cfg, fmt: str) -> None:
    """``config.yaml``: the effective config and the format it was read from."""
    write_yaml(out / "config.yaml", {"source_format": fmt, **cfg.model_dump(mode="json")})


def write_guidellm(out: Path, results: list, cfg, sample_requests: int | None | str = "default") -> None:
    """``benchmarks.json``: the guidellm-compatible report of ``results``; ``sample_requests``
    as :func:`~sim.records.guidellm.build_report` (``"default"``: its default cap)."""
    from sim.records.guidellm import DEFAULT_SAMPLE_REQUESTS, build_report

    cap = DEFAULT_SAMPLE_REQUESTS if sample_requests == "default" else sample_requests
    assert cap is None or isinstance(cap, int)
    # megabytes: compact (the C encoder), and build_report's dict is JSON-ready already
    write_json(out / "benchmarks.json", build_report(results, model=cfg.model, sample_requests=cap), indent=None, clean=False)
