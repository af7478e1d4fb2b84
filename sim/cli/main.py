"""The ``servesim`` command group (also ``python -m sim``).

Commands: ``run``, ``sweep``, ``capacity``, ``compare``, ``list``, ``config``, ``validate``,
``calibrate`` — one module each in :mod:`sim.cli`, registered here and nowhere else. With no
command, runs a sweep of the embedded default config. Bad input exits with code 2 and one clear
message (no traceback); results go to files and an aligned summary to stdout; progress and wall
times to stderr.
"""

from __future__ import annotations

import signal
import threading

import click

from sim.cli.calibrate import calibrate
from sim.cli.capacity import capacity
from sim.cli.common import raise_terminated
from sim.cli.compare import compare_cmd
from sim.cli.listing import config_cmd, list_cmd
from sim.cli.run import run
from sim.cli.sweep import sweep
from sim.cli.validate import validate
from sim.version import __version__


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="servesim")
@click.pass_context
def main(ctx: click.Context) -> None:
    """servesim: simulate a vLLM-like LLM server (V1 scheduling, paged KV, chunked prefill,
    mixed batches) with a roofline step-cost model, in seconds on a laptop.

    With no command, runs a sweep of the embedded default (Llama-2-7B on one H100) and
    writes results/default/.
    """
    if threading.current_thread() is threading.main_thread():
        # SIGTERM ends a command as Ctrl-C does: workers stopped, the result folder untouched
        previous = signal.signal(signal.SIGTERM, raise_terminated)
        ctx.call_on_close(lambda: signal.signal(signal.SIGTERM, previous))
    if ctx.invoked_subcommand is None:
        ctx.invoke(sweep, output_dir="results/default")


for _command in (run, sweep, capacity, compare_cmd, list_cmd, config_cmd, validate, calibrate):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
