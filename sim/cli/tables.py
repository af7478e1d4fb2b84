"""Terminal tables (rich) of run summaries and prediction intervals."""

from __future__ import annotations

from typing import Any

from rich.console import JustifyMethod
from rich.table import Table


def fmt_cell(x: Any, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if x != x:
            return "-"
        return f"{x:.{digits}f}"
    return str(x)


def deployment_label(cfg) -> str:
    """``1x H100`` for one server; ``4× H100 TP1 + 2× L40S TP2 (least-outstanding)`` for a fleet."""
    if cfg.cluster is None:
        return f"{cfg.tensor_parallel_size}x {cfg.gpu}"
    parts = []
    for g in cfg.cluster.groups:
        role = "" if g.role == "mixed" else f" {g.role}"
        parts.append(f"{g.replicas}× {g.gpu or cfg.gpu} TP{g.tensor_parallel_size or cfg.tensor_parallel_size}{role}")
    return " + ".join(parts) + f" ({cfg.cluster.router.policy})"


# the full table needs about 150 columns; below this many it keeps the columns that answer
# "does it keep up, and how slow": offered and achieved rate, p99 latencies, stability
COMPACT_BELOW_COLUMNS = 140


def summary_table(rows: list[tuple[str, Any, dict, bool | str | None]], title: str, width: int | None = None) -> Table:
    """rows: (label, offered rate, summary, stable: yes / NO / '-' for None / a given word). ``width``: the terminal's columns; a
    narrow one gets the compact table (no cell cut to "…"); the files hold every metric."""
    compact = width is not None and width < COMPACT_BELOW_COLUMNS
    t = Table(title=title, title_justify="left", header_style="bold")
    cols: list[tuple[str, JustifyMethod, Any]] = [
        ("point", "left", lambda label, offered, s, mixed, stable: label),
        ("offered r/s", "right", lambda label, offered, s, mixed, stable: fmt_cell(offered, 2)),
        ("req/s", "right", lambda label, offered, s, mixed, stable: fmt_cell(s["requests_per_s"], 2)),
        ("out tok/s", "right", lambda label, offered, s, mixed, stable: fmt_cell(s["output_tokens_per_s"], 0)),
        ("TTFT mean", "right", lambda label, offered, s, mixed, stable: fmt_cell(s["ttft_mean_ms"])),
        ("TTFT p99", "right", lambda label, offered, s, mixed, stable: fmt_cell(s["ttft_p99_ms"])),
        ("TPOT mean", "right", lambda label, offered, s, mixed, stable: fmt_cell(s["tpot_mean_ms"], 2)),
        ("TPOT p99", "right", lambda label, offered, s, mixed, stable: fmt_cell(s["tpot_p99_ms"], 2)),
        ("E2E mean", "right", lambda label, offered, s, mixed, stable: fmt_cell(s["e2e_mean_ms"], 0)),
        ("E2E p99", "right", lambda label, offered, s, mixed, stable: fmt_cell(s["e2e_p99_ms"], 0)),
        ("mixed %", "right", lambda label, offered, s, mixed, stable: fmt_cell(mixed)),
        ("preempt", "right", lambda label, offered, s, mixed, stable: str(s["num_preemptions"])),
        (
            "stable",
            "center",
            lambda label, offered, s, mixed, stable: stable if isinstance(stable, str) else "-" if stable is None else ("yes" if stable else "NO"),
        ),
    ]
    if compact:
        keep = ("point", "offered r/s", "req/s", "TTFT p99", "TPOT p99", "E2E p99", "stable")
        cols = [c for c in cols if c[0] in keep]
    for name, just, _ in cols:
        t.add_column(name, justify=just, no_wrap=name == "point")
    for label, offered, s, stable in rows:
        mixed = 100.0 * s["num_mixed_steps"] / s["num_steps"] if s["num_steps"] else float("nan")
        t.add_row(*(cell(label, offered, s, mixed, stable) for _, _, cell in cols))
    t.caption = "latencies in ms; req/s and tok/s over first arrival → last finish" + (
        "; a narrow terminal shows p99s only (every metric is in summary.json)" if compact else ""
    )
    return t


def interval_table(rows: list[tuple[str, dict, dict]], title: str) -> Table:
    """rows: (label, summary, intervals) → mean latencies with their intervals."""
    t = Table(title=title, title_justify="left", header_style="bold")
    t.add_column("point")
    keys = ("ttft_mean_ms", "tpot_mean_ms", "e2e_mean_ms")
    for k in keys:
        t.add_column(k + " [90 % PI]", justify="right")
    for label, s, iv in rows:
        cells = []
        for k in keys:
            lo, hi = iv.get(k, (float("nan"), float("nan")))
            cells.append(f"{fmt_cell(s[k], 1)} [{fmt_cell(lo, 1)}, {fmt_cell(hi, 1)}]")
        t.add_row(label, *cells)
    return t


REPLICA_ROWS_MAX = 16  # beyond this many replicas the console shows each group's spread instead


# the full replica table needs about 120 columns; below that it keeps who, how loaded, how fast
REPLICA_COMPACT_BELOW_COLUMNS = 120
_REPLICA_COMPACT = ("replica", "group", "GPU", "TP", "routed", "busy %", "TTFT p99", "E2E p99")


def replica_table(replicas, title: str, width: int | None = None) -> Table:
    """One row per replica of a fleet (``SimResult.replicas``); for more than
    ``REPLICA_ROWS_MAX`` replicas, rows of the replicas with the fewest and most requests routed
    in each group (the whole table is in ``replicas.parquet``). ``width``: the terminal's
    columns; a narrow one gets the compact columns (no cell cut to "…")."""
    compact = width is not None and width < REPLICA_COMPACT_BELOW_COLUMNS
    if len(replicas) > REPLICA_ROWS_MAX:
        import pandas as pd

        picks = []
        for _, g in replicas.groupby("group", sort=False):
            order = g.sort_values(["requests_routed", "replica"], kind="stable")
            picks.extend([order.iloc[0], order.iloc[-1]] if len(order) > 1 else [order.iloc[0]])
        shown = pd.DataFrame(picks).drop_duplicates("replica")
        t = _replica_rows(shown, title, compact)
        t.caption = (
            f"{len(replicas)} replicas: per group the least and the most loaded (requests routed); all in replicas.parquet. "
            "busy % = share of the run's span the replica was stepping; latencies in ms of the requests that finished there"
        )
        return t
    return _replica_rows(replicas, title, compact)


def _replica_rows(replicas, title: str, compact: bool = False) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold")
    cols: list[tuple[str, JustifyMethod, Any]] = [
        ("replica", "right", lambda r: str(r.replica)),
        ("group", "left", lambda r: str(r.group)),
        ("role", "left", lambda r: str(r.role)),
        ("GPU", "left", lambda r: str(r.gpu)),
        ("TP", "right", lambda r: str(r.tensor_parallel_size)),
        ("routed", "right", lambda r: str(r.requests_routed)),
        ("finished", "right", lambda r: str(r.finished)),
        ("busy %", "right", lambda r: fmt_cell(100.0 * r.busy_fraction)),
        ("steps", "right", lambda r: str(r.num_steps)),
        ("mixed %", "right", lambda r: fmt_cell(100.0 * r.mixed_steps / r.num_steps if r.num_steps else float("nan"))),
        ("preempt", "right", lambda r: str(r.preemptions)),
        ("TTFT p99", "right", lambda r: fmt_cell(r.ttft_p99_ms)),
        ("E2E p99", "right", lambda r: fmt_cell(r.e2e_p99_ms, 0)),
    ]
    if compact:
        cols = [c for c in cols if c[0] in _REPLICA_COMPACT]
    for name, just, _ in cols:
        t.add_column(name, justify=just, no_wrap=True)
    for r in replicas.itertuples(index=False):
        t.add_row(*(cell(r) for _, _, cell in cols))
    t.caption = "busy % = share of the run's span the replica was stepping; latencies in ms of the requests that finished there" + (
        "; a narrow terminal shows the main columns (all in replicas.parquet)" if compact else ""
    )
    return t


CSV_COLUMNS = (
    "requests_per_s",
    "output_tokens_per_s",
    "ttft_mean_ms",
    "ttft_p99_ms",
    "tpot_mean_ms",
    "tpot_p99_ms",
    "e2e_mean_ms",
    "e2e_p99_ms",
    "num_preemptions",
)


def points_csv(rows: list[tuple[str, Any, dict, bool | str | None]]) -> str:
    """The summary table's rows as CSV (``--format csv``): point, offered rate, the table's
    metrics at full precision (ms, req/s, tok/s), mixed-step share (%) and the verdict."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["point", "offered_rps", *CSV_COLUMNS, "mixed_pct", "stable"])
    for label, offered, s, stable in rows:
        mixed = 100.0 * s["num_mixed_steps"] / s["num_steps"] if s["num_steps"] else float("nan")
        verdict = stable if isinstance(stable, str) else "" if stable is None else ("yes" if stable else "no")
        w.writerow(
            [
                label,
                "" if offered is None else repr(float(offered)),
                *(repr(s[k]) if isinstance(s[k], float) else s[k] for k in CSV_COLUMNS),
                repr(mixed),
                verdict,
            ]
        )
    return buf.getvalue()
