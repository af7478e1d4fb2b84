"""One server run: the engine step loop (owns time) and the assembly of a run from a config."""
