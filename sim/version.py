"""The servesim version (one place; the package metadata in pyproject.toml matches it)."""

__version__ = "0.1.0"
