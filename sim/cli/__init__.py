"""The ``servesim`` command line: one module per command, shared helpers in :mod:`sim.cli.common`."""

from sim.cli.main import main

__all__ = ["main"]
