"""``servesim run``: one simulation, its summary table and result files."""

from __future__ import annotations

import time
from typing import Any

import click

from sim.cli.common import (
    STREAM_THRESHOLD_REQUESTS,
    ProgressBars,
    common_options,
    compute_intervals,
    err_console,
    final_path,
    handle_errors,
    intervals_option,
    out_console,
    out_dir,
    table_options,
)
from sim.cli.config_input import build_config, split_flags
from sim.cli.output import cost_label, json_text, write_config_yaml, write_guidellm
from sim.cli.tables import deployment_label, interval_table, points_csv, replica_table, summary_table
from sim.config import OPEN_LOOP_STRATEGIES


@click.command()
@common_options
@intervals_option
@table_options
@click.option(
    "--stream/--no-stream",
    default=None,
    help=f"Stream records to disk in chunks (bounded memory); default: on above {STREAM_THRESHOLD_REQUESTS:,} requests.",
)
@handle_errors
def run(config: str | None, **kwargs: Any) -> None:
    """Simulate one run of CONFIG (YAML: servesim, guidellm profile or inference-perf config)."""
    from sim.cli.output import StreamingParquet, header, run_entry, write_figure, write_json, write_parquet, write_run_tables
    from sim.core.simulation import make_simulation

    stream = kwargs.pop("stream")
    wide, out_format, sample_requests = kwargs.pop("wide"), kwargs.pop("out_format"), kwargs.pop("sample_requests")
    flags, opts = split_flags(kwargs)
    cfg, fmt = build_config(config, flags, opts["sets"])
    out = out_dir(opts, "run")
    t0 = time.perf_counter()
    n = cfg.workload.num_requests or 0
    if stream is None:
        stream = n > STREAM_THRESHOLD_REQUESTS
    writer = None
    if stream:
        writer = StreamingParquet({"requests": out / "runs/run/requests.parquet", "steps": out / "runs/run/steps.parquet"})
    try:
        sim = make_simulation(cfg, spill=writer)
        with ProgressBars(opts["quiet"], "run") as prog:
            res = sim.run(progress=prog.phase("requests", len(sim.workload)))
        if writer is not None:
            writer.commit()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    with ProgressBars(opts["quiet"], "intervals") as prog:
        ivs = compute_intervals([cfg], [res], opts, prog)
    wall = time.perf_counter() - t0
    write_config_yaml(out, cfg, fmt)
    if writer is None:
        write_run_tables(out, "run", res)
    elif res.replicas is not None:  # streamed fleet: the request and step tables went out in chunks
        write_parquet(out / "runs/run/replicas.parquet", res.replicas)
    entry = run_entry("run", res)
    if ivs:
        entry["intervals_90"] = ivs[0]
    doc = {**header(cfg), "runs": [entry]}
    write_json(out / "summary.json", doc)
    if not res.derived.get("streamed"):  # the guidellm report needs the full request table
        write_guidellm(out, [res], cfg, sample_requests)
    if not opts["no_plots"] and len(res.steps):  # streamed runs keep no steps in memory
        from sim.plots.runs import batch_composition, replica_load

        if res.replicas is None:
            write_figure(out / "plots" / "batch_composition.png", batch_composition(res))
        else:  # one server's steps per line; a fleet's interleave, so plot each replica's load
            write_figure(out / "plots" / "replica_load.png", replica_load(res))
    s = res.summary
    a = cfg.arrival
    offered = a.rate_rps if a.strategy in OPEN_LOOP_STRATEGIES else None
    if offered is not None:
        label = f"{a.strategy}@{offered:g}"
    else:  # closed loops and bursts have no offered rate (a rate_rps left in the config is unused)
        label = a.strategy + (f"@{a.concurrency}" if a.concurrency else "")
    if out_format == "json":
        click.echo(json_text(doc))
        return
    if out_format == "csv":
        click.echo(points_csv([(label, offered, s, None)]), nl=False)
        return
    out_console.print(
        summary_table(
            [(label, offered, s, None)],
            f"servesim run — {cfg.model} on {deployment_label(cfg)}, {cost_label(cfg)}",
            width=None if wide else out_console.width,
        )
    )
    if res.replicas is not None:
        out_console.print(replica_table(res.replicas, f"replicas — router {res.derived['router']}", width=None if wide else out_console.width))
        out_console.print(f"load imbalance (max/mean within a group): requests {s['load_imbalance_requests']:.2f}, busy time {s['load_imbalance_busy']:.2f}")
    if ivs:
        out_console.print(interval_table([(label, s, ivs[0])], f"prediction intervals ({cost_label(cfg)})"))
    if res.replicas is None:
        limits = f"KV blocks {res.derived['num_gpu_blocks']}, budget {res.derived['max_num_batched_tokens']} tokens"
    else:  # replicas of different shapes differ in KV capacity
        per_group = res.replicas.drop_duplicates("group")
        limits = "KV blocks per replica " + ", ".join(f"{b} ({g})" for g, b in zip(per_group["group"], per_group["num_gpu_blocks"]))
    timed_out = f", {s['num_timed_out']} timed out" if "num_timed_out" in s else ""
    out_console.print(
        f"requests: {s['num_finished']} finished, {s['num_rejected']} rejected{timed_out}, {s['num_in_flight']} in flight, {s['num_not_sent']} not sent; {limits}"
    )
    out_console.print(f"results: {final_path(out)}/")
    err_console.print(f"simulated {s['num_requests']} requests, {s['num_steps']} steps in {wall:.2f} s wall")
