"""What every command shares: the consoles, the error-to-exit-code rule, progress, common
options, small parsers and the prediction-interval step. Every command module imports this one;
it imports no command."""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sim.errors import ConfigError, ServesimError

# a fixed width off-terminal keeps piped and logged tables aligned and complete
out_console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)


err_console = Console(stderr=True, highlight=False)


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
        click.option(
            "--async-scheduling/--no-async-scheduling",
            default=None,
            help="Plan step k+1 while step k runs: a new request joins step k+2 at the earliest (default off).",
        ),
        click.option("--block-size", type=int, help="Tokens per KV block (vLLM default 16)."),
        click.option("--gpu-memory-utilization", type=float, help="Share of GPU memory for weights+KV, in (0, 1] (vLLM default 0.9)."),
        click.option("--num-gpu-blocks-override", type=int, help="KV blocks per GPU instead of deriving them from memory."),
        click.option("--max-model-len", type=int, help="Longest prompt+output, tokens (default: the model's)."),
        click.option("--policy", help="Scheduler policy (default vllm-v1; see `servesim list`)."),
        click.option("--cost-model", help="Step-cost model: roofline | linear | fixed."),
        click.option(
            "--formula",
            help="Mixed-batch formula of the roofline: weighted-average | smooth-wa | additive | max (default: the calibration's, else weighted-average).",
        ),
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
        click.option(
            "--replicas",
            "--data-parallel-size",
            "replicas",
            type=int,
            help="Identical replicas behind a router (a one-group cluster; vLLM --data-parallel-size).",
        ),
        click.option("--router", help="Fleet router (default round-robin; see `servesim list`)."),
        click.option(
            "--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override any config field, e.g. --set workload.prefix_tokens=512 (repeatable)."
        ),
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
        "--executor",
        type=click.Choice(["process", "serial", "ray"]),
        default="process",
        show_default=True,
        help="Where the independent simulations run.",
    )(func)
    return func


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


class ProgressBars:
    """A rich progress bar on stderr (silent with --quiet)."""

    def __init__(self, quiet: bool, label: str) -> None:
        self.quiet = quiet
        self.label = label
        self.bar: Progress | None = None
        self.task: Any = None

    def __enter__(self):
        if not self.quiet and err_console.is_terminal:
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err_console,
                transient=False,
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
        bar = self.bar
        if bar is None:  # a terminal but the bar not entered: no progress to show
            return None
        self.task = task = bar.add_task(description, total=total)

        def update(done: int, _total: int) -> None:
            bar.update(task, completed=done)

        return update


def out_dir(kwargs: dict[str, Any], command: str) -> Path:
    return Path(kwargs.get("output_dir") or Path("results") / command)


STREAM_THRESHOLD_REQUESTS = 100_000


def intervals_option(func):
    return click.option(
        "--intervals",
        is_flag=True,
        help="Add 90 % prediction intervals (needs --calibration: bootstrap replicates + cross-validated residuals).",
    )(func)


def compute_intervals(cfgs: list, results: list, opts: dict, prog) -> list:
    """Prediction intervals for each (config, result) pair, or [] without --intervals."""
    if not opts.get("intervals"):
        return []
    from sim.studies.executor import run_many
    from sim.studies.intervals import intervals_for_configs

    def summaries(reps):
        done = run_many(reps, opts.get("executor", "process"), opts.get("workers"), prog.phase("interval replicates", len(reps)), opts.get("ray_address"))
        return [r.summary for r in done]

    return intervals_for_configs(cfgs, [r.summary for r in results], summaries)


def parse_csv(text: str | None) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()] if text else []


def parse_float(text: str, field: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{field}: expected numbers, got {text!r}") from None
