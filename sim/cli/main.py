"""The ``servesim`` command group (also ``python -m sim``).

Commands: ``run``, ``sweep``, ``capacity``, ``plan``, ``compare``, ``list``, ``config``, ``validate``,
``calibrate`` — one module each in :mod:`sim.cli`, registered here and nowhere else. With no
command, runs a sweep of the embedded default config. Bad input exits with code 2 and one clear
message (no traceback); results go to files and an aligned summary to stdout; progress and wall
times to stderr.
"""

from __future__ import annotations

import importlib
import signal
import threading

import click

from sim.cli.common import raise_terminated
from sim.version import __version__

# name → (module, attribute, one-line help). Commands load when invoked, so `servesim --help`
# and a command's own start do not import every other command's dependencies (pandas, the
# simulator, matplotlib); tests/test_cli.py checks these lines match the commands' docstrings.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("sim.cli.run", "run", "Simulate one run of CONFIG (YAML: servesim, guidellm profile or inference-perf config)."),
    "sweep": ("sim.cli.sweep", "sweep", "Sweep request rates guidellm-style and find the saturation point."),
    "capacity": (
        "sim.cli.capacity",
        "capacity",
        "Find the highest request rate that meets the SLOs and its goodput, or (--find replicas) the fewest replicas that meet them at --rate.",
    ),
    "plan": (
        "sim.cli.plan",
        "plan_cmd",
        "Find the cheapest deployment (GPU type, tensor parallelism, replicas) that meets the SLOs at --rate, with prediction intervals.",
    ),
    "compare": (
        "sim.cli.compare",
        "compare_cmd",
        "Compare policies, formulas and/or fleet routers over seeds, with 95 % intervals and paired differences.",
    ),
    "list": (
        "sim.cli.listing",
        "list_cmd",
        "List models, GPUs, scheduler policies, cost models, formulas, arrival strategies, and the fleet's routers, admission policies and KV-transfer links.",
    ),
    "config": ("sim.cli.listing", "config_cmd", "Print the effective config (defaults, CONFIG, --set and flags merged) as YAML."),
    "validate": ("sim.cli.validate", "validate", "Simulate every measured point of GROUND_TRUTH and report the errors (MAPE)."),
    "calibrate": (
        "sim.cli.calibrate",
        "calibrate",
        "Fit the cost model's calibration knobs to GROUND_TRUTH (one set per GPU), cross-validate leave-one-experiment-out, "
        "bootstrap prediction intervals, and save the calibration.",
    ),
}


def load_command(name: str) -> click.Command:
    module, attribute, _ = COMMANDS[name]
    return getattr(importlib.import_module(module), attribute)


class LazyGroup(click.Group):
    """A click group whose commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return load_command(cmd_name) if cmd_name in COMMANDS else None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, text) for name, (_, _, text) in COMMANDS.items()])


def _show_warnings_plainly(ctx: click.Context) -> None:
    """Library warnings (e.g. an MFU table shape borrowed from a neighbour) reach the user as
    one ``warning: …`` line on stderr, each text once, not as Python's file:line report."""
    import warnings

    seen: set[str] = set()
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = str(message)
        if text not in seen:
            seen.add(text)
            click.echo(f"warning: {text}", err=True)

    warnings.showwarning = show
    ctx.call_on_close(lambda: setattr(warnings, "showwarning", previous))


@click.group(cls=LazyGroup, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="servesim")
@click.pass_context
def main(ctx: click.Context) -> None:
    """servesim: simulate a vLLM-like LLM server (V1 scheduling, paged KV, chunked prefill,
    mixed batches) with a roofline step-cost model, in seconds on a laptop.

    With no command, runs a sweep of the embedded default (Llama-2-7B on one H100) and
    writes results/default/.
    """
    _show_warnings_plainly(ctx)
    if threading.current_thread() is threading.main_thread():
        # SIGTERM ends a command as Ctrl-C does: workers stopped, the result folder untouched
        previous = signal.signal(signal.SIGTERM, raise_terminated)
        ctx.call_on_close(lambda: signal.signal(signal.SIGTERM, previous))
    if ctx.invoked_subcommand is None:
        ctx.invoke(load_command("sweep"), output_dir="results/default")


if __name__ == "__main__":  # pragma: no cover
    main()
