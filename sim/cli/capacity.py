"""``servesim capacity``: the highest request rate that meets the SLOs."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from sim.cli.common import ProgressBars, common_options, executor_options, final_path, handle_errors, out_console, out_dir
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
@click.option(
    "--find",
    "find",
    type=click.Choice(["rate", "replicas"]),
    default="rate",
    show_default=True,
    help="rate: the highest rate the deployment sustains; replicas: the fewest replicas (per group shape) at the config's rate (--rate, --strategy).",
)
@click.option("--max-replicas", type=int, default=None, help="--find replicas: give up beyond this many replicas per group [default: 256].")
@handle_errors
def capacity(config: str | None, **kwargs: Any) -> None:
    """Find the highest request rate that meets the SLOs and its goodput, or (--find replicas)
    the fewest replicas that meet them at --rate."""
    from sim.cli.output import header, run_entry, write_json, write_run_tables
    from sim.studies.executor import run_many
    from sim.studies.sweep import find_capacity

    slo_text = kwargs.pop("slo")
    find, max_replicas = kwargs.pop("find"), kwargs.pop("max_replicas")
    if find == "rate" and max_replicas is not None:
        raise ConfigError("--max-replicas: only with --find replicas")
    flags, opts = split_flags(kwargs)
    sets = list(opts["sets"])
    if slo_text:
        for k, v in parse_slo(slo_text).items():
            sets.append(f"slo.{k}={v}")
    cfg, fmt = build_config(config, flags, tuple(sets))
    out = out_dir(opts, "capacity")
    if find == "replicas":
        _find_replicas(cfg, fmt, out, opts, max_replicas)
        return
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
    out_console.print(f"results: {final_path(out)}/")


def _find_replicas(cfg, fmt: str, out, opts: dict, max_replicas: int | None) -> None:
    from sim.cli.output import header, run_entry, write_json, write_run_tables
    from sim.cli.tables import deployment_label
    from sim.studies.executor import run_many
    from sim.studies.replicas import DEFAULT_MAX_REPLICAS, fewest_replicas

    with ProgressBars(opts["quiet"], "capacity") as prog:

        def many(cfgs):
            return run_many(cfgs, opts["executor"], opts["workers"], prog.phase("search", len(cfgs)), opts["ray_address"])

        shapes = fewest_replicas(cfg, many, max_replicas=DEFAULT_MAX_REPLICAS if max_replicas is None else max_replicas)
    rate_rps = cfg.arrival.rate_rps
    write_config_yaml(out, cfg, fmt)
    entries = []
    for sh in shapes:
        entries.append(
            {
                "shape": sh.shape,
                "replicas": sh.counts,
                "num_gpus": sh.num_gpus,
                "deployment": deployment_label(sh.result.config) if sh.result is not None else None,
                "tried": [{"replicas": c, "meets_slo": ok, "violations": v} for c, ok, v in sh.tried],
                "notes": sh.notes,
                "run": run_entry(f"fewest-{sh.shape}", sh.result) if sh.result is not None else None,
            }
        )
    write_json(out / "summary.json", {**header(cfg), "find": "replicas", "rate_rps": rate_rps, "slo": cfg.slo.model_dump(), "shapes": entries})
    for sh in shapes:
        if sh.result is not None:
            write_run_tables(out, f"fewest-{sh.shape}", sh.result)
    t = Table(title=f"fewest replicas for {rate_rps:g} req/s", title_justify="left", header_style="bold")
    for col, just in (
        ("shape", "left"),
        ("replicas", "right"),
        ("GPUs", "right"),
        ("TTFT p99", "right"),
        ("TPOT p99", "right"),
        ("E2E p99", "right"),
        ("tried", "left"),
    ):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for sh in shapes:
        tried = ", ".join(f"{'+'.join(str(v) for v in c.values())}{'✓' if ok else '✗'}" for c, ok, _ in sh.tried)
        if sh.result is None or sh.counts is None:
            t.add_row(sh.shape, "-", "-", "-", "-", "-", tried)
            continue
        s = sh.result.summary
        t.add_row(
            sh.shape,
            " + ".join(str(v) for v in sh.counts.values()),
            str(sh.num_gpus),
            f"{s['ttft_p99_ms']:.1f}",
            f"{s['tpot_p99_ms']:.2f}",
            f"{s['e2e_p99_ms']:.0f}",
            tried,
        )
    t.caption = "latencies in ms of the fewest passing fleet; tried: replicas per pool, ✓ meets the SLOs, ✗ misses them"
    out_console.print(t)
    router = cfg.cluster.router.policy if cfg.cluster is not None else "round-robin"
    out_console.print(f"router: {router}; each count one simulation at {rate_rps:g} req/s ({cfg.arrival.strategy}), seed {cfg.seed}")
    for sh in shapes:
        for note in sh.notes:
            out_console.print(f"note: {sh.shape}: {note}")
    out_console.print(f"results: {final_path(out)}/")
