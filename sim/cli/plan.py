"""``servesim plan``: the cheapest GPU × TP × replicas deployment that meets the SLOs at a rate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from sim.cli.common import ProgressBars, executor_options, final_path, handle_errors, out_console, parse_csv, short_path
from sim.cli.config_input import build_config
from sim.errors import ConfigError

INT_COLUMNS = ("replicas", "num_gpus", "tensor_parallel_size", "max_num_seqs", "max_num_batched_tokens")


def read_prices(path: str | None) -> tuple[dict[str, float], str]:
    """(USD per GPU-hour by GPU name, where they came from) from ``--prices`` or the shipped example."""
    import yaml

    from sim.cli.config_input import StrictLoader
    from sim.studies.plan import example_prices, parse_prices

    if path is None:
        return example_prices(), "the shipped example (RunPod list prices, March 2026; stale: give yours with --prices)"
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"--prices: file not found: {short_path(p)}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--prices: cannot read {short_path(p)}: {getattr(err, 'strerror', None) or err}") from None
    try:
        data = yaml.load(text, Loader=StrictLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"--prices: {short_path(p)} is not valid YAML: {err}") from None
    except RecursionError:
        raise ConfigError(f"--prices: {short_path(p)} is nested too deeply") from None
    return parse_prices(data, f"--prices {short_path(p)}"), short_path(p)


def _int_list(text: str | None, name: str) -> list[int | None]:
    out: list[int | None] = []
    for part in parse_csv(text):
        try:
            out.append(int(part))
        except ValueError:
            raise ConfigError(f"{name}: expected comma-separated integers, got {part!r}") from None
    return out


@click.command(name="plan")
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--model", help="Model: catalogue name (see `servesim list`), HF id, or path to a config.json.")
@click.option("--rate", type=float, help="Request rate to provision for, requests per second (required).")
@click.option("--slo", help="SLOs in milliseconds, e.g. ttft_p99=500,tpot_p99=50 (also e2e_p99).")
@click.option(
    "--gpus", default=",".join(("H100", "A100", "L40S")), show_default=True, help="GPUs to consider, comma-separated (catalogue names or GPU YAML files)."
)
@click.option("--tp", "tps", default="1,2,4,8", show_default=True, help="Tensor-parallel sizes to consider, comma-separated.")
@click.option("--max-num-seqs", "seqs", help="Also search these max_num_seqs values, comma-separated (default: the config's).")
@click.option("--max-num-batched-tokens", "mbts", help="Also search these token budgets, comma-separated (default: vLLM's per GPU).")
@click.option("--router", help="Fleet router for the replica checks (default round-robin; see `servesim list`).")
@click.option("--prices", help="YAML of USD per GPU-hour (format: docs/planning.md); default: the shipped example, which goes stale.")
@click.option(
    "--level", type=float, default=0.9, show_default=True, help="Prediction-interval level; a deployment meets the SLOs when the interval's upper end does."
)
@click.option(
    "--interval-replicates",
    type=int,
    default=4,
    show_default=True,
    help="Calibration bootstrap replicates simulated per spread measurement (0: the residuals alone widen the interval).",
)
@click.option(
    "--exhaustive", is_flag=True, help="Search every shape to its fewest replicas (default: stop a shape once it costs more than the cheapest found)."
)
@click.option("--max-replicas", type=int, default=256, show_default=True, help="Give up on a shape beyond this many replicas.")
@click.option(
    "--strategy", type=click.Choice(["constant", "poisson"]), help="Arrival process at the rate (default: the config's, poisson in the embedded default)."
)
@click.option("--num-requests", type=int, help="Requests per one-replica run (fleet runs send more: enough for a steady window).")
@click.option("--calibration", help="Fitted cost knobs: a shipped name (default h100), a YAML path, or none (no intervals).")
@click.option("--seed", type=int, help="Run seed.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override any config field, e.g. --set workload.prefix_tokens=512 (repeatable).")
@click.option(
    "--format", "fmt_out", type=click.Choice(["table", "json"]), default="table", show_default=True, help="stdout: the ranked table, or plan.json for scripts."
)
@click.option("--output-dir", "-o", type=click.Path(file_okay=False), help="Results directory (default results/plan).")
@click.option("--no-plots", is_flag=True, help="Skip the Pareto plot.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@executor_options
@handle_errors
def plan_cmd(config: str | None, **kwargs: Any) -> None:
    """Find the cheapest deployment (GPU type, tensor parallelism, replicas) that meets the SLOs at --rate, with prediction intervals."""
    from sim.cli.capacity import parse_slo
    from sim.cli.common import out_dir
    from sim.studies.executor import default_workers, run_many
    from sim.studies.plan import planning_config, run_plan, shapes_for

    if kwargs["rate"] is None:
        raise ConfigError("--rate: plan provisions for a request rate; give one, e.g. --rate 40 (requests per second)")
    if not kwargs["slo"]:
        raise ConfigError("--slo: plan needs SLOs to meet, e.g. --slo ttft_p99=500,tpot_p99=50 (milliseconds)")
    sets = list(kwargs["sets"])
    for k, v in parse_slo(kwargs["slo"]).items():
        sets.append(f"slo.{k}={v}")
    flags = {k: kwargs[k] for k in ("model", "rate", "strategy", "num_requests", "calibration", "seed")}
    if flags["strategy"] is None:
        flags.pop("strategy")
    cfg, fmt = build_config(config, flags, tuple(sets))
    cfg = planning_config(cfg, kwargs["router"])
    seqs = _int_list(kwargs["seqs"], "--max-num-seqs") or [None]
    mbts = _int_list(kwargs["mbts"], "--max-num-batched-tokens") or [None]
    shapes = shapes_for(parse_csv(kwargs["gpus"]), _int_list(kwargs["tps"], "--tp"), seqs, mbts)  # type: ignore[arg-type]
    prices, prices_from = read_prices(kwargs["prices"])
    opts = {"output_dir": kwargs["output_dir"]}
    out = out_dir(opts, "plan")
    import time

    from sim.cli.common import err_console

    start = time.perf_counter()
    with ProgressBars(kwargs["quiet"], "plan") as prog:
        batches = {"n": 0}

        def many(cfgs):
            batches["n"] += 1
            # a bar per batch on a terminal; logs get one line at the end, not one per batch
            phase = prog.phase(f"search batch {batches['n']}", len(cfgs)) if err_console.is_terminal else None
            return run_many(cfgs, kwargs["executor"], kwargs["workers"], phase, kwargs["ray_address"])

        result, table = run_plan(
            cfg,
            shapes,
            prices,
            run_many=many,
            level=kwargs["level"],
            interval_replicates=kwargs["interval_replicates"],
            max_replicas=kwargs["max_replicas"],
            exhaustive=kwargs["exhaustive"],
            concurrent_shapes=kwargs["workers"] or default_workers(),
        )
    if not kwargs["quiet"]:
        err_console.print(f"plan: {result.num_simulations} simulations in {batches['n']} batches, {time.perf_counter() - start:.1f} s")
    _write(out, result, table, prices_from, cfg, fmt, kwargs, not kwargs["no_plots"])


def plan_json(result, table, prices_from: str, cfg) -> dict[str, Any]:
    """plan.json: what was asked, the recommendation, every shape's row."""
    import math

    from sim.cli.output import header

    def clean(k: str, v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if k in INT_COLUMNS and isinstance(v, float):
            return int(v)  # a column with gaps (shapes without a count) is float in pandas
        return v

    rows = [{k: clean(k, v) for k, v in r.items()} for r in table.to_dict(orient="records")]
    meets = [r for r in rows if r["status"] == "meets"]
    return {
        **header(cfg),
        "rate_rps": result.rate_rps,
        "slo": result.slo.model_dump(),
        "interval_level": result.level,
        "router": result.router,
        "calibration": result.calibration,
        "prices": prices_from,
        "recommendation": meets[0] if meets else None,
        "deployments": rows,
        "num_simulations": result.num_simulations,
        "notes": {p.shape.label: p.notes for p in result.shapes if p.notes},
    }


def _write(out, result, table, prices_from: str, cfg, fmt: str, kwargs: dict, plots: bool) -> None:
    import pandas as pd

    from sim.cli.output import write_config_yaml, write_figure, write_json, write_parquet, write_run_tables

    write_config_yaml(out, cfg, fmt)
    doc = plan_json(result, table, prices_from, cfg)
    write_json(out / "plan.json", doc)
    write_parquet(out / "shapes.parquet", table)
    evals = pd.DataFrame(
        [
            {
                "shape": e.shape,
                "kind": e.kind,
                "replicas": e.replicas,
                "rate_rps": e.rate_rps,
                "meets_slo": e.meets_slo,
                "violations": "; ".join(e.violations),
                **{k: e.summary.get(k) for k in ("ttft_p99_ms", "tpot_p99_ms", "e2e_p99_ms", "tpot_mean_ms", "output_tokens_per_s", "requests_per_s")},
            }
            for p in result.shapes
            for e in p.evaluations
        ]
    )
    write_parquet(out / "evaluations.parquet", evals)
    chosen = doc["recommendation"]
    if chosen is not None:
        p = next(p for p in result.shapes if p.shape.label == chosen["shape"])
        write_run_tables(out, f"plan-{p.shape.label}-x{chosen['replicas']}", p.results[chosen["replicas"]])
    if plots and len(table):
        from sim.plots.plan import pareto

        write_figure(out / "plots" / "pareto.png", pareto(table, evals, f"{cfg.model} at {result.rate_rps:g} req/s"))
    if kwargs["fmt_out"] == "json":
        click.echo(json.dumps(doc, indent=2, default=str))
        return
    _print_table(table, result, prices_from, chosen)
    out_console.print(f"results: {final_path(out)}/")


def _f(v: Any, digits: int) -> str:
    import math

    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:,.{digits}f}"


def _print_table(table, result, prices_from: str, chosen) -> None:
    slo = result.slo
    bounds = ", ".join(
        f"{k.removesuffix('_ms').replace('_', ' ')} <= {getattr(slo, k):g} ms"
        for k in ("ttft_p99_ms", "tpot_p99_ms", "e2e_p99_ms")
        if getattr(slo, k) is not None
    )
    t = Table(title=f"plan: {result.base.model} at {result.rate_rps:g} req/s, {bounds}", title_justify="left", header_style="bold")
    cols = [
        ("shape", "left"),
        ("status", "left"),
        ("replicas", "right"),
        ("GPUs", "right"),
        ("$/h", "right"),
        ("$/M out tok", "right"),
        ("goodput r/s", "right"),
        ("TTFT p99 (hi)", "right"),
        ("TPOT p99 (hi)", "right"),
        ("margin", "right"),
    ]
    for c, j in cols:
        t.add_column(c, justify=j)  # type: ignore[arg-type]
    listed = table[table["status"].isin(["meets", "at risk"])]
    for r in listed.to_dict(orient="records"):
        style = (
            "bold green" if chosen is not None and r["shape"] == chosen["shape"] and r["replicas"] == chosen["replicas"] and r["status"] == "meets" else None
        )
        t.add_row(
            r["shape"],
            r["status"],
            str(int(r["replicas"])),
            str(int(r["num_gpus"])),
            _f(r["usd_per_hour"], 2),
            _f(r["usd_per_million_output_tokens"], 3),
            _f(r["goodput_rps"], 2),
            f"{_f(r['ttft_p99_ms'], 0)} ({_f(r['ttft_p99_hi_ms'], 0)})",
            f"{_f(r['tpot_p99_ms'], 1)} ({_f(r['tpot_p99_hi_ms'], 1)})",
            f"{_f(100 * r['slo_margin'], 0)} %",
            style=style,
        )
    t.caption = f"cheapest first; latencies in ms, (hi) = upper end of the {result.level:.0%} prediction interval; margin = smallest (SLO − hi)/SLO"
    out_console.print(t)
    for r in table[~table["status"].isin(["meets", "at risk"])].to_dict(orient="records"):
        out_console.print(f"{r['status']}: {r['shape']}: {r['reason']}")
    if chosen is None:
        out_console.print(f"no shape meets the SLOs at {result.rate_rps:g} req/s with its upper bounds")
    else:
        out_console.print(
            f"cheapest: {int(chosen['replicas'])}x {chosen['gpu']} TP{int(chosen['tensor_parallel_size'])} ({int(chosen['num_gpus'])} GPUs) at "
            f"${chosen['usd_per_hour']:,.2f}/h, ${chosen['usd_per_million_output_tokens']:,.3f} per million output tokens"
        )
    out_console.print(f"prices: {prices_from}; router {result.router}; {result.num_simulations} simulations")
