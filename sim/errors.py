"""Exception types. Library code raises these; only the CLI turns them into exit codes."""


class ServesimError(Exception):
    """Base class of every error servesim raises on purpose."""


class ConfigError(ServesimError, ValueError):
    """Invalid user input: a config value, a file, a name. The message names the field and the fix."""


class SimulationError(ServesimError, RuntimeError):
    """An internal invariant broke during a simulation (a bug, never bad input)."""
