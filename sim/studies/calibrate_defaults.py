"""Defaults of the calibration pipeline, apart from it: the CLI's options show them without
importing the fitting machinery (pandas, scipy, the simulator)."""

DEFAULT_FIT_MAX_REQUESTS = 200  # request cap per point while fitting
DEFAULT_EVAL_MAX_REQUESTS = 1000  # request cap per point when scoring a fit
DEFAULT_BOOTSTRAP = 8  # bootstrap replicates over experiments
DEFAULT_MAXFEV = 50  # simulation budget of the optimiser

# the formula that cross-validated best on the shipped H100 data (docs/calibration.md:
# smooth-wa 11.5 / 6.5 / 8.3 % CV E2E / TPOT / TTFT, weighted-average 32.1 / 14.8 / 43.6 %)
DEFAULT_CALIBRATE_FORMULA = "smooth-wa"

DEFAULT_FIT_KNOBS = (
    "bw_efficiency",
    "per_layer_overhead_us",
    "per_step_overhead_us",
    "prefill_compute_scale",
    "decode_compute_scale",
    "mixed_penalty",
    "allreduce_efficiency",
    "frontend_latency_ms",
    "frontend_us_per_prompt_token",
    "allreduce_latency_us",
)
