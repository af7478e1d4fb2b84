"""``servesim capacity``: the highest request rate that meets the SLOs."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from sim.cli.common import ProgressBars, common_options, executor_options, handle_errors, out_console, out_dir
from sim.cli.config_input import build_config, split_flags
from sim.cli.output import write_config_yaml
from sim.errors import ConfigError


def parse_slo(text: str) -> dict[str, float]:
    """``ttft_p99=500,tpot_p99=50`` → {'ttft_p99_ms': 500.0, ...} (milliseconds)."""
    allowed = {"ttft_p99", "tpot_p99", "e2e_p99", "ttft", "tpot"}
    out = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise ConfigError(f"--slo: expected NAME=MILLISECONDS pairs, got {part!r}")
        k, v = (x.strip() for x in part.split("=", 1))
        k = k.removesuffix("_ms")
        if k not in allowed:
            raise ConfigError(f"--slo: unknown SLO {k!r}; choose from {', '.join(sorted(allowed))}")
        try:
            val = float(v)
        except ValueError:
            raise ConfigError(f"--slo: {k} needs a number of milliseconds, got {v!r}") from None
        out[f"{k}_ms"] = val
    return out


@click.command()
@common_options
@executor_options
@click.option("--slo", help="SLOs in milliseconds, e.g. ttft_p99=500,tpot_p99=50 (also e2e_p99; per-request ttft, tpot for goodput).")
@handle_errors
def capacity(config: str | None, **kwargs: Any) -> None:
    """Find the highest request rate that meets the SLOs, and its goodput."""
    from sim.cli.output import header, run_entry, write_json, write_run_tables
    from sim.studies.executor import run_many
    from sim.studies.sweep import find_capacity

    slo_text = kwargs.pop("slo")
    flags, opts = split_flags(kwargs)
    sets = list(opts["sets"])
    if slo_text:
        for k, v in parse_slo(slo_text).items():
            sets.append(f"slo.{k}={v}")
    cfg, fmt = build_config(config, flags, tuple(sets))
    out = out_dir(opts, "capacity")
    with ProgressBars(opts["quiet"], "capacity") as prog:

        def many(cfgs):
            return run_many(cfgs, opts["executor"], opts["workers"], prog.phase("search", len(cfgs)), opts["ray_address"])

        cap = find_capacity(cfg, many)
    write_config_yaml(out, cfg, fmt)
    entry = {
        **header(cfg),
        "slo": cfg.slo.model_dump(),
        "capacity_rps": cap.capacity_rps,
        "goodput_rps": cap.goodput_rps,
        "max_throughput_rps": cap.upper_bound_rps,
        "tried": [{"rate_rps": r, "meets_slo": ok, "violations": v} for r, ok, v in cap.tried],
        "notes": cap.notes,
        "runs": [run_entry("capacity", cap.result)] if cap.result is not None else [],
    }
    write_json(out / "summary.json", entry)
    if cap.result is not None:
        write_run_tables(out, "capacity", cap.result)
    t = Table(title="rates tried", header_style="bold")
    t.add_column("rate req/s", justify="right")
    t.add_column("meets SLOs", justify="center")
    t.add_column("violations")
    for r, ok, violations in cap.tried:
        t.add_row(f"{r:.3f}", "yes" if ok else "no", "; ".join(violations))
    out_console.print(t)
    if cap.capacity_rps is None or cap.result is None:  # a capacity always comes with its run
        out_console.print("capacity: no rate met the SLOs")
    else:
        s = cap.result.summary
        out_console.print(
            f"capacity: {cap.capacity_rps:.3f} req/s (goodput {cap.goodput_rps:.3f} req/s; max throughput "
            f"{cap.upper_bound_rps:.3f} req/s) — TTFT p99 {s['ttft_p99_ms']:.1f} ms, TPOT p99 {s['tpot_p99_ms']:.2f} ms, E2E p99 {s['e2e_p99_ms']:.0f} ms"
        )
    for note in cap.notes:
        out_console.print(f"note: {note}")
    out_console.print(f"results: {out}/")
