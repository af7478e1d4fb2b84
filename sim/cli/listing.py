"""``servesim list`` (what the registries and catalogues hold) and ``servesim config`` (the
effective config)."""

from __future__ import annotations

from typing import Any

import click
import yaml

from sim.cli.common import common_options, handle_errors, out_console
from sim.cli.config_input import build_config, split_flags


@click.command(name="list")
def list_cmd() -> None:
    """List models, GPUs, scheduler policies, cost models, formulas, arrival strategies, and the
    fleet's routers, admission policies and KV-transfer links."""
    from sim.catalogue.hardware import gpu_names, resolve_gpu
    from sim.catalogue.models import catalogue_names
    from sim.cluster.admission import ADMISSIONS
    from sim.cluster.router import ROUTERS
    from sim.cluster.transfer import LINKS
    from sim.cost import COST_MODELS
    from sim.load.arrival import ARRIVALS
    from sim.scheduler import SCHEDULERS

    out_console.print("models:     " + ", ".join(catalogue_names()))
    out_console.print("gpus (dense datasheet peaks; sources in sim/catalogue/hardware.py; your own: --gpu FILE.yaml, docs/hardware.md):")
    for g in gpu_names():
        spec = resolve_gpu(g)
        fp8 = f"FP8 {spec.peak_fp8_tflops:g}" if spec.peak_fp8_tflops else "no FP8"
        out_console.print(
            f"  {g:12s} {spec.architecture:7s} BF16 {spec.peak_bf16_tflops:g} TFLOP/s, {fp8}; {spec.memory_type or 'memory'} {spec.hbm_bw_tbs:g} TB/s, "
            f"{spec.memory_gib:.0f} GiB; TP over {spec.interconnect} {spec.interconnect_bw_gbps:g} GB/s per direction"
        )
    for title, reg in (("policies", SCHEDULERS), ("cost models", COST_MODELS), ("arrivals", ARRIVALS)):
        out_console.print(f"{title}:")
        for name, doc in reg.describe().items():
            out_console.print(f"  {name:28s} {doc}")
    try:
        from sim.cost.combine import FORMULAS

        out_console.print("formulas:")
        for name, doc in FORMULAS.describe().items():
            out_console.print(f"  {name:28s} {doc}")
    except ImportError:
        pass
    for title, reg in (("routers", ROUTERS), ("admission", ADMISSIONS), ("kv links", LINKS)):
        out_console.print(f"{title}:")
        for name, doc in reg.describe().items():
            out_console.print(f"  {name:28s} {doc}")


@click.command(name="config")
@common_options
@handle_errors
def config_cmd(config: str | None, **kwargs: Any) -> None:
    """Print the effective config (defaults, CONFIG, --set and flags merged) as YAML."""
    flags, opts = split_flags(kwargs)
    cfg, fmt = build_config(config, flags, opts["sets"])
    click.echo(f"# source format: {fmt}")
    click.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), nl=False)
