"""How a command builds its effective config: embedded default ← CONFIG file ← ``--set`` ←
named flags. Reads files (YAML/JSON, duplicate keys rejected) and converts guidellm and
inference-perf formats."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sim.cli.common import short_path
from sim.config import RunConfig, merge, parse_run_config
from sim.errors import ConfigError
from sim.load.formats import convert


def default_config_dict() -> dict[str, Any]:
    """The embedded default config (``sim/data/default.yaml``)."""
    text = resources.files("sim").joinpath("data/default.yaml").read_text()
    return yaml.safe_load(text)


class StrictLoader(yaml.SafeLoader):
    """YAML safe loader with YAML 1.2's core scalars and no duplicate keys.

    PyYAML follows YAML 1.1, where ``seed: 017`` is 15 (octal), ``1:30`` is 90 (base 60),
    ``on``/``yes`` are booleans and ``1e5`` is a string. Here, as in YAML 1.2 and JSON:
    integers are decimal (``0o17``, ``0x1f`` for other bases), booleans are ``true``/``false``,
    ``1e5`` is a float. A duplicate key is an error (a silent last-one-wins hides typos).
    """

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                dup = key in seen
            except TypeError:  # unhashable key; let the base class report it
                dup = False
            if dup:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            try:
                seen.add(key)
            except TypeError:
                pass
        return super().construct_mapping(node, deep=deep)


# YAML 1.2 core schema resolvers (https://yaml.org/spec/1.2.2/#1032-tag-resolution)
StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YAML12 = (
    ("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), "tTfF"),
    ("tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), "-+0123456789"),
    (
        "tag:yaml.org,2002:float",
        re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
        "-+.0123456789",
    ),
)
for _tag, _rx, _first in _YAML12:
    StrictLoader.add_implicit_resolver(_tag, _rx, list(_first))


def _construct_int_12(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text, 10)  # 017 is seventeen


def _construct_bool_12(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> bool:
    return loader.construct_scalar(node).lower() == "true"


StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_int_12)
StrictLoader.add_constructor("tag:yaml.org,2002:bool", _construct_bool_12)


def read_config_file(path: str) -> tuple[str, dict[str, Any]]:
    """(format, servesim mapping) from a YAML/JSON file: servesim, guidellm or inference-perf."""
    p = Path(path)
    try:
        found = p.is_file()
    except OSError as err:  # a name longer than the system allows, …
        raise ConfigError(f"CONFIG: cannot open {short_path(p)}: {err.strerror or err}") from None
    if not found:
        raise ConfigError(f"CONFIG: file not found: {short_path(p)}")
    try:
        data = yaml.load(p.read_text(), Loader=StrictLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"CONFIG: {p} is not valid YAML/JSON: {err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"CONFIG: {p} is not a text file") from None
    except RecursionError:
        raise ConfigError(f"CONFIG: {p} is nested too deeply to be a config") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"CONFIG: {p} must hold a mapping at the top level, got {type(data).__name__}")
    return convert(data)


def _parse_value(text: str) -> Any:
    try:
        return yaml.load(text, Loader=StrictLoader)
    except yaml.YAMLError:
        return text
    except RecursionError:
        raise ConfigError(f"--set: the value is nested too deeply to be a config value ({text[:40]}…)") from None


def _set_path(d: dict, dotted: str, value: Any) -> None:
    """Set ``dotted`` (keys, and list indexes such as ``cluster.groups.0.replicas``) in ``d``,
    making the mappings on the way."""
    keys = dotted.split(".")
    cur: Any = d
    for depth, k in enumerate(keys):
        last = depth == len(keys) - 1
        where = ".".join(keys[:depth]) or "the config"
        if isinstance(cur, list):
            if not k.isdigit() or int(k) >= len(cur):
                raise ConfigError(f"--set {dotted}: {where} is a list of {len(cur)}; index it with 0…{len(cur) - 1}, or set the whole list")
            if last:
                cur[int(k)] = value
            else:
                cur = cur[int(k)]
            continue
        if not isinstance(cur, dict):
            raise ConfigError(f"--set {dotted}: {where} is {cur!r}, not a mapping")
        if last:
            cur[k] = value
        else:
            nxt = cur.get(k)
            if nxt is None:
                nxt = cur[k] = {}
            elif not isinstance(nxt, (dict, list)):
                raise ConfigError(f"--set {dotted}: {'.'.join(keys[: depth + 1])} is {nxt!r}, not a section with keys")
            cur = nxt


# option name -> dotted config path
FLAG_PATHS = {
    "model": "model",
    "gpu": "gpu",
    "tensor_parallel_size": "tensor_parallel_size",
    "max_num_seqs": "server.max_num_seqs",
    "max_num_batched_tokens": "server.max_num_batched_tokens",
    "long_prefill_token_threshold": "server.long_prefill_token_threshold",
    "enable_prefix_caching": "server.enable_prefix_caching",
    "enable_chunked_prefill": "server.enable_chunked_prefill",
    "async_scheduling": "server.async_scheduling",
    "kv_offloading_size": "server.kv_offloading_size_gib",
    "block_size": "server.block_size",
    "gpu_memory_utilization": "server.gpu_memory_utilization",
    "num_gpu_blocks_override": "server.num_gpu_blocks",
    "max_model_len": "server.max_model_len",
    "quantization": "server.quantization",
    "kv_cache_dtype": "server.kv_cache_dtype",
    "policy": "scheduler.policy",
    "cost_model": "cost.model",
    "formula": "cost.formula",
    "gemm_m": "cost.gemm_m",
    "mfu_lookup": "cost.mfu_lookup",
    "bench_data": "cost.bench_data_dir",
    "calibration": "cost.calibration",
    "seed": "seed",
    "num_requests": "workload.num_requests",
    "strategy": "arrival.strategy",
    "rate": "arrival.rate_rps",
    "concurrency": "arrival.concurrency",
    "horizon": "horizon_s",
    "request_timeout": "arrival.request_timeout_s",
}


# Sections a config replaces whole instead of merging into the embedded default's: a length
# distribution or an arrival process is one thing (a file's {dist: fixed, value: 100} must not
# inherit the default's normal mean/min/max; a closed loop must not inherit its rate), as are
# the SLOs (a file naming one bound means only that one) and a fleet.
REPLACED_SECTIONS: tuple[tuple[str, ...], ...] = (("arrival",), ("slo",), ("cluster",), ("workload", "prompt_tokens"), ("workload", "output_tokens"))


def layer_config(base: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a converted CONFIG) over ``base`` (the embedded default): mappings merge key by
    key except :data:`REPLACED_SECTIONS`, which ``data`` replaces whole when it has them; a
    workload that replays a trace replaces the whole workload section (the default's synthetic
    lengths and shared prefix do not apply to it)."""
    out = merge(base, data)
    for path in REPLACED_SECTIONS:
        src: Any = data
        for key in path:
            src = src.get(key) if isinstance(src, dict) else None
        if src is None:
            continue
        dst = out
        for key in path[:-1]:
            dst = dst[key]
        dst[path[-1]] = src
    workload = data.get("workload")
    if isinstance(workload, dict) and workload.get("trace") is not None:
        out["workload"] = workload
    return out


def build_config(config_path: str | None, flags: dict[str, Any], sets: tuple[str, ...]) -> tuple[RunConfig, str]:
    """Effective config, one rule for every way of starting: embedded default ← CONFIG file
    (any format, :func:`layer_config`) ← --set ← named flags."""
    base = default_config_dict()
    fmt = "default"
    if config_path:
        fmt, data = read_config_file(config_path)
        base = layer_config(base, data)
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set: expected KEY=VALUE (e.g. server.max_num_seqs=128), got {item!r}")
        k, v = item.split("=", 1)
        _set_path(base, k.strip(), _parse_value(v))
    for name, value in flags.items():
        if value is not None and name in FLAG_PATHS:
            _set_path(base, FLAG_PATHS[name], value)
    _apply_fleet_flags(base, flags.get("replicas"), flags.get("router"))
    strategy = flags.get("strategy")
    if strategy in ("synchronous", "throughput", "concurrent", "replay") and flags.get("rate") is None:
        base.setdefault("arrival", {})["rate_rps"] = None
    return parse_run_config(base, source=config_path), fmt


FLEET_FLAGS = ("replicas", "router")


def _apply_fleet_flags(base: dict[str, Any], replicas: int | None, router: str | None) -> None:
    """``--replicas N``: a one-group cluster of N replicas (or N replicas in the config's only
    group); ``--router NAME``: the cluster's router (a cluster must exist or be made by
    ``--replicas``)."""
    if replicas is None and router is None:
        return
    cluster = base.get("cluster")
    if cluster is None:
        if replicas is None:
            raise ConfigError("--router: the config has no cluster; add --replicas N (or a cluster section) to route between replicas")
        cluster = base["cluster"] = {"groups": [{}]}
    if not isinstance(cluster, dict):
        raise ConfigError("cluster: must be a mapping (groups, router, admission, kv_transfer)")
    if replicas is not None:
        groups = cluster.setdefault("groups", [{}])  # a cluster made by --set cluster.router… has none yet
        if not isinstance(groups, list) or len(groups) != 1 or not isinstance(groups[0], dict):
            n = len(groups) if isinstance(groups, list) else "no list of"
            raise ConfigError(f"--replicas: the config's cluster has {n} groups; set each group's replicas in the config instead")
        if replicas < 1:
            raise ConfigError(f"--replicas: needs at least 1 replica, got {replicas}")
        groups[0]["replicas"] = replicas
    if router is not None:
        router_section = cluster.setdefault("router", {})
        if not isinstance(router_section, dict):
            raise ConfigError("cluster.router: must be a mapping (policy, refresh_interval_ms, …)")
        router_section["policy"] = router


def split_flags(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    flags = {k: kwargs.pop(k) for k in list(kwargs) if k in FLAG_PATHS or k in FLEET_FLAGS}
    return flags, kwargs
