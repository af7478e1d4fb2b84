"""What every command shares: the consoles, the error-to-exit-code rule, progress, common
options, small parsers and the prediction-interval step. Every command module imports this one;
it imports no command."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sim.errors import ConfigError, ServesimError

# a fixed width off-terminal keeps piped and logged tables aligned and complete
out_console = Console(highlight=False, markup=False, width=None if sys.stdout.isatty() else 150)  # no markup: labels and messages print as they are


err_console = Console(stderr=True, highlight=False, markup=False)


def common_options(func):
    """Options shared by run, sweep and capacity (vLLM's names for server flags)."""
    opts = [
        click.argument("config", required=False, type=click.Path(dir_okay=False)),
        click.option("--model", help="Model: catalogue name (see `servesim list`), HF id, or path to a config.json."),
        click.option("--gpu", help="GPU: catalogue name (H100, A100, L40S, …; `servesim list`) or a GPU YAML file (docs/hardware.md)."),
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
        click.option("--kv-offloading-size", type=float, help="CPU KV-offloading tier, GiB over all TP ranks (needs prefix caching; default off)."),
        click.option("--block-size", type=int, help="Tokens per KV block (vLLM default 16)."),
        click.option("--gpu-memory-utilization", type=float, help="Share of GPU memory for weights+KV, in (0, 1] (vLLM default 0.9)."),
        click.option("--num-gpu-blocks-override", type=int, help="KV blocks per GPU instead of deriving them from memory."),
        click.option("--max-model-len", type=int, help="Longest prompt+output, tokens (default: the model's)."),
        click.option(
            "--quantization", help="vLLM --quantization: fp8 (online, of a BF16 checkpoint) or the checkpoint's own scheme; default: the checkpoint's."
        ),
        click.option(
            "--kv-cache-dtype",
            type=click.Choice(["auto", "bfloat16", "float16", "fp8", "fp8_e4m3", "fp8_e5m2"]),
            help="vLLM --kv-cache-dtype: auto = the model's dtype; fp8 halves KV bytes.",
        ),
        click.option("--policy", help="Scheduler policy (default vllm-v1; see `servesim list`)."),
        click.option("--cost-model", help="Step-cost model: roofline | linear | fixed."),
        click.option(
            "--formula",
            help="Mixed-batch formula of the roofline: weighted-average | smooth-wa | additive | max (default: the calibration's, else weighted-average).",
        ),
        click.option("--gemm-m", type=click.Choice(["tokens", "requests"]), help="GEMM M sizing: tokens (physical) or requests (seed study)."),
        click.option("--mfu-lookup", type=click.Choice(["nearest", "interpolate"]), help="MFU table lookup mode."),
        click.option("--bench-data", type=click.Path(file_okay=False), help="Microbenchmark directory (bench_data/) for MFU tables."),
        click.option(
            "--calibration",
            help="Fitted cost knobs: a shipped name (default h100, transferred to any GPU), a YAML path from `calibrate`, or none (the seed roofline).",
        ),
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
            "--request-timeout",
            type=float,
            help="Client timeout per request, seconds from its send (inference-perf load.request_timeout): an unfinished request fails as timed_out and the server aborts it; default: wait forever.",
        ),
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


def table_options(func):
    """``--wide`` and ``--format`` for the commands that print a summary table (run, sweep)."""
    func = click.option(
        "--format",
        "out_format",
        type=click.Choice(["table", "json", "csv"]),
        default="table",
        show_default=True,
        help="stdout: the summary table, summary.json's content, or one CSV row per point (the files are written either way).",
    )(func)
    func = click.option("--wide", is_flag=True, help="The full table even on a narrow terminal (default: p99 columns only below 140 columns).")(func)
    func = click.option(
        "--sample-requests",
        "sample_requests",
        type=SampleRequests(),
        default="10000",
        show_default=True,
        help="benchmarks.json: per-request records listed per status and benchmark, at most (a uniform sample beyond; guidellm's --sample-requests); 'all' lists every one. Metrics cover every request either way.",
    )(func)
    return func


class SampleRequests(click.ParamType):
    """A count >= 0, or ``all`` (None)."""

    name = "N|all"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text == "all":
            return None
        if text.isdigit():
            return int(text)
        self.fail(f"{value!r} is not a count of requests >= 0 or 'all'", param, ctx)


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
    """Turn servesim's input errors into one message and exit code 2; commit the command's
    result folders when it succeeds and delete their staging folders when it does not."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        pending_before = len(_PENDING)
        ok = False
        opened = False  # whether the command had made its result folder when it failed
        committed = False  # whether its results are in place (a signal may still come after)
        try:
            try:
                out = func(*args, **kwargs)
                # Ctrl-C / SIGTERM wait until every folder is committed (a signal between the
                # two renames of a commit would leave the target absent); one that came
                # meanwhile is raised when they are unblocked, with the new results in place
                with _signals_deferred():
                    for folder in _PENDING[pending_before:]:
                        folder.commit()
                    committed = ok = True
                return out
            finally:
                opened = len(_PENDING) > pending_before
                if not ok:
                    for folder in _PENDING[pending_before:]:
                        folder.abort()
                del _PENDING[pending_before:]
        except ConfigError as err:
            err_console.print(f"[bold red]error:[/] {escape(str(err))}", markup=True, highlight=False)
            sys.exit(2)
        except ServesimError as err:
            err_console.print(f"[bold red]internal error:[/] {escape(str(err))}", markup=True)
            sys.exit(1)
        except (KeyboardInterrupt, Terminated) as stop:
            word, code = ("interrupted", 130) if isinstance(stop, KeyboardInterrupt) else ("terminated", 143)
            if committed:
                err_console.print(f"{word} after the run was complete: the result folder holds the new results, whole")
            else:
                err_console.print(f"{word}: the result folder was left as it was (no partial result files were written)")
            sys.exit(code)
        except MemoryError:
            err_console.print("[bold red]error:[/] out of memory: lower workload.num_requests or server.num_gpu_blocks, or use --stream")
            sys.exit(2)
        except OSError as err:  # a full disk, a file-size limit, a path too long, a folder made read-only mid-run
            where = f" ({short_path(err.filename)})" if getattr(err, "filename", None) else ""
            kept = "; the previous result folder is unchanged" if opened else ""
            what = err.strerror or str(err)
            if "Detail:" in what:  # pyarrow's "Error writing bytes to file. Detail: [errno 28] <the OS's reason>"
                detail = what.split("Detail:", 1)[1].strip()
                what = detail.split("]", 1)[1].strip() if detail.startswith("[errno") and "]" in detail else detail or what
            err_console.print(f"[bold red]error:[/] {escape(what)}{escape(where)}{kept}", markup=True, highlight=False)
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


class ResultFolder:
    """A command's result folder, written whole or not at all.

    The command writes into a hidden staging folder beside the target
    (``.NAME.partial-PID``); :meth:`commit` renames the previous result aside, the staging
    folder into place and deletes the previous one, so the target holds one run — the new one
    after success, the old one (untouched) after an error, an interrupt or a full disk. Between
    the two renames (microseconds) the target is absent and the old result is at
    ``.NAME.previous-PID``.
    """

    def __init__(self, final: Path) -> None:
        self.final = final
        self.staging = final.parent / f".{final.name}.partial-{os.getpid()}"

    MARKER = ".servesim-result"  # written into every result folder: only such a folder is replaced
    KNOWN = ("summary.json", "report.md", "config.yaml")  # result folders written before the marker

    def open(self) -> Path:
        """Create the staging folder (checks the target is writable before any work). A target
        that exists must be empty or a servesim result folder: it is replaced whole."""
        for path in (self.final, *self.final.parents):
            if path.exists() and not path.is_dir():
                raise ConfigError(f"-o {self.final}: {path} is a file, not a folder; choose a folder for the results")
        if self.final.is_dir() and any(self.final.iterdir()) and not any((self.final / n).exists() for n in (self.MARKER, *self.KNOWN)):
            raise ConfigError(
                f"-o {self.final}: holds files that are not a servesim result, and a result folder is replaced whole; choose a new or empty folder"
            )
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            if self.staging.exists():
                shutil.rmtree(self.staging)
            self.staging.mkdir()
            (self.staging / self.MARKER).write_text("written by servesim; the folder is replaced whole by the next run into it\n")
        except OSError as err:
            raise ConfigError(f"-o {short_path(self.final)}: cannot write results there ({err.strerror or err}); choose another folder with -o") from None
        return self.staging

    def commit(self) -> None:
        previous = self.final.parent / f".{self.final.name}.previous-{os.getpid()}"
        try:
            if self.final.exists():
                self.final.rename(previous)
            self.staging.rename(self.final)
        except OSError as err:
            if previous.exists() and not self.final.exists():
                previous.rename(self.final)  # put the old result back
            raise ConfigError(f"-o {self.final}: could not move the results into place ({err.strerror or err}); the previous result is unchanged") from None
        shutil.rmtree(previous, ignore_errors=True)

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


@contextlib.contextmanager
def _signals_deferred():
    """SIGINT and SIGTERM held back inside the block: noted by stand-in handlers and raised
    (KeyboardInterrupt / Terminated) when it ends. Python handlers, not a signal mask: any
    thread of the process (pyarrow's, BLAS's) may receive a signal, but Python runs handlers
    in the main thread only, so none can raise inside the block."""
    came: list[int] = []

    def note(signum, _frame) -> None:
        came.append(signum)

    try:
        previous = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: nothing to hold back with
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if came:
        raise KeyboardInterrupt() if came[0] == signal.SIGINT else Terminated()


class Terminated(BaseException):
    """SIGTERM arrived (raised by the CLI's handler, like KeyboardInterrupt for SIGINT)."""


def raise_terminated(signum, frame) -> None:
    raise Terminated()


_PENDING: list[ResultFolder] = []  # result folders of the running command, committed by handle_errors


def short_path(path: Any, keep: int = 100) -> str:
    """``path`` for a message: whole when short, else its start and end around an ellipsis (a
    one-megabyte name is not printed whole)."""
    text = str(path)
    return text if len(text) <= keep else f"{text[: keep // 2]}…{text[-keep // 2 :]} ({len(text)} characters)"


def out_dir(kwargs: dict[str, Any], command: str) -> Path:
    """The folder a command writes into: a staging folder that :func:`handle_errors` moves
    onto ``-o`` (default ``results/COMMAND``) when the command succeeds, and deletes otherwise.
    Print :func:`final_path` of it, not the staging path."""
    folder = ResultFolder(Path(kwargs.get("output_dir") or Path("results") / command))
    path = folder.open()
    _PENDING.append(folder)
    return path


def final_path(out: Path) -> Path:
    """Where the results in ``out`` (an :func:`out_dir` folder) will be once committed."""
    for folder in _PENDING:
        if folder.staging == out:
            return folder.final
    return out


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
