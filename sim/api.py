"""The Python API: what the commands do, as calls that return objects with pandas DataFrames.

Every function takes ``config`` the way the command line takes ``CONFIG``, plus ``overrides``
the way it takes ``--set``:

* ``config``: None (the embedded default, ``sim/data/default.yaml``), a path to a YAML/JSON
  file (servesim, guidellm profile or inference-perf config, converted as the CLI converts it),
  a mapping read the same way, or a :class:`~sim.config.RunConfig`;
* ``overrides``: a mapping deep-merged over it (``{"server": {"max_num_seqs": 128}}``).

Invalid input raises :class:`~sim.errors.ConfigError` with the message the CLI would print.
Nothing here writes files; the result objects hold the tables (``.requests``, ``.steps``,
``.summary``) for the caller to save. Examples: ``docs/api.md`` (the test suite runs them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from typing import Any

from sim.config import RunConfig, merge, parse_run_config

ConfigLike = RunConfig | Mapping[str, Any] | str | PathLike | None


def load_config(config: ConfigLike = None, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """The effective config of ``config`` and ``overrides`` (see the module docstring)."""
    from sim.cli.config_input import default_config_dict, layer_config, read_config_file
    from sim.load.formats import convert

    if isinstance(config, RunConfig):
        data = config.model_dump(mode="json")
    elif config is None:
        data = default_config_dict()
    elif isinstance(config, Mapping):
        data = layer_config(default_config_dict(), convert(dict(config))[1])  # as the CLI layers CONFIG
    else:
        data = layer_config(default_config_dict(), read_config_file(str(config))[1])
    if overrides:
        data = merge(data, dict(overrides))
    return parse_run_config(data, source=None if config is None or isinstance(config, (Mapping, RunConfig)) else str(config))


def _slo_ms(slo: Mapping[str, float]) -> dict[str, float]:
    """SLO bounds keyed as the config keys them: ``ttft_p99`` or ``ttft_p99_ms`` → ``ttft_p99_ms``."""
    return {k if k.endswith("_ms") else f"{k}_ms": v for k, v in slo.items()}


def _many(executor: str, workers: int | None):
    from sim.studies.executor import run_many

    return lambda cfgs: run_many(cfgs, executor, workers)


def simulate(config: ConfigLike = None, overrides: Mapping[str, Any] | None = None):
    """One run (``servesim run``): a :class:`~sim.core.result.SimResult` with ``requests`` and
    ``steps`` DataFrames, the ``summary`` dict and ``derived`` server limits (and ``replicas``
    for a fleet). Deterministic: same config ⇒ identical tables."""
    from sim.core.simulation import simulate as run

    return run(load_config(config, overrides))


def sweep(config: ConfigLike = None, overrides: Mapping[str, Any] | None = None, *, executor: str = "process", workers: int | None = None):
    """A guidellm-style sweep (``servesim sweep``): a :class:`~sim.studies.sweep.SweepResult`
    with ``points`` (label, strategy, rate, ``result``, ``stable``), ``saturation_rps`` and
    ``max_throughput_rps``."""
    from sim.studies.sweep import run_sweep

    return run_sweep(load_config(config, overrides), _many(executor, workers))


def capacity(
    config: ConfigLike = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    slo: Mapping[str, float] | None = None,
    find: str = "rate",
    max_replicas: int = 256,
    executor: str = "process",
    workers: int | None = None,
):
    """``servesim capacity``. ``slo``: milliseconds, e.g. ``{"ttft_p99_ms": 500, "tpot_p99_ms": 50}``
    (over the config's ``slo``). ``find="rate"``: a :class:`~sim.studies.sweep.CapacityResult`
    (``capacity_rps``, ``goodput_rps``, ``tried``, the passing ``result``); ``find="replicas"``:
    a list of :class:`~sim.studies.replicas.ShapeResult` (fewest replicas per shape at the
    config's rate)."""
    from sim.errors import ConfigError

    extra: dict[str, Any] = {"slo": _slo_ms(slo)} if slo else {}
    cfg = load_config(config, merge(dict(overrides or {}), extra))
    if find == "rate":
        from sim.studies.sweep import find_capacity

        return find_capacity(cfg, _many(executor, workers))
    if find == "replicas":
        from sim.studies.replicas import fewest_replicas

        return fewest_replicas(cfg, _many(executor, workers), max_replicas=max_replicas)
    raise ConfigError(f"find: expected 'rate' or 'replicas', got {find!r}")


def compare(
    config: ConfigLike = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    policies: Sequence[str] | None = None,
    formulas: Sequence[str] | None = None,
    routers: Sequence[str] | None = None,
    seeds: int = 5,
    rates: Sequence[float] | None = None,
    executor: str = "process",
    workers: int | None = None,
):
    """``servesim compare``: arms (policies × formulas × routers; the first of each the baseline)
    over ``seeds`` paired seeds. Returns ``(runs, stats)``: one row per run with its metrics,
    and one row per (rate, arm, metric) with the mean, its 95 % interval and, for other arms,
    the paired difference to the baseline with its interval."""
    from sim.cost.calibration import effective_formula
    from sim.studies.compare import compare as run_compare

    cfg = load_config(config, overrides)
    return run_compare(
        cfg,
        _many(executor, workers),
        list(policies or [cfg.scheduler.policy]),
        list(formulas or [effective_formula(cfg)]),
        seeds,
        list(rates) if rates else None,
        list(routers) if routers else None,
    )


def plan(
    model: str | None = None,
    rate_rps: float | None = None,
    slo: Mapping[str, float] | None = None,
    gpus: Sequence[str] = ("H100", "A100", "L40S"),
    tp: Sequence[int] = (1, 2, 4, 8),
    *,
    config: ConfigLike = None,
    overrides: Mapping[str, Any] | None = None,
    max_num_seqs: Sequence[int] | None = None,
    max_num_batched_tokens: Sequence[int] | None = None,
    router: str | None = None,
    prices: Mapping[str, Any] | None = None,
    level: float = 0.9,
    interval_replicates: int = 4,
    max_replicas: int = 256,
    exhaustive: bool = False,
    executor: str = "process",
    workers: int | None = None,
):
    """``servesim plan``: the deployments that meet ``slo`` (ms, e.g. ``{"ttft_p99_ms": 500,
    "tpot_p99_ms": 50}``) at ``rate_rps``, as a DataFrame ranked cheapest first (columns of
    ``shapes.parquet``, docs/planning.md). ``prices``: USD per GPU-hour, ``{"H100": 2.5, …}``
    or a prices-file mapping (default: the shipped example, which goes stale)."""
    from sim.studies.executor import default_workers
    from sim.studies.plan import planning_config, resolve_prices, run_plan, shapes_for

    extra: dict[str, Any] = {}
    if model is not None:
        extra["model"] = model
    if slo is not None:
        extra["slo"] = _slo_ms(slo)
    if rate_rps is not None:
        extra["arrival"] = {"rate_rps": rate_rps, "concurrency": None}
    cfg = planning_config(load_config(config, merge(dict(overrides or {}), extra)), router)
    seqs: list[int | None] = list(max_num_seqs) if max_num_seqs else [None]
    mbts: list[int | None] = list(max_num_batched_tokens) if max_num_batched_tokens else [None]
    _, table = run_plan(
        cfg,
        shapes_for(list(gpus), list(tp), seqs, mbts),
        resolve_prices(prices),
        run_many=_many(executor, workers),
        level=level,
        interval_replicates=interval_replicates,
        max_replicas=max_replicas,
        exhaustive=exhaustive,
        concurrent_shapes=workers or default_workers(),
    )
    return table
