"""Configs from the ecosystem: guidellm benchmark profiles and inference-perf configs.

Both convert to a partial servesim config mapping (workload, arrival, sweep, seed, model)
that is deep-merged over a base config; server limits come from the base config or CLI flags.

* **guidellm** profile (``guidellm benchmark`` options as YAML, e.g.
  ``ground_truth/experiments/jan20-*/profile.yaml``): ``rate-type`` (synchronous, throughput,
  concurrent, constant, poisson, sweep), ``rate`` (req/s; users for concurrent; number of
  benchmarks for sweep), ``max-requests``, ``max-concurrency``, ``random-seed`` and ``data``
  (synthetic: ``prompt_tokens[_stdev|_min|_max]``, ``output_tokens[...]``, ``prefix_tokens``;
  as a mapping or guidellm's ``key=value,...`` string). guidellm prepends ``prefix_tokens`` to
  each prompt, as servesim does.
* **inference-perf** config (``ground_truth/experiments/2026*/profile.yaml``): ``load.type``
  (constant, poisson), ``load.stages[] {rate, duration}``, ``data.type: shared_prefix`` with
  ``num_groups`` × ``num_prompts_per_group`` (older: ``num_unique_system_prompts`` ×
  ``num_users_per_system_prompt``), ``system_prompt_len``, ``question_len``, ``output_len``
  (fixed lengths), ``server.model_name``. inference-perf pre-generates that many prompts and
  sends them in a cycle, so they become ``workload.prompt_pool`` (repeats hit the prefix
  cache); multi-turn sessions (``enable_multi_turn_chat``) are rejected. Stages become a sweep
  over their rates with ``rate·duration`` requests each, each run on a fresh server (a cold
  prefix cache; inference-perf runs its stages back to back on one). ``load.request_timeout``
  (seconds; aiohttp's total timeout of a request) becomes ``arrival.request_timeout_s``; when it
  is null inference-perf falls back on aiohttp's default total timeout (5 minutes), which is not
  applied here (servesim then waits forever).

guidellm's own timeout is not read: its OpenAI backend's ``timeout`` (``backend-args``, or
``GUIDELLM__REQUEST_TIMEOUT``) is httpx's *read* timeout, a bound on each wait for the next
bytes of a response, not on a request's whole time; give ``--request-timeout`` for a bound on
the whole request.

Pure functions of mappings (no I/O).
"""

from __future__ import annotations

import math
from typing import Any

from sim.errors import ConfigError

GUIDELLM_KEYS = {
    "rate-type",
    "profile",  # guidellm >= 0.4's name for rate-type
    "rate",
    "max-requests",
    "max-seconds",
    "max-concurrency",
    "random-seed",
    "data",
    "model",
    "warmup",
    "cooldown",
    "warmup-percent",
    "cooldown-percent",
}
# guidellm options that describe the client, the tokenizer or the output, not the load the
# server sees: accepted and ignored (docs/inputs.md lists each).
GUIDELLM_IGNORED = {
    "target",
    "backend-type",
    "backend",
    "backend-args",
    "backend-kwargs",
    "processor",
    "processor-args",
    "data-args",
    "data-sampler",
    "data-column-mapper",
    "output-path",
    "output-extras",
    "output-dir",
    "outputs",
    "disable-progress",
    "display-scheduler-stats",
    "disable-console-outputs",
    "disable-console",
    "request-type",
    "request-formatter-kwargs",
    "description",
    "metadata",
}
GUIDELLM_DATA_KEYS = {
    "prompt_tokens",
    "prompt_tokens_stdev",
    "prompt_tokens_min",
    "prompt_tokens_max",
    "output_tokens",
    "output_tokens_stdev",
    "output_tokens_min",
    "output_tokens_max",
    "prefix_tokens",
    "prefix_count",
    "samples",
}


def _guidellm_key(key: Any) -> str:
    """guidellm scenario keys are spelled with dashes or underscores (``max-seconds``, ``max_seconds``)."""
    return str(key).replace("_", "-")


def detect_format(data: Any) -> str:
    """'servesim', 'guidellm' or 'inference-perf' for a loaded YAML/JSON mapping."""
    if not isinstance(data, dict):
        return "servesim"
    keys = {_guidellm_key(k) for k in data}
    if "spec" in data and isinstance(data["spec"], dict) and "profile" in data["spec"]:
        return "guidellm"
    if "rate-type" in keys or isinstance(data.get("profile"), str) or ("max-requests" in keys and "data" in keys):
        return "guidellm"
    if isinstance(data.get("load"), dict) and ("stages" in data["load"] or "type" in data["load"]):
        return "inference-perf"
    return "servesim"


def _num(value: Any, field: str, integer: bool = False, positive: bool = True) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{field}: expected a number, got {value!r}") from None
    if not math.isfinite(x):
        raise ConfigError(f"{field}: expected a finite number, got {value!r}")
    if positive and not x > 0:
        raise ConfigError(f"{field}: must be > 0, got {value!r}")
    if integer:
        if x != int(x):
            raise ConfigError(f"{field}: expected an integer, got {value!r}")
        return int(x)
    return x


def _mapping(value: Any, field: str) -> dict[str, Any]:
    """``value`` if it is a mapping, {} if empty/None; ConfigError naming ``field`` otherwise."""
    if not value:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{field}: expected a mapping, got {type(value).__name__}")
    return value


def _parse_data_string(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise ConfigError(f"guidellm data: expected key=value pairs, got {part!r}")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _length(data: dict[str, Any], key: str) -> dict[str, Any]:
    mean = _num(data[key], f"data.{key}", integer=True)
    stdev = _num(data.get(f"{key}_stdev", 0), f"data.{key}_stdev", positive=False)
    if stdev < 0:
        raise ConfigError(f"data.{key}_stdev: must be >= 0")
    lo = _num(data.get(f"{key}_min", 1), f"data.{key}_min", integer=True)
    hi = _num(data.get(f"{key}_max", max(mean * 10, mean + 1)), f"data.{key}_max", integer=True)
    if stdev == 0:
        return {"dist": "fixed", "value": int(mean)}
    return {"dist": "normal", "mean": mean, "stdev": stdev, "min": int(lo), "max": int(hi)}


def _guidellm_data(data: Any) -> dict[str, Any] | None:
    """guidellm's ``data``: ``"k=v,…"``, a mapping, or a list of one of those (one dataset)."""
    if isinstance(data, list):
        if len(data) != 1:
            raise ConfigError(f"guidellm data: servesim simulates one synthetic dataset, got {len(data)} entries; keep one")
        data = data[0]
    if isinstance(data, str):
        data = _parse_data_string(data)
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ConfigError("guidellm data: expected synthetic options (a mapping or 'key=value,...'); dataset files are not supported (use a trace)")
    data = dict(data)
    kind = data.pop("kind", "synthetic_text")
    if kind != "synthetic_text":
        raise ConfigError(f"guidellm data: kind {kind!r} is not supported; servesim reads synthetic_text options only")
    return data


def _guidellm_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """guidellm's nested ``spec`` layout → the flat scenario keys (profile kind, rate, limits, data)."""
    flat: dict[str, Any] = {}
    for k, v in spec.items():
        key = _guidellm_key(k)
        if key == "profile":
            if not isinstance(v, dict) or "kind" not in v:
                raise ConfigError("guidellm spec.profile: expected a mapping with 'kind' (e.g. {kind: sweep})")
            prof = {_guidellm_key(pk): pv for pk, pv in v.items()}
            flat["profile"] = prof.pop("kind")
            for pk, pv in prof.items():
                flat[pk] = pv
        else:
            flat[key] = v
    return flat


def from_guidellm(profile: dict[str, Any]) -> dict[str, Any]:
    """Partial servesim config from a guidellm benchmark profile / scenario mapping (old
    ``rate-type`` files, the flat ``profile`` scenarios guidellm ships, or their ``spec``
    layout; dashes or underscores). Every key is honoured or rejected, or — client, tokenizer
    and output options — ignored by name (docs/inputs.md)."""
    if "spec" in profile and isinstance(profile["spec"], dict):
        extra = sorted(str(k) for k in profile if k != "spec" and _guidellm_key(k) not in GUIDELLM_IGNORED)
        if extra:
            raise ConfigError(f"guidellm scenario: unknown key(s) {', '.join(extra)} beside spec")
        profile = _guidellm_spec(profile["spec"])
    profile = {_guidellm_key(k): v for k, v in profile.items()}
    unknown = sorted(str(k) for k in set(profile) - GUIDELLM_KEYS - GUIDELLM_IGNORED)
    if unknown:
        raise ConfigError(f"guidellm profile: unknown option(s) {', '.join(unknown)}; servesim reads {', '.join(sorted(GUIDELLM_KEYS))}")
    if "rate-type" in profile and "profile" in profile and profile["rate-type"] != profile["profile"]:
        raise ConfigError(f"guidellm profile: rate-type {profile['rate-type']!r} and profile {profile['profile']!r} disagree; keep one")
    out: dict[str, Any] = {}
    rate_type = profile.get("profile", profile.get("rate-type", "sweep"))
    rate = profile.get("rate")
    rates = rate if isinstance(rate, list) else None
    if rates is not None and not rates:
        raise ConfigError("guidellm rate: an empty list; give a number or a list of numbers")
    for key in ("warmup", "cooldown", "warmup-percent", "cooldown-percent"):
        v = profile.get(key)
        if v not in (None, 0, 0.0, "0", "0.0", ""):
            raise ConfigError(
                f"guidellm {key}: trimming warm-up / cool-down requests from the reported window is not supported; "
                "remove it (servesim reports every request of the run)"
            )
    if "model" in profile and profile["model"] is not None:
        out["model"] = str(profile["model"])
    if "random-seed" in profile:
        out["seed"] = int(_num(profile["random-seed"], "random-seed", integer=True, positive=False))
    if "max-requests" in profile:
        out.setdefault("workload", {})["num_requests"] = _num(profile["max-requests"], "max-requests", integer=True)
    max_s = _num(profile["max-seconds"], "max-seconds") if profile.get("max-seconds") is not None else None
    data = _guidellm_data(profile.get("data"))
    if data is not None:
        bad = sorted(str(k) for k in set(data) - GUIDELLM_DATA_KEYS)
        if bad:
            raise ConfigError(f"guidellm data: unknown key(s) {', '.join(bad)}; known: {', '.join(sorted(GUIDELLM_DATA_KEYS))}")
        wl = out.setdefault("workload", {})
        if "prompt_tokens" in data:
            wl["prompt_tokens"] = _length(data, "prompt_tokens")
        if "output_tokens" in data:
            wl["output_tokens"] = _length(data, "output_tokens")
        # the data options describe the whole dataset: no shared prefix unless they give one
        # (the embedded default's chat prefix must not leak into a guidellm workload)
        wl["prefix_tokens"] = _num(data["prefix_tokens"], "data.prefix_tokens", integer=True, positive=False) if data.get("prefix_tokens") else 0
        wl["prefix_groups"] = _num(data["prefix_count"], "data.prefix_count", integer=True) if data.get("prefix_tokens") and data.get("prefix_count") else 1
    if rates is not None and rate_type not in ("constant", "poisson", "concurrent"):
        raise ConfigError(f"guidellm rate: a list of rates needs profile constant, poisson or concurrent, not {rate_type!r}")
    arrival: dict[str, Any]
    closed = False
    if rate_type == "synchronous":
        arrival = {"strategy": "synchronous"}
        closed = True
    elif rate_type == "throughput":
        arrival = {"strategy": "throughput"}
        closed = True
        if profile.get("max-concurrency"):
            arrival["concurrency"] = _num(profile["max-concurrency"], "max-concurrency", integer=True)
    elif rate_type == "concurrent":
        closed = True
        if rates is not None:
            users = [int(_num(r, "rate", integer=True)) for r in rates]
            arrival = {"strategy": "concurrent", "concurrency": users[0]}
            out["sweep"] = {"concurrencies": users}
        else:
            arrival = {"strategy": "concurrent", "concurrency": _num(rate, "rate", integer=True)}
    elif rate_type in ("constant", "poisson"):
        if rates is not None:
            values = [_num(r, "rate") for r in rates]
            arrival = {"strategy": rate_type, "rate_rps": values[0]}
            out["sweep"] = {"rates_rps": values, "rate_strategy": rate_type}
        else:
            arrival = {"strategy": rate_type, "rate_rps": _num(rate, "rate")}
    elif rate_type == "sweep":
        arrival = {"strategy": "synchronous"}
        out["sweep"] = {"num_points": int(_num(rate, "rate", integer=True)) if rate is not None else 10}
    else:
        raise ConfigError(f"guidellm profile: {rate_type!r} is not one of synchronous, throughput, concurrent, constant, poisson, sweep")
    if max_s is not None:
        # guidellm stops each benchmark at max-seconds and cancels what is still running
        out["horizon_s"] = max_s
        if rate_type in ("constant", "poisson") and rates is None and "max-requests" not in profile:
            out.setdefault("workload", {})["num_requests"] = int(math.ceil(arrival["rate_rps"] * max_s))
        elif rate_type in ("constant", "poisson", "sweep"):
            out.setdefault("sweep", {})["duration_s"] = max_s  # each rate point sends rate x max-seconds requests
        elif closed and "max-requests" not in profile:
            raise ConfigError(
                f"guidellm max-seconds: a {rate_type} benchmark limited by time alone needs a request count to simulate; add max-requests "
                "(servesim stops at max-seconds either way)"
            )
    out["arrival"] = arrival
    return out


def from_inference_perf(cfg: dict[str, Any]) -> dict[str, Any]:
    """Partial servesim config from an inference-perf config mapping."""
    out: dict[str, Any] = {}
    load = _mapping(cfg.get("load"), "inference-perf load")
    kind = load.get("type", "constant")
    if kind not in ("constant", "poisson"):
        raise ConfigError(f"inference-perf load.type: {kind!r} is not supported; use constant or poisson")
    stages = load.get("stages") or []
    if not isinstance(stages, list):
        raise ConfigError(f"inference-perf load.stages: expected a list of {{rate, duration}} stages, got {type(stages).__name__}")
    if not stages:
        raise ConfigError("inference-perf load.stages: needs at least one {rate, duration} stage")
    rates, durations = [], []
    for i, st in enumerate(stages):
        if not isinstance(st, dict) or "rate" not in st or "duration" not in st:
            raise ConfigError(f"inference-perf load.stages[{i}]: expected a mapping with rate and duration")
        rates.append(_num(st["rate"], f"load.stages[{i}].rate"))
        durations.append(_num(st["duration"], f"load.stages[{i}].duration"))
    data = _mapping(cfg.get("data"), "inference-perf data")
    wl: dict[str, Any] = {}
    if data.get("type") == "shared_prefix":
        sp = _mapping(data.get("shared_prefix"), "inference-perf data.shared_prefix")
        for key in ("system_prompt_len", "question_len", "output_len"):
            if key not in sp:
                raise ConfigError(f"inference-perf data.shared_prefix.{key}: missing")
        if sp.get("enable_multi_turn_chat"):
            raise ConfigError(
                "inference-perf data.shared_prefix.enable_multi_turn_chat: multi-turn sessions (prompts that grow "
                "with each round) are not supported; set it to false"
            )
        wl["prefix_tokens"] = _num(sp["system_prompt_len"], "data.shared_prefix.system_prompt_len", integer=True)
        # current inference-perf: num_groups × num_prompts_per_group; older: num_unique_system_prompts
        # × num_users_per_system_prompt. Either way it sends that many prompts in a cycle.
        groups_key = "num_groups" if "num_groups" in sp else "num_unique_system_prompts"
        per_key = "num_prompts_per_group" if "num_prompts_per_group" in sp else "num_users_per_system_prompt"
        groups = _num(sp.get(groups_key, 1), f"data.shared_prefix.{groups_key}", integer=True)
        wl["prefix_groups"] = groups
        if per_key in sp:
            per_group = _num(sp[per_key], f"data.shared_prefix.{per_key}", integer=True)
            wl["prompt_pool"] = int(groups) * int(per_group)
        wl["prompt_tokens"] = {"dist": "fixed", "value": _num(sp["question_len"], "data.shared_prefix.question_len", integer=True)}
        wl["output_tokens"] = {"dist": "fixed", "value": _num(sp["output_len"], "data.shared_prefix.output_len", integer=True)}
    elif data.get("type") in ("random", "synthetic"):
        extra = sorted(str(k) for k in set(data) - {"type", "input_distribution", "output_distribution"})
        if extra:
            raise ConfigError(
                f"inference-perf data: unknown key(s) {', '.join(extra)} for type {data['type']}; expected input_distribution, output_distribution"
            )
        wl["prefix_tokens"], wl["prefix_groups"] = 0, 1
        pools = []
        for src, dst in (("input_distribution", "prompt_tokens"), ("output_distribution", "output_tokens")):
            dist = _mapping(data.get(src), f"inference-perf data.{src}")
            if not dist:
                raise ConfigError(f"inference-perf data.{src}: missing; give min, max, mean, std_dev (tokens)")
            bad = sorted(str(k) for k in set(dist) - {"min", "max", "mean", "std_dev", "total_count"})
            if bad:
                raise ConfigError(f"inference-perf data.{src}: unknown key(s) {', '.join(bad)}; expected min, max, mean, std_dev, total_count")
            mean = _num(dist.get("mean"), f"data.{src}.mean")
            spec: dict[str, Any] = {"dist": "normal", "mean": mean, "stdev": _num(dist.get("std_dev", 0), f"data.{src}.std_dev", positive=False)}
            if "min" in dist:
                spec["min"] = _num(dist["min"], f"data.{src}.min", integer=True)
            if "max" in dist:
                spec["max"] = _num(dist["max"], f"data.{src}.max", integer=True)
            wl[dst] = spec
            if "total_count" in dist:
                pools.append(_num(dist["total_count"], f"data.{src}.total_count", integer=True))
        if pools:
            # inference-perf generates total_count prompts and sends them in a cycle
            wl["prompt_pool"] = int(min(pools))
    elif data.get("type") is not None:
        raise ConfigError(f"inference-perf data.type: {data.get('type')!r} is not supported; use random, synthetic or shared_prefix")
    if wl:
        out["workload"] = wl
    model = _mapping(cfg.get("server"), "inference-perf server").get("model_name")
    if model:
        out["model"] = str(model)
    if len(set(durations)) > 1:
        raise ConfigError("inference-perf load.stages: stages of different durations are not supported; give them one duration")
    out["arrival"] = {"strategy": kind, "rate_rps": rates[0]}
    if load.get("request_timeout") is not None:
        out["arrival"]["request_timeout_s"] = _num(load["request_timeout"], "load.request_timeout")
    out["sweep"] = {"rates_rps": rates, "rate_strategy": kind, "duration_s": durations[0]}
    return out


def convert(data: Any) -> tuple[str, dict[str, Any]]:
    """(format name, servesim mapping) for any supported config mapping."""
    fmt = detect_format(data)
    if fmt == "guidellm":
        return fmt, from_guidellm(data)
    if fmt == "inference-perf":
        return fmt, from_inference_perf(data)
    return fmt, data if data is not None else {}
