"""The ``servesim`` command line (also ``python -m sim``).

Commands: ``run``, ``sweep``, ``capacity``, ``list``, ``config``. With no command, runs a
sweep of the embedded default config. Bad input exits with code 2 and one clear message
(no traceback); results go to files and an aligned summary to stdout; progress and wall
times to stderr.
"""

from __future__ import annotations

import functools
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import click
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import __version__
from .calibration import effective_formula
from .config import RunConfig, merge, parse_run_config
from .errors import ConfigError, ServesimError
from .formats import convert

# a fixed width off-terminal keeps piped and logged tables aligned and complete
out_console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)
err_console = Console(stderr=True, highlight=False)


# ------------------------------------------------------------------ config loading


def default_config_dict() -> dict[str, Any]:
    """The embedded default config (``sim/data/default.yaml``)."""
    text = resources.files("sim").joinpath("data/default.yaml").read_text()
    return yaml.safe_load(text)


class StrictLoader(yaml.SafeLoader):
    """YAML safe loader that rejects duplicate keys (a silent last-one-wins hides typos)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                dup = key in seen
            except TypeError:  # unhashable key; let the base class report it
                dup = False
            if dup:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            try:
                seen.add(key)
            except TypeError:
                pass
        return super().construct_mapping(node, deep=deep)


def read_config_file(path: str) -> tuple[str, dict[str, Any]]:
    """(format, servesim mapping) from a YAML/JSON file: servesim, guidellm or inference-perf."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"CONFIG: file not found: {p}")
    try:
        data = yaml.load(p.read_text(), Loader=StrictLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"CONFIG: {p} is not valid YAML/JSON: {err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"CONFIG: {p} is not a text file") from None
    except RecursionError:
        raise ConfigError(f"CONFIG: {p} is nested too deeply to be a config") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"CONFIG: {p} must hold a mapping at the top level, got {type(data).__name__}")
    return convert(data)


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _set_path(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = d
    for k in keys[:-1]:
        nxt = cur.get(k)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[k] = nxt
        cur = nxt
    cur[keys[-1]] = value


# option name -> dotted config path
FLAG_PATHS = {
    "model": "model",
    "gpu": "gpu",
    "tensor_parallel_size": "tensor_parallel_size",
    "max_num_seqs": "server.max_num_seqs",
    "max_num_batched_tokens": "server.max_num_batched_tokens",
    "long_prefill_token_threshold": "server.long_prefill_token_threshold",
    "enable_prefix_caching": "server.enable_prefix_caching",
    "enable_chunked_prefill": "server.enable_chunked_prefill",
    "async_scheduling": "server.async_scheduling",
    "block_size": "server.block_size",
    "gpu_memory_utilization": "server.gpu_memory_utilization",
    "num_gpu_blocks_override": "server.num_gpu_blocks",
    "max_model_len": "server.max_model_len",
    "policy": "scheduler.policy",
    "cost_model": "cost.model",
    "formula": "cost.formula",
    "gemm_m": "cost.gemm_m",
    "mfu_lookup": "cost.mfu_lookup",
    "bench_data": "cost.bench_data_dir",
    "calibration": "cost.calibration",
    "seed": "seed",
    "num_requests": "workload.num_requests",
    "strategy": "arrival.strategy",
    "rate": "arrival.rate_rps",
    "concurrency": "arrival.concurrency",
    "horizon": "horizon_s",
}


def build_config(config_path: str | None, flags: dict[str, Any], sets: tuple[str, ...]) -> tuple[RunConfig, str]:
    """Effective config: embedded default ← CONFIG file ← --set ← named flags."""
    base = default_config_dict()
    fmt = "default"
    if config_path:
        fmt, data = read_config_file(config_path)
        if fmt == "servesim":
            base = data  # a servesim file is complete on its own (defaults fill the rest)
        else:
            base = merge(base, data)
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set: expected KEY=VALUE (e.g. server.max_num_seqs=128), got {item!r}")
        k, v = item.split("=", 1)
        _set_path(base, k.strip(), _parse_value(v))
    for name, value in flags.items():
        if value is not None:
            _set_path(base, FLAG_PATHS[name], value)
    strategy = flags.get("strategy")
    if strategy in ("synchronous", "throughput", "replay") and flags.get("rate") is None:
        base.setdefault("arrival", {})["rate_rps"] = None
    return parse_run_config(base, source=config_path), fmt


# ------------------------------------------------------------------ options


def common_options(func):
    """Options shared by run, sweep and capacity (vLLM's names for server flags)."""
    opts = [
        click.argument("config", required=False, type=click.Path(dir_okay=False)),
        click.option("--model", help="Model: catalogue name (see `servesim list`), HF id, or path to a config.json."),
        click.option("--gpu", help="GPU catalogue name (H100, A100, H200, L40S)."),
        click.option("--tensor-parallel-size", "-tp", type=int, help="GPUs per replica (vLLM --tensor-parallel-size)."),
        click.option("--max-num-seqs", type=int, help="Max running requests per step (vLLM default 256)."),
        click.option("--max-num-batched-tokens", type=int, help="Token budget per step (vLLM: 8192 on >=70 GiB GPUs, else 2048)."),
        click.option("--long-prefill-token-threshold", type=int, help="Cap on one prompt's chunk per step, tokens; 0 = none."),
        click.option("--enable-prefix-caching/--no-enable-prefix-caching", default=None, help="Reuse KV blocks of shared prefixes."),
        click.option("--enable-chunked-prefill/--no-enable-chunked-prefill", default=None, help="Split long prompts across steps (vLLM V1 default on)."),
        click.option("--async-scheduling/--no-async-scheduling", default=None, help="Plan step k+1 while step k runs: a new request joins step k+2 at the earliest (default off)."),
        click.option("--block-size", type=int, help="Tokens per KV block (vLLM default 16)."),
        click.option("--gpu-memory-utilization", type=float, help="Share of GPU memory for weights+KV, in (0, 1] (vLLM default 0.9)."),
        click.option("--num-gpu-blocks-override", type=int, help="KV blocks per GPU instead of deriving them from memory."),
        click.option("--max-model-len", type=int, help="Longest prompt+output, tokens (default: the model's)."),
        click.option("--policy", help="Scheduler policy (default vllm-v1; see `servesim list`)."),
        click.option("--cost-model", help="Step-cost model: roofline | linear | fixed."),
        click.option("--formula", help="Mixed-batch formula of the roofline: weighted-average | smooth-wa | additive | max (default: the calibration's, else weighted-average)."),
        click.option("--gemm-m", type=click.Choice(["tokens", "requests"]), help="GEMM M sizing: tokens (physical) or requests (seed study)."),
        click.option("--mfu-lookup", type=click.Choice(["nearest", "interpolate"]), help="MFU table lookup mode."),
        click.option("--bench-data", type=click.Path(file_okay=False), help="Microbenchmark directory (bench_data/) for MFU tables."),
        click.option("--calibration", help="Fitted cost knobs: a shipped calibration name (h100) or a YAML path from `calibrate`."),
        click.option("--seed", type=int, help="Run seed (all random streams derive from it)."),
        click.option("--num-requests", type=int, help="Requests to simulate (per point in sweeps)."),
        click.option(
            "--strategy",
            type=click.Choice(["synchronous", "constant", "poisson", "throughput", "concurrent", "replay", "open-loop-at-measured-rate"]),
            help="Arrival strategy (guidellm semantics).",
        ),
        click.option("--rate", type=float, help="Request rate, requests per second (constant/poisson)."),
        click.option("--concurrency", type=int, help="Closed-loop users (concurrent) or in-flight cap (throughput)."),
        click.option("--horizon", type=float, help="Stop the simulated clock at this many seconds."),
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override any config field, e.g. --set workload.prefix_tokens=512 (repeatable)."),
        click.option("--output-dir", "-o", type=click.Path(file_okay=False), help="Results directory (default results/<command>)."),
        click.option("--no-plots", is_flag=True, help="Skip PNG plots."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bar."),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def executor_options(func):
    func = click.option("--ray-address", help="Ray cluster address (with --executor ray); default: start a local Ray.")(func)
    func = click.option("--workers", type=int, help="Worker processes (default: one per CPU).")(func)
    func = click.option(
        "--executor", type=click.Choice(["process", "serial", "ray"]), default="process", show_default=True,
        help="Where the independent simulations run.",
    )(func)
    return func


def _split(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    flags = {k: kwargs.pop(k) for k in list(kwargs) if k in FLAG_PATHS}
    return flags, kwargs


def handle_errors(func):
    """Turn servesim's input errors into one message and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ConfigError as err:
            err_console.print(f"[bold red]error:[/] {err}", markup=True, highlight=False)
            sys.exit(2)
        except ServesimError as err:
            err_console.print(f"[bold red]internal error:[/] {err}")
            sys.exit(1)
        except KeyboardInterrupt:
            err_console.print("interrupted: no partial result files were written")
            sys.exit(130)
        except MemoryError:
            err_console.print("[bold red]error:[/] out of memory: lower workload.num_requests or server.num_gpu_blocks, or use --stream")
            sys.exit(2)

    return wrapper


# ------------------------------------------------------------------ display


def _fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if x != x:
            return "-"
        return f"{x:.{digits}f}"
    return str(x)


def summary_table(rows: list[tuple[str, Any, dict, bool | None]], title: str) -> Table:
    """rows: (label, offered rate, summary, stable)."""
    t = Table(title=title, title_justify="left", header_style="bold")
    cols = [
        ("point", "left"), ("offered r/s", "right"), ("req/s", "right"), ("out tok/s", "right"),
        ("TTFT mean", "right"), ("TTFT p99", "right"), ("TPOT mean", "right"), ("TPOT p99", "right"),
        ("E2E mean", "right"), ("E2E p99", "right"), ("mixed %", "right"), ("preempt", "right"), ("stable", "center"),
    ]
    for name, just in cols:
        t.add_column(name, justify=just)
    for label, offered, s, stable in rows:
        mixed = 100.0 * s["num_mixed_steps"] / s["num_steps"] if s["num_steps"] else float("nan")
        t.add_row(
            label, _fmt(offered, 2), _fmt(s["requests_per_s"], 2), _fmt(s["output_tokens_per_s"], 0),
            _fmt(s["ttft_mean_ms"]), _fmt(s["ttft_p99_ms"]), _fmt(s["tpot_mean_ms"], 2), _fmt(s["tpot_p99_ms"], 2),
            _fmt(s["e2e_mean_ms"], 0), _fmt(s["e2e_p99_ms"], 0), _fmt(mixed), str(s["num_preemptions"]),
            "-" if stable is None else ("yes" if stable else "NO"),
        )
    t.caption = "latencies in ms; req/s and tok/s over first arrival → last finish"
    return t


class _Progress:
    """A rich progress bar on stderr (silent with --quiet)."""

    def __init__(self, quiet: bool, label: str) -> None:
        self.quiet = quiet
        self.label = label
        self.bar = None
        self.task = None

    def __enter__(self):
        if not self.quiet and err_console.is_terminal:
            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=err_console, transient=False,
            )
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def phase(self, description: str, total: int):
        if self.quiet:
            return None
        if not err_console.is_terminal:
            # logs and pipes: a plain line at every tenth instead of a redrawn bar
            start = time.perf_counter()
            state = {"next": 1}  # next tenth to report

            def log_line(done: int, _total: int) -> None:
                if state["next"] <= 10 and done * 10 >= state["next"] * total:
                    state["next"] = done * 10 // max(total, 1) + 1
                    err_console.print(f"{description}: {done}/{total} ({100 * done // max(total, 1)} %) after {time.perf_counter() - start:.1f} s")

            return log_line
        self.task = self.bar.add_task(description, total=total)

        def update(done: int, _total: int) -> None:
            self.bar.update(self.task, completed=done)

        return update


def _out_dir(kwargs: dict[str, Any], command: str) -> Path:
    return Path(kwargs.get("output_dir") or Path("results") / command)


def _write_common(out: Path, cfg: RunConfig, fmt: str) -> None:
    from .cli_output import write_yaml

    write_yaml(out / "config.yaml", {"source_format": fmt, **cfg.model_dump(mode="json")})


def _write_guidellm(out: Path, results: list, cfg: RunConfig) -> None:
    from .cli_output import write_json

    try:
        from .guidellm_report import build_report
    except ImportError:  # the exporter is optional at import time
        return
    write_json(out / "benchmarks.json", build_report(results, model=cfg.model))


# ------------------------------------------------------------------ commands


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="servesim")
@click.pass_context
def main(ctx: click.Context) -> None:
    """servesim: simulate a vLLM-like LLM server (V1 scheduling, paged KV, chunked prefill,
    mixed batches) with a roofline step-cost model, in seconds on a laptop.

    With no command, runs a sweep of the embedded default (Llama-2-7B on one H100) and
    writes results/default/.
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(sweep, output_dir="results/default")


STREAM_THRESHOLD_REQUESTS = 100_000


def intervals_option(func):
    return click.option(
        "--intervals", is_flag=True,
        help="Add 90 % prediction intervals (needs --calibration: bootstrap replicates + cross-validated residuals).",
    )(func)


def _intervals(cfgs: list, results: list, opts: dict, prog) -> list:
    """Prediction intervals for each (config, result) pair, or [] without --intervals."""
    if not opts.get("intervals"):
        return []
    from .calibrate_cli import intervals_for_configs
    from .executor import run_many

    def summaries(reps):
        done = run_many(reps, opts.get("executor", "process"), opts.get("workers"),
                        prog.phase("interval replicates", len(reps)), opts.get("ray_address"))
        return [r.summary for r in done]

    return intervals_for_configs(cfgs, [r.summary for r in results], summaries)


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
            cells.append(f"{_fmt(s[k], 1)} [{_fmt(lo, 1)}, {_fmt(hi, 1)}]")
        t.add_row(label, *cells)
    return t


@main.command()
@common_options
@intervals_option
@click.option(
    "--stream/--no-stream", default=None,
    help=f"Stream records to disk in chunks (bounded memory); default: on above {STREAM_THRESHOLD_REQUESTS:,} requests.",
)
@handle_errors
def run(config: str | None, **kwargs: Any) -> None:
    """Simulate one run of CONFIG (YAML: servesim, guidellm profile or inference-perf config)."""
    from .cli_output import StreamingParquet, header, run_entry, write_figure, write_json, write_run_tables
    from .simulation import Simulation

    stream = kwargs.pop("stream")
    flags, opts = _split(kwargs)
    cfg, fmt = build_config(config, flags, opts["sets"])
    out = _out_dir(opts, "run")
    t0 = time.perf_counter()
    n = cfg.workload.num_requests or 0
    if stream is None:
        stream = n > STREAM_THRESHOLD_REQUESTS
    writer = None
    if stream:
        writer = StreamingParquet({"requests": out / "runs/run/requests.parquet", "steps": out / "runs/run/steps.parquet"})
    try:
        sim = Simulation(cfg, spill=writer)
        with _Progress(opts["quiet"], "run") as prog:
            res = sim.run(progress=prog.phase("requests", len(sim.workload)))
        if writer is not None:
            writer.commit()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    with _Progress(opts["quiet"], "intervals") as prog:
        ivs = _intervals([cfg], [res], opts, prog)
    wall = time.perf_counter() - t0
    _write_common(out, cfg, fmt)
    if writer is None:
        write_run_tables(out, "run", res)
    entry = run_entry("run", res)
    if ivs:
        entry["intervals_90"] = ivs[0]
    write_json(out / "summary.json", {**header(cfg), "runs": [entry]})
    if not res.derived.get("streamed"):  # the guidellm report needs the full request table
        _write_guidellm(out, [res], cfg)
    if not opts["no_plots"] and len(res.steps):  # streamed runs keep no steps in memory
        from .plots import batch_composition

        write_figure(out / "plots" / "batch_composition.png", batch_composition(res))
    s = res.summary
    label = cfg.arrival.strategy + (f"@{cfg.arrival.rate_rps:g}" if cfg.arrival.rate_rps else "")
    out_console.print(summary_table([(label, cfg.arrival.rate_rps, s, None)], f"servesim run — {cfg.model} on {cfg.tensor_parallel_size}x {cfg.gpu}, {cfg.cost.model}/{effective_formula(cfg)}"))
    if ivs:
        out_console.print(interval_table([(label, s, ivs[0])], f"prediction intervals (calibration {cfg.cost.calibration})"))
    out_console.print(
        f"requests: {s['num_finished']} finished, {s['num_rejected']} rejected, {s['num_in_flight']} in flight, "
        f"{s['num_not_sent']} not sent; KV blocks {res.derived['num_gpu_blocks']}, budget {res.derived['max_num_batched_tokens']} tokens"
    )
    out_console.print(f"results: {out}/")
    err_console.print(f"simulated {s['num_requests']} requests, {s['num_steps']} steps in {wall:.2f} s wall")


@main.command()
@common_options
@executor_options
@intervals_option
@click.option("--num-points", type=int, help="Benchmarks in the sweep incl. synchronous and throughput (guidellm --rate).")
@click.option("--rates", help="Explicit comma-separated request rates (req/s) instead of guidellm's rule.")
@handle_errors
def sweep(config: str | None = None, **kwargs: Any) -> None:
    """Sweep request rates guidellm-style and find the saturation point.

    A synchronous point, a throughput point, then constant (or Poisson) rates spread between
    their achieved rates; reports latency and throughput per rate and the highest rate whose
    queueing stays bounded.
    """
    from .cli_output import header, run_entry, write_figure, write_json, write_run_tables
    from .executor import run_many
    from .sweep import run_sweep

    kwargs = {**{k: None for k in FLAG_PATHS}, "sets": (), "output_dir": None, "no_plots": False, "quiet": False,
              "executor": "process", "workers": None, "ray_address": None, "num_points": None, "rates": None,
              "intervals": False, **kwargs}
    flags, opts = _split(kwargs)
    sets = list(opts["sets"])
    if opts["num_points"] is not None:
        sets.append(f"sweep.num_points={opts['num_points']}")
    if opts["rates"]:
        try:
            rates = [float(r) for r in opts["rates"].split(",") if r.strip()]
        except ValueError:
            raise ConfigError(f"--rates: expected comma-separated numbers, got {opts['rates']!r}") from None
        sets.append(f"sweep.rates_rps={rates}")
    cfg, fmt = build_config(config, flags, tuple(sets))
    out = _out_dir(opts, "sweep")
    t0 = time.perf_counter()
    with _Progress(opts["quiet"], "sweep") as prog:
        calls = {"n": 0}

        def many(cfgs):
            calls["n"] += 1
            name = "anchors (synchronous, throughput)" if calls["n"] == 1 and cfg.sweep.rates_rps is None else "rate points"
            return run_many(cfgs, opts["executor"], opts["workers"], prog.phase(name, len(cfgs)), opts["ray_address"])

        result = run_sweep(cfg, many)
        ivs = _intervals([p.result.config for p in result.points], [p.result for p in result.points], opts, prog)
    wall = time.perf_counter() - t0
    _write_common(out, cfg, fmt)
    for p in result.points:
        write_run_tables(out, p.label, p.result)
    write_json(
        out / "summary.json",
        {
            **header(cfg),
            "saturation_rps": result.saturation_rps,
            "max_throughput_rps": result.max_throughput_rps,
            "full_batch_capacity_rps": result.full_batch_capacity_rps,
            "notes": result.notes,
            "runs": [
                {**run_entry(p.label, p.result, p.rate_rps, p.stable), **({"intervals_90": ivs[i]} if ivs else {})}
                for i, p in enumerate(result.points)
            ],
        },
    )
    _write_guidellm(out, [p.result for p in result.points], cfg)
    if not opts["no_plots"]:
        from .plots import batch_composition, latency_vs_rate, throughput_vs_offered

        title = f"{cfg.model}, {cfg.tensor_parallel_size}x {cfg.gpu}, {effective_formula(cfg)}"
        write_figure(out / "plots" / "latency_vs_rate.png", latency_vs_rate(result, title, ivs or None))
        write_figure(out / "plots" / "throughput_vs_offered.png", throughput_vs_offered(result, title))
        busiest = max(result.points, key=lambda p: p.result.summary["mean_batch_tokens"])  # the most loaded point
        write_figure(out / "plots" / "batch_composition.png", batch_composition(busiest.result, f"batch composition: {busiest.label}"))
    rows = [(p.label, p.rate_rps, p.result.summary, p.stable) for p in result.points]
    out_console.print(summary_table(rows, f"servesim sweep — {cfg.model} on {cfg.tensor_parallel_size}x {cfg.gpu}, {cfg.cost.model}/{effective_formula(cfg)}"))
    if ivs:
        out_console.print(interval_table([(p.label, p.result.summary, iv) for p, iv in zip(result.points, ivs)],
                                         f"prediction intervals (calibration {cfg.cost.calibration})"))
    sat = "-" if result.saturation_rps is None else f"{result.saturation_rps:.3g} req/s"
    out_console.print(f"saturation point: {sat}; max throughput: {result.max_throughput_rps:.3g} req/s")
    for note in result.notes:
        out_console.print(f"note: {note}")
    out_console.print(f"results: {out}/")
    err_console.print(f"{len(result.points)} points in {wall:.2f} s wall")


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


@main.command()
@common_options
@executor_options
@click.option("--slo", help="SLOs in milliseconds, e.g. ttft_p99=500,tpot_p99=50 (also e2e_p99; per-request ttft, tpot for goodput).")
@handle_errors
def capacity(config: str | None, **kwargs: Any) -> None:
    """Find the highest request rate that meets the SLOs, and its goodput."""
    from .cli_output import header, run_entry, write_json, write_run_tables
    from .executor import run_many
    from .sweep import find_capacity

    slo_text = kwargs.pop("slo")
    flags, opts = _split(kwargs)
    sets = list(opts["sets"])
    if slo_text:
        for k, v in parse_slo(slo_text).items():
            sets.append(f"slo.{k}={v}")
    cfg, fmt = build_config(config, flags, tuple(sets))
    out = _out_dir(opts, "capacity")
    with _Progress(opts["quiet"], "capacity") as prog:
        def many(cfgs):
            return run_many(cfgs, opts["executor"], opts["workers"], prog.phase("search", len(cfgs)), opts["ray_address"])

        cap = find_capacity(cfg, many)
    _write_common(out, cfg, fmt)
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
    for r, ok, v in cap.tried:
        t.add_row(f"{r:.3f}", "yes" if ok else "no", "; ".join(v))
    out_console.print(t)
    if cap.capacity_rps is None:
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


@main.command(name="compare")
@common_options
@executor_options
@click.option("--policies", help="Comma-separated scheduler policies (first = baseline), e.g. vllm-v1,sarathi.")
@click.option("--formulas", help="Comma-separated mixed-batch formulas, e.g. weighted-average,additive.")
@click.option("--seeds", "num_seeds", type=int, default=5, show_default=True, help="Seeds per arm (paired across arms).")
@click.option("--rates", help="Compare at each of these request rates (req/s), comma-separated.")
@handle_errors
def compare_cmd(config: str | None, **kwargs: Any) -> None:
    """Compare policies and/or formulas over seeds, with 95 % intervals and paired differences."""
    from .cli_output import header, write_figure, write_json, write_parquet
    from .compare import compare
    from .executor import run_many

    policies_text, formulas_text, num_seeds, rates_text = (kwargs.pop(k) for k in ("policies", "formulas", "num_seeds", "rates"))
    flags, opts = _split(kwargs)
    cfg, fmt = build_config(config, flags, opts["sets"])
    policies = _csv(policies_text) or [cfg.scheduler.policy]
    formulas = _csv(formulas_text) or [effective_formula(cfg)]
    rates = [_float(r, "--rates") for r in _csv(rates_text)] if rates_text else None
    out = _out_dir(opts, "compare")
    with _Progress(opts["quiet"], "compare") as prog:
        def many(cfgs):
            return run_many(cfgs, opts["executor"], opts["workers"], prog.phase("runs", len(cfgs)), opts["ray_address"])

        runs, table = compare(cfg, many, policies, formulas, num_seeds, rates)
    _write_common(out, cfg, fmt)
    write_parquet(out / "runs.parquet", runs)
    from .cli_output import atomic_write_bytes

    atomic_write_bytes(out / "compare.csv", table.to_csv(index=False).encode())
    write_json(out / "summary.json", {**header(cfg), "policies": policies, "formulas": formulas, "seeds": num_seeds,
                                      "rates_rps": rates, "statistics": table.to_dict(orient="records")})
    if not opts["no_plots"]:
        from .plots import comparison

        write_figure(out / "plots" / "compare.png", comparison(table))
    show = ["ttft_mean_ms", "tpot_mean_ms", "e2e_mean_ms", "output_tokens_per_s"]
    for rate in (rates or [None]):
        sub = table[table["rate_rps"].isna()] if rate is None else table[table["rate_rps"] == rate]
        t = Table(title=f"compare over {num_seeds} seeds" + (f" at {rate:g} req/s" if rate else "") + " — mean [95% CI]; Δ = paired difference to the first arm",
                  title_justify="left", header_style="bold")
        t.add_column("arm")
        for m in show:
            t.add_column(m, justify="right")
        for arm in sub["arm"].unique():
            cells = []
            for m in show:
                r = sub[(sub["arm"] == arm) & (sub["metric"] == m)].iloc[0]
                cell = f"{r['mean']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
                if "diff_mean" in r and r["diff_mean"] == r["diff_mean"]:
                    star = "*" if r["diff_excludes_zero"] else ""
                    cell += f"\nΔ {r['diff_mean']:+.2f} [{r['diff_low']:+.2f}, {r['diff_high']:+.2f}]{star}"
                cells.append(cell)
            t.add_row(arm, *cells)
        t.caption = "* the paired-difference interval excludes zero"
        out_console.print(t)
    out_console.print(f"results: {out}/")


def _csv(text: str | None) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()] if text else []


def _float(text: str, field: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{field}: expected numbers, got {text!r}") from None


@main.command(name="list")
def list_cmd() -> None:
    """List models, GPUs, scheduler policies, cost models, formulas and arrival strategies."""
    from .arrival import ARRIVALS
    from .cost import COST_MODELS
    from .hardware import gpu_names
    from .models import catalogue_names
    from .scheduler import SCHEDULERS
    out_console.print("models:     " + ", ".join(catalogue_names()))
    out_console.print("gpus:       " + ", ".join(gpu_names()))
    for title, reg in (("policies", SCHEDULERS), ("cost models", COST_MODELS), ("arrivals", ARRIVALS)):
        out_console.print(f"{title}:")
        for name, doc in reg.describe().items():
            out_console.print(f"  {name:28s} {doc}")
    try:
        from .cost.combine import FORMULAS

        out_console.print("formulas:")
        for name, doc in FORMULAS.describe().items():
            out_console.print(f"  {name:28s} {doc}")
    except ImportError:
        pass


@main.command(name="config")
@common_options
@handle_errors
def config_cmd(config: str | None, **kwargs: Any) -> None:
    """Print the effective config (defaults, CONFIG, --set and flags merged) as YAML."""
    flags, opts = _split(kwargs)
    cfg, fmt = build_config(config, flags, opts["sets"])
    click.echo(f"# source format: {fmt}")
    click.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), nl=False)


def _register_validate() -> None:
    from .validate_cli import validate

    main.add_command(validate)


_register_validate()


def _register_calibrate() -> None:
    from .calibrate_cli import calibrate

    main.add_command(calibrate)


_register_calibrate()


if __name__ == "__main__":  # pragma: no cover
    main()
