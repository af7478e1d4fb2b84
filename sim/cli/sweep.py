"""``servesim sweep``: a guidellm-style rate sweep and its saturation point."""

from __future__ import annotations

import time
from typing import Any

import click

from sim.cli.common import (
    ProgressBars,
    common_options,
    compute_intervals,
    err_console,
    executor_options,
    final_path,
    handle_errors,
    intervals_option,
    out_console,
    out_dir,
    table_options,
)
from sim.cli.config_input import FLAG_PATHS, build_config, split_flags
from sim.cli.output import cost_label, json_text, write_config_yaml, write_guidellm
from sim.cli.tables import deployment_label, interval_table, points_csv, summary_table
from sim.cost.calibration import effective_formula
from sim.errors import ConfigError


@click.command()
@common_options
@executor_options
@intervals_option
@table_options
@click.option("--num-points", type=int, help="Benchmarks in the sweep incl. synchronous and throughput (guidellm --rate).")
@click.option("--rates", help="Explicit comma-separated request rates (req/s) instead of guidellm's rule.")
@click.option("--concurrencies", help="A concurrency sweep instead: comma-separated numbers of closed-loop users (guidellm concurrent with several rates).")
@handle_errors
def sweep(config: str | None = None, **kwargs: Any) -> None:
    """Sweep request rates guidellm-style and find the saturation point.

    A synchronous point, a throughput point, then constant (or Poisson) rates spread between
    their achieved rates; reports latency and throughput per rate and the highest rate whose
    queueing stays bounded.
    """
    from sim.cli.output import header, run_entry, write_figure, write_json, write_run_tables
    from sim.records.guidellm import attach_metrics
    from sim.studies.executor import run_many
    from sim.studies.sweep import run_sweep

    kwargs = {
        **{k: None for k in FLAG_PATHS},
        "sets": (),
        "output_dir": None,
        "no_plots": False,
        "quiet": False,
        "executor": "process",
        "workers": None,
        "ray_address": None,
        "num_points": None,
        "rates": None,
        "concurrencies": None,
        "intervals": False,
        "wide": False,
        "out_format": "table",
        **kwargs,
    }
    wide, out_format, sample_requests = kwargs.pop("wide"), kwargs.pop("out_format"), kwargs.pop("sample_requests")
    flags, opts = split_flags(kwargs)
    sets = list(opts["sets"])
    if opts["num_points"] is not None:
        sets.append(f"sweep.num_points={opts['num_points']}")
    if opts["rates"]:
        try:
            rates = [float(r) for r in opts["rates"].split(",") if r.strip()]
        except ValueError:
            raise ConfigError(f"--rates: expected comma-separated numbers, got {opts['rates']!r}") from None
        sets.append(f"sweep.rates_rps={rates}")
    if opts["concurrencies"]:
        if opts["rates"]:
            raise ConfigError("--rates and --concurrencies: a sweep runs rates or numbers of users, not both")
        try:
            users = [int(u) for u in opts["concurrencies"].split(",") if u.strip()]
        except ValueError:
            raise ConfigError(f"--concurrencies: expected comma-separated integers, got {opts['concurrencies']!r}") from None
        sets.append(f"sweep.concurrencies={users}")
    cfg, fmt = build_config(config, flags, tuple(sets))
    out = out_dir(opts, "sweep")
    t0 = time.perf_counter()
    with ProgressBars(opts["quiet"], "sweep") as prog:
        calls = {"n": 0}

        def many(cfgs):
            calls["n"] += 1
            name = "anchors (synchronous, throughput)" if calls["n"] == 1 and cfg.sweep.rates_rps is None else "rate points"
            # each point's guidellm metrics are computed in the worker that simulated it
            return run_many(cfgs, opts["executor"], opts["workers"], prog.phase(name, len(cfgs)), opts["ray_address"], post=attach_metrics)

        result = run_sweep(cfg, many)
        ivs = compute_intervals([p.result.config for p in result.points], [p.result for p in result.points], opts, prog)
    wall = time.perf_counter() - t0
    write_config_yaml(out, cfg, fmt)
    for p in result.points:
        write_run_tables(out, p.label, p.result)
    doc = {
        **header(cfg),
        "saturation_rps": result.saturation_rps,
        "max_throughput_rps": result.max_throughput_rps,
        "full_batch_capacity_rps": result.full_batch_capacity_rps,
        "notes": result.notes,
        "runs": [
            {
                **run_entry(p.label, p.result, p.rate_rps, p.stable),
                **({"inconclusive": True} if p.inconclusive else {}),
                **({"intervals_90": ivs[i]} if ivs else {}),
            }
            for i, p in enumerate(result.points)
        ],
    }
    write_json(out / "summary.json", doc)
    write_guidellm(out, [p.result for p in result.points], cfg, sample_requests)
    if not opts["no_plots"]:
        from sim.plots.runs import batch_composition, latency_vs_rate, replica_load, throughput_vs_offered

        title = f"{cfg.model}, {deployment_label(cfg)}, {effective_formula(cfg)}"
        write_figure(out / "plots" / "latency_vs_rate.png", latency_vs_rate(result, title, ivs or None))
        write_figure(out / "plots" / "throughput_vs_offered.png", throughput_vs_offered(result, title))
        busiest = max(result.points, key=lambda p: p.result.summary["mean_batch_tokens"])  # the most loaded point
        if busiest.result.replicas is None:
            write_figure(out / "plots" / "batch_composition.png", batch_composition(busiest.result, f"batch composition: {busiest.label}"))
        else:
            write_figure(out / "plots" / "replica_load.png", replica_load(busiest.result, f"load per replica: {busiest.label}"))
    rows: list[tuple[str, Any, dict, bool | str | None]] = [
        (p.label, p.rate_rps, p.result.summary, "short" if p.inconclusive else p.stable) for p in result.points
    ]
    if out_format == "json":
        click.echo(json_text(doc))
        return
    if out_format == "csv":
        click.echo(points_csv(rows), nl=False)
        return
    out_console.print(
        summary_table(rows, f"servesim sweep — {cfg.model} on {deployment_label(cfg)}, {cost_label(cfg)}", width=None if wide else out_console.width)
    )
    if ivs:
        out_console.print(interval_table([(p.label, p.result.summary, iv) for p, iv in zip(result.points, ivs)], f"prediction intervals ({cost_label(cfg)})"))
    sat = "-" if result.saturation_rps is None else f"{result.saturation_rps:.3g} req/s"
    first_unsettled = next((p for _, p in result.rate_points() if p.stable is not True), None)
    if first_unsettled is not None and first_unsettled.inconclusive:  # the chain of stable rates ended undecided
        sat = f"at least {sat}" if result.saturation_rps is not None else "- (the lowest rate is inconclusive)"
    out_console.print(f"saturation point: {sat}; max throughput: {result.max_throughput_rps:.3g} req/s")
    for note in result.notes:
        out_console.print(f"note: {note}")
    out_console.print(f"results: {final_path(out)}/")
    err_console.print(f"{len(result.points)} points in {wall:.2f} s wall")
