"""``servesim compare``: policies and formulas over paired seeds, with intervals."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from sim.cli.common import ProgressBars, common_options, executor_options, final_path, handle_errors, out_console, out_dir, parse_csv, parse_float
from sim.cli.config_input import build_config, split_flags
from sim.cli.output import write_config_yaml
from sim.cost.calibration import effective_formula
from sim.errors import ConfigError

COMPARE_WIDE_COLUMNS = 130  # below this the table uses short headers and stacks each interval under its mean
SHORT_METRIC = {
    "ttft_mean_ms": "TTFT ms",
    "ttft_p99_ms": "TTFT p99",
    "tpot_mean_ms": "TPOT ms",
    "e2e_mean_ms": "E2E ms",
    "e2e_p99_ms": "E2E p99",
    "output_tokens_per_s": "out tok/s",
    "num_rejected": "rejected",
}


@click.command(name="compare")
@common_options
@executor_options
@click.option("--policies", help="Comma-separated scheduler policies (first = baseline), e.g. vllm-v1,sarathi.")
@click.option("--formulas", help="Comma-separated mixed-batch formulas, e.g. weighted-average,additive.")
@click.option("--routers", help="Comma-separated fleet routers (first = baseline), e.g. round-robin,least-outstanding; needs a cluster.")
@click.option("--seeds", "num_seeds", type=int, default=5, show_default=True, help="Seeds per arm (paired across arms).")
@click.option("--rates", help="Compare at each of these request rates (req/s), comma-separated.")
@handle_errors
def compare_cmd(config: str | None, **kwargs: Any) -> None:
    """Compare policies, formulas and/or fleet routers over seeds, with 95 % intervals and paired differences."""
    from sim.cli.output import header, write_figure, write_json, write_parquet
    from sim.studies.compare import compare
    from sim.studies.executor import run_many

    policies_text, formulas_text, routers_text, num_seeds, rates_text = (kwargs.pop(k) for k in ("policies", "formulas", "routers", "num_seeds", "rates"))
    flags, opts = split_flags(kwargs)
    if routers_text and flags.get("router"):
        raise ConfigError("--router and --routers: --routers lists the routers to compare (the first is the baseline); drop --router")
    if policies_text and flags.get("policy"):
        raise ConfigError("--policy and --policies: --policies lists the policies to compare; drop --policy")
    if formulas_text and flags.get("formula"):
        raise ConfigError("--formula and --formulas: --formulas lists the formulas to compare; drop --formula")
    cfg, fmt = build_config(config, flags, opts["sets"])
    policies = parse_csv(policies_text) or [cfg.scheduler.policy]
    formulas = parse_csv(formulas_text) or [effective_formula(cfg)]
    rates = [parse_float(r, "--rates") for r in parse_csv(rates_text)] if rates_text else None
    routers = parse_csv(routers_text) if routers_text else None
    out = out_dir(opts, "compare")
    with ProgressBars(opts["quiet"], "compare") as prog:

        def many(cfgs):
            return run_many(cfgs, opts["executor"], opts["workers"], prog.phase("runs", len(cfgs)), opts["ray_address"])

        runs, table = compare(cfg, many, policies, formulas, num_seeds, rates, routers)
    write_config_yaml(out, cfg, fmt)
    write_parquet(out / "runs.parquet", runs)
    from sim.cli.output import atomic_write_bytes

    atomic_write_bytes(out / "compare.csv", table.to_csv(index=False).encode())
    write_json(
        out / "summary.json",
        {
            **header(cfg),
            "policies": policies,
            "formulas": formulas,
            "routers": routers,
            "seeds": num_seeds,
            "rates_rps": rates,
            "statistics": table.to_dict(orient="records"),
        },
    )
    if not opts["no_plots"]:
        from sim.plots.runs import comparison

        write_figure(out / "plots" / "compare.png", comparison(table))
    show = ["ttft_mean_ms", "tpot_mean_ms", "e2e_mean_ms", "output_tokens_per_s"]
    if routers is not None:  # routing shows in the queueing tail
        show = ["ttft_mean_ms", "ttft_p99_ms", "tpot_mean_ms", "e2e_p99_ms", "output_tokens_per_s"]
    rejected = table[table["metric"] == "num_rejected"]["mean"]
    if (rejected > 0).any():  # lower latency bought by refusing requests must show
        show.append("num_rejected")
    shown_rates: list[float | None] = list(rates) if rates else [None]
    for rate in shown_rates:
        sub = table[table["rate_rps"].isna()] if rate is None else table[table["rate_rps"] == rate]
        t = Table(
            title=f"compare over {num_seeds} seeds" + (f" at {rate:g} req/s" if rate else "") + " — mean [95% CI]; Δ = paired difference to the first arm",
            title_justify="left",
            header_style="bold",
        )
        # a narrow terminal gets short headers and the interval under the mean, so no number
        # is cut or broken across lines
        narrow = out_console.width < COMPARE_WIDE_COLUMNS
        t.add_column("arm", no_wrap=True)
        for m in show:
            t.add_column(SHORT_METRIC.get(m, m) if narrow else m, justify="right")
        for arm in sub["arm"].unique():
            cells = []
            for m in show:
                r = sub[(sub["arm"] == arm) & (sub["metric"] == m)].iloc[0]
                sep = "\n" if narrow else " "
                f = "{:.4g}" if narrow else "{:.2f}"
                g = "{:+.3g}" if narrow else "{:+.2f}"
                cell = f"{f.format(r['mean'])}{sep}[{f.format(r['ci_low'])}, {f.format(r['ci_high'])}]"
                if "diff_mean" in r and r["diff_mean"] == r["diff_mean"]:
                    star = "*" if r["diff_excludes_zero"] else ""
                    cell += f"\nΔ {g.format(r['diff_mean'])}{star}{sep}[{g.format(r['diff_low'])}, {g.format(r['diff_high'])}]"
                cells.append(cell)
            t.add_row(arm, *cells)
        t.caption = "* the paired-difference interval excludes zero"
        out_console.print(t)
    out_console.print(f"results: {final_path(out)}/")
