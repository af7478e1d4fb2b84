"""Fuzzing of every input boundary: config mappings, ecosystem formats, trace CSVs, config
files and the CLI.

The property is the same everywhere: a loader either succeeds or raises
:class:`~sim.errors.ConfigError` whose message names the field or the file — never another
exception type, never a traceback from the CLI (which exits with code 2).

Run with ``--hypothesis-show-statistics`` to see how many inputs each target tried;
``SERVESIM_HYPOTHESIS_SCALE`` multiplies every example count.
"""

from __future__ import annotations

import json
import os
import re
import string
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sim.cli.config_input import build_config, default_config_dict, read_config_file
from sim.cli.main import main
from sim.config import RunConfig, merge, parse_run_config
from sim.core.simulation import Simulation
from sim.errors import ConfigError
from sim.load.formats import GUIDELLM_DATA_KEYS, GUIDELLM_IGNORED, GUIDELLM_KEYS, convert
from sim.load.workload import TRACE_MAX_TOKENS, load_trace

SCALE = float(os.environ.get("SERVESIM_HYPOTHESIS_SCALE", "1"))


def n_examples(base: int) -> int:
    return max(1, int(base * SCALE))


FUZZ = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# a line "  <field path>: <problem>" as config.py formats pydantic errors
FIELD_LINE = re.compile(r"^  \S[^\n]*: \S", re.MULTILINE)
# a message that starts with what it is about: "<field or file>: <problem>"
NAMED = re.compile(r"^[^\s:][^:\n]*: \S")


# ---------------------------------------------------------------------------- values


# Every key name the config schema knows, at any level: fuzzed mappings use them often so
# that the validators (not only the unknown-key check) see garbage.
def _schema_keys(model: type) -> set[str]:
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        keys.add(name)
        ann = field.annotation
        for sub in (ann, *getattr(ann, "__args__", ())):
            if isinstance(sub, type) and hasattr(sub, "model_fields"):
                keys |= _schema_keys(sub)
    return keys


SCHEMA_KEYS = sorted(_schema_keys(RunConfig))

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 0.0, -0.0, 1e308, -1e308, 5e-324, float("nan"), float("inf"), float("-inf"), 2**63, 2**64]),
    st.text(max_size=12),
    st.sampled_from(["", " ", "1", "1.5", "-1", "nan", "inf", "true", "null", "vllm-v1", "fixed", "poisson", "llama-2-7b", "H100"]),
    st.binary(max_size=8),
)
KEYS = st.one_of(st.sampled_from(SCHEMA_KEYS), st.text(max_size=8), st.integers(-3, 3), st.none(), st.booleans())
GARBAGE = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=5)),
    max_leaves=25,
)
GARBAGE_MAPPINGS = st.dictionaries(KEYS, GARBAGE, max_size=8)


def _valid_base() -> dict:
    """A complete, valid config mapping (every field present) to mutate."""
    cfg = parse_run_config(
        merge(
            default_config_dict(),
            {
                "cost": {"model": "fixed"},
                "horizon_s": 10.0,
                "sweep": {"rates_rps": [1.0, 2.0], "duration_s": 5.0},
                "slo": {"ttft_ms": 100.0},
            },
        )
    )
    return cfg.model_dump(mode="json")


VALID_BASE = _valid_base()


def _paths(d: dict, prefix: tuple = ()) -> list[tuple]:
    out = []
    for k, v in d.items():
        out.append(prefix + (k,))
        if isinstance(v, dict):
            out.extend(_paths(v, prefix + (k,)))
    return out


BASE_PATHS = _paths(VALID_BASE)


def _set(d: dict, path: tuple, value) -> None:
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value


def _delete(d: dict, path: tuple) -> None:
    for k in path[:-1]:
        d = d[k]
    del d[path[-1]]


def _copy(d):
    return {k: _copy(v) for k, v in d.items()} if isinstance(d, dict) else d


@st.composite
def mutated_configs(draw) -> tuple[dict, tuple]:
    """A valid config with one field replaced by garbage, deleted, or a sibling unknown key
    added; returns (mapping, path of the change)."""
    data = _copy(VALID_BASE)
    path = draw(st.sampled_from(BASE_PATHS))
    kind = draw(st.sampled_from(["replace", "replace", "replace", "delete", "unknown"]))
    if kind == "replace":
        _set(data, path, draw(GARBAGE))
    elif kind == "delete":
        _delete(data, path)
    else:
        key = draw(st.text(string.ascii_lowercase + "_", min_size=1, max_size=10).filter(lambda k: k not in SCHEMA_KEYS))
        path = path[:-1] + (key,)
        _set(data, path, draw(GARBAGE))
    return data, path


def assert_config_error(err: ConfigError) -> str:
    msg = str(err)
    assert msg.strip(), "empty ConfigError message"
    assert "Traceback" not in msg
    return msg


# ---------------------------------------------------------------------------- parse_run_config


@settings(max_examples=n_examples(200), **FUZZ)
@given(GARBAGE_MAPPINGS)
def test_parse_run_config_survives_random_mappings(data):
    """GIVEN any nested mapping of garbage WHEN parsed THEN a RunConfig or a ConfigError that
    lists each bad field on its own line."""
    try:
        cfg = parse_run_config(data)
    except ConfigError as err:
        msg = assert_config_error(err)
        assert msg.startswith("invalid config")
        assert FIELD_LINE.search(msg), msg
    else:
        assert isinstance(cfg, RunConfig)


@settings(max_examples=n_examples(30), **FUZZ)
@given(GARBAGE)
def test_parse_run_config_rejects_non_mappings(data):
    """GIVEN a top level that is not a mapping WHEN parsed THEN ConfigError (None = defaults)."""
    if data is None or isinstance(data, dict):
        return
    with pytest.raises(ConfigError, match="top level"):
        parse_run_config(data, source="x.yaml")


@settings(max_examples=n_examples(300), **FUZZ)
@given(mutated_configs())
def test_parse_run_config_names_the_mutated_field(case):
    """GIVEN a valid config with one field garbled, deleted or an unknown key added WHEN
    parsed THEN it is valid, or the ConfigError names the changed field's section."""
    data, path = case
    try:
        cfg = parse_run_config(data, source="cfg.yaml")
    except ConfigError as err:
        msg = assert_config_error(err)
        assert msg.startswith("invalid config in cfg.yaml")
        assert FIELD_LINE.search(msg), msg
        assert str(path[0]) in msg, f"{path} not named in {msg!r}"
    else:
        assert isinstance(cfg, RunConfig)


# Sizes past these make Simulation() allocate per-request arrays or per-block lists that do
# not fit in memory (MemoryError, not a ConfigError): the config has no upper bound on them.
BUILD_MAX_REQUESTS = 10**6
BUILD_MAX_BLOCKS = 10**7


@settings(max_examples=n_examples(150), **FUZZ)
@given(mutated_configs())
def test_configs_that_parse_also_build(case):
    """GIVEN a garbled config that still parses WHEN the simulation is built (model, GPU, KV
    sizing, registries, workload, arrival process) THEN it builds or raises ConfigError."""
    data, path = case
    try:
        cfg = parse_run_config(data)
    except ConfigError:
        return
    assume((cfg.workload.num_requests or 0) <= BUILD_MAX_REQUESTS and (cfg.server.num_gpu_blocks or 0) <= BUILD_MAX_BLOCKS)
    try:
        Simulation(cfg)
    except ConfigError as err:
        assert NAMED.match(assert_config_error(err)), str(err)


# ---------------------------------------------------------------------------- formats.convert

RATE_TYPES = st.one_of(st.sampled_from(["synchronous", "throughput", "concurrent", "constant", "poisson", "sweep"]), SCALARS)
NUMBERISH = st.one_of(SCALARS, st.integers(1, 100), st.floats(0.1, 100.0), st.sampled_from(["10", "0.5", "1e400", "-3", "x"]))


@st.composite
def guidellm_data(draw):
    keys = st.one_of(st.sampled_from(sorted(GUIDELLM_DATA_KEYS)), st.text(max_size=6))
    d = draw(st.dictionaries(keys, NUMBERISH, max_size=8))
    form = draw(st.sampled_from(["mapping", "string", "garbage"]))
    if form == "string":
        return ",".join(f"{k}={v}" for k, v in d.items()) + draw(st.sampled_from(["", ",", ",junk", "=,="]))
    if form == "garbage":
        return draw(GARBAGE)
    return d


@st.composite
def guidellm_profiles(draw) -> dict:
    keys = st.one_of(st.sampled_from(sorted(GUIDELLM_KEYS | set(list(GUIDELLM_IGNORED)[:4]))), KEYS)
    prof = draw(st.dictionaries(keys, NUMBERISH, max_size=5))
    prof["rate-type"] = draw(RATE_TYPES)
    if draw(st.booleans()):
        prof["data"] = draw(guidellm_data())
    for key in ("rate", "max-requests", "max-concurrency", "random-seed"):
        if draw(st.booleans()):
            prof[key] = draw(NUMBERISH)
    return prof


STAGES = st.one_of(
    st.lists(st.fixed_dictionaries({"rate": NUMBERISH, "duration": NUMBERISH}), max_size=4),
    st.lists(st.fixed_dictionaries({"rate": st.floats(0.1, 50.0), "duration": st.just(60)}), min_size=1, max_size=4),
    GARBAGE,
)


@st.composite
def inference_perf_configs(draw) -> dict:
    cfg = draw(st.dictionaries(KEYS, GARBAGE, max_size=3))
    cfg["load"] = {"type": draw(st.one_of(st.sampled_from(["constant", "poisson"]), SCALARS)), "stages": draw(STAGES)}
    if draw(st.booleans()):
        sp = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "system_prompt_len": NUMBERISH,
                    "question_len": NUMBERISH,
                    "output_len": NUMBERISH,
                    "num_unique_system_prompts": NUMBERISH,
                },
            )
        )
        cfg["data"] = draw(st.one_of(st.just({"type": "shared_prefix", "shared_prefix": sp}), GARBAGE))
    if draw(st.booleans()):
        cfg["server"] = draw(st.one_of(st.fixed_dictionaries({"model_name": SCALARS}), GARBAGE))
    return cfg


def _convert_then_parse(data) -> None:
    try:
        fmt, out = convert(data)
    except ConfigError as err:
        msg = assert_config_error(err)
        assert NAMED.match(msg), msg
        return
    assert fmt in ("servesim", "guidellm", "inference-perf")
    try:
        parse_run_config(merge(default_config_dict(), out) if fmt != "servesim" else out)
    except ConfigError as err:
        msg = assert_config_error(err)
        assert FIELD_LINE.search(msg) or "top level" in msg, msg


@settings(max_examples=n_examples(200), **FUZZ)
@given(guidellm_profiles())
def test_convert_survives_guidellm_like_profiles(profile):
    """GIVEN a guidellm-like profile with garbage values WHEN converted and parsed THEN a
    config or a ConfigError that names the option."""
    _convert_then_parse(profile)


@settings(max_examples=n_examples(200), **FUZZ)
@given(inference_perf_configs())
def test_convert_survives_inference_perf_like_configs(cfg):
    """GIVEN an inference-perf-like config with garbage values WHEN converted and parsed THEN
    a config or a ConfigError that names the key."""
    _convert_then_parse(cfg)


@settings(max_examples=n_examples(100), **FUZZ)
@given(GARBAGE)
def test_convert_survives_any_value(data):
    """GIVEN any value WHEN converted THEN a mapping or a ConfigError."""
    _convert_then_parse(data)


# ---------------------------------------------------------------------------- load_trace

TRACE_COLUMNS = ["start_offset_s", "prompt_tokens", "output_tokens", "benchmark_index", "ok"]
CELLS = st.one_of(
    st.integers(-5, 5000).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "nan", "NaN", "inf", "-inf", "1e30", "1e400", "1.5", "-0", "0x10", "True", "abc", '"', '"1"', str(TRACE_MAX_TOKENS + 1)]),
    st.text(max_size=5),
)


@st.composite
def csv_texts(draw) -> bytes:
    kind = draw(st.sampled_from(["table", "table", "table", "binary", "text", "empty"]))
    if kind == "binary":
        return draw(st.binary(max_size=200))
    if kind == "text":
        return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    if kind == "empty":
        return draw(st.sampled_from([b"", b"\n", b"prompt_tokens,output_tokens\n", b"\xef\xbb\xbf"]))
    cols = draw(st.lists(st.one_of(st.sampled_from(TRACE_COLUMNS), st.text(string.ascii_letters, max_size=4)), min_size=1, max_size=6))
    rows = draw(st.lists(st.lists(CELLS, min_size=len(cols), max_size=len(cols) + 1), max_size=8))
    lines = [",".join(cols)] + [",".join(r) for r in rows]
    return "\n".join(lines).encode("utf-8", "surrogatepass")


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=n_examples(300), **FUZZ)
@given(
    content=csv_texts(),
    benchmark_index=st.one_of(st.none(), st.integers(0, 3)),
    only_ok=st.booleans(),
    name=st.uuids(),
)
def test_load_trace_survives_random_csv(fuzz_dir, content, benchmark_index, only_ok, name):
    """GIVEN random CSV text or bytes WHEN loaded as a trace THEN clean rows (integer lengths
    >= 1, finite offsets >= 0 in order) or a ConfigError naming the field and the file."""
    path = fuzz_dir / f"{name}.csv"
    path.write_bytes(content)
    try:
        df = load_trace(path, benchmark_index, only_ok)
    except ConfigError as err:
        msg = assert_config_error(err)
        assert msg.startswith("workload.trace."), msg
        assert str(path) in msg, msg
        return
    assert len(df) > 0
    for col in ("prompt_tokens", "output_tokens"):
        assert df[col].dtype == np.int64
        assert (df[col] >= 1).all() and (df[col] <= TRACE_MAX_TOKENS).all()
    if "start_offset_s" in df.columns:
        off = df["start_offset_s"].to_numpy(dtype=float)
        assert np.isfinite(off).all() and (off >= 0).all() and (np.diff(off) >= 0).all()


def test_load_trace_missing_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_trace(tmp_path / "nope.csv")


# ---------------------------------------------------------------------------- config files


@st.composite
def config_file_bytes(draw) -> bytes:
    kind = draw(st.sampled_from(["yaml", "yaml", "guidellm", "inference-perf", "mutated", "text", "binary", "json"]))
    if kind == "yaml":
        return yaml.safe_dump(draw(GARBAGE_MAPPINGS.map(_yamlable)), allow_unicode=True).encode()
    if kind == "guidellm":
        return yaml.safe_dump(_yamlable(draw(guidellm_profiles()))).encode()
    if kind == "inference-perf":
        return yaml.safe_dump(_yamlable(draw(inference_perf_configs()))).encode()
    if kind == "mutated":
        return yaml.safe_dump(_yamlable(draw(mutated_configs())[0])).encode()
    if kind == "json":
        return json.dumps(draw(GARBAGE_MAPPINGS.map(_yamlable))).encode()
    if kind == "text":
        return draw(st.text(max_size=300)).encode("utf-8", "surrogatepass")
    return draw(st.binary(max_size=300))


def _yamlable(x):
    """Garbage that yaml.safe_dump can write (and JSON, after this): str keys, no bytes."""
    if isinstance(x, dict):
        return {str(k): _yamlable(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_yamlable(v) for v in x]
    if isinstance(x, bytes):
        return x.decode("latin-1")
    if isinstance(x, int) and not isinstance(x, bool) and abs(x) > 2**62:
        return float(x)
    return x


@settings(max_examples=n_examples(150), **FUZZ)
@given(content=config_file_bytes(), name=st.uuids())
def test_read_config_file_and_build_config_survive_random_files(fuzz_dir, content, name):
    """GIVEN random bytes, YAML, JSON or ecosystem configs in a file WHEN read and built into
    a RunConfig as the CLI does THEN a config or a ConfigError naming the file or the field."""
    path = fuzz_dir / f"{name}.yaml"
    path.write_bytes(content)
    try:
        fmt, data = read_config_file(str(path))
    except ConfigError as err:
        msg = assert_config_error(err)
        assert str(path) in msg or NAMED.match(msg), msg
        return
    assert isinstance(data, dict)
    try:
        cfg, _ = build_config(str(path), {}, ())
    except ConfigError as err:
        msg = assert_config_error(err)
        assert NAMED.match(msg) or FIELD_LINE.search(msg), msg
    else:
        assert isinstance(cfg, RunConfig)


def test_read_config_file_billion_laughs_is_bounded(tmp_path):
    """GIVEN YAML aliases that expand exponentially WHEN read THEN it fails fast, cleanly."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [{', '.join(f'*a{i - 1}' for _ in range(10))}]")
    lines.append("sweep: {rates_rps: *a8}")
    p = tmp_path / "laughs.yaml"
    p.write_text("\n".join(lines))
    with pytest.raises(ConfigError):
        build_config(str(p), {}, ())


def test_read_config_file_deep_nesting_is_a_config_error(tmp_path):
    """GIVEN 1200 nested brackets WHEN read THEN ConfigError (PyYAML's composer recurses)."""
    p = tmp_path / "deep.yaml"
    p.write_text("[" * 1200)
    with pytest.raises(ConfigError):
        read_config_file(str(p))


# ---------------------------------------------------------------------------- CLI end to end

BAD_FILES = {
    "binary.yaml": b"\x00\xff\xfe\x80garbage",
    "not_mapping.yaml": b"- 1\n- 2\n",
    "bad_yaml.yaml": b"a: [1, 2\nb: }",
    "unknown_key.yaml": b"server:\n  max_num_seq: 4\n",
    "nan.yaml": b"server:\n  gpu_memory_utilization: .nan\n",
    "negative.yaml": b"server:\n  max_num_seqs: -3\n",
    "huge_float.yaml": b"horizon_s: 1e400\n",
    "wrong_type.yaml": b"workload: 5\n",
    "guidellm_inf.yaml": b"rate-type: constant\nrate: .inf\n",
    "guidellm_keys.yaml": b"rate-type: constant\nrate: 1\n1: 2\nfoo: 3\n",
    "iperf_stages.yaml": b"load:\n  type: constant\n  stages: 5\n",
    "iperf_data.yaml": b"load:\n  stages: [{rate: 1, duration: 1}]\ndata: [1, 2]\n",
}
# files that only fail when the run starts (`config` just prints them)
BAD_RUN_FILES = {
    "trace_missing.yaml": b"workload:\n  trace:\n    path: /nonexistent/trace.csv\narrival:\n  strategy: replay\n",
    "unknown_policy.yaml": b"scheduler:\n  policy: fifo\n",
    "unknown_model.yaml": b"model: no-such-model\n",
    "too_big_model.yaml": b"model: llama-2-70b\ngpu: L40S\n",
    "replay_without_trace.yaml": b"arrival:\n  strategy: replay\n",
}


def _cli(args: list[str]):
    return CliRunner().invoke(main, args)


CLI_CASES = [(c, n) for n in sorted(BAD_FILES) for c in ("run", "config")] + [("run", n) for n in sorted(BAD_RUN_FILES)]


@pytest.mark.parametrize("command,name", CLI_CASES)
def test_cli_exits_2_without_traceback_on_bad_files(tmp_path, command, name):
    """GIVEN a garbage config file WHEN `servesim run|config FILE` THEN exit code 2, one error
    message, no traceback, no results directory."""
    p = tmp_path / name
    p.write_bytes({**BAD_FILES, **BAD_RUN_FILES}[name])
    out = tmp_path / "out"
    res = _cli([command, str(p), "--quiet", "--no-plots", "-o", str(out)])
    assert res.exit_code == 2, (res.output, res.exception)
    assert "Traceback" not in res.output
    assert "error:" in res.output
    assert not out.exists()


def test_cli_exits_2_on_bad_trace_rows(tmp_path):
    """GIVEN a trace whose prompt column holds inf WHEN `servesim run` replays it THEN exit 2."""
    trace = tmp_path / "t.csv"
    trace.write_text("start_offset_s,prompt_tokens,output_tokens\n0,inf,3\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"workload:\n  trace:\n    path: {trace}\narrival:\n  strategy: replay\ncost:\n  model: fixed\n")
    res = _cli(["run", str(cfg), "--quiet", "--no-plots", "-o", str(tmp_path / "out")])
    assert res.exit_code == 2, (res.output, res.exception)
    assert "prompt_tokens" in res.output and "Traceback" not in res.output


SET_KEYS = st.one_of(
    st.sampled_from([".".join(map(str, p)) for p in BASE_PATHS]),
    st.text(string.ascii_lowercase + "._", max_size=12),
)
SET_VALUES = st.one_of(
    st.sampled_from(["", "[", "{", "]", "null", ".nan", ".inf", "-1", "0", "1e400", "yes", "[1, 2]", "{a: 1}", "!!binary x", "*a"]),
    st.text(max_size=10),
)


@settings(max_examples=n_examples(40), **FUZZ)
@given(
    content=config_file_bytes(),
    sets=st.lists(st.tuples(SET_KEYS, SET_VALUES), max_size=3),
    name=st.uuids(),
)
def test_cli_config_command_never_tracebacks(fuzz_dir, content, sets, name):
    """GIVEN a random config file and random --set overrides WHEN `servesim config` THEN exit
    code 0 (valid) or 2 with an error message, never a traceback."""
    path = fuzz_dir / f"{name}.yaml"
    path.write_bytes(content)
    args = ["config", str(path)]
    for k, v in sets:
        args += ["--set", f"{k}={v}"]
    res = _cli(args)
    assert res.exit_code in (0, 2), (res.output, res.exception)
    assert "Traceback" not in res.output
    if res.exit_code == 2:
        assert "error:" in res.output


def test_cli_exits_2_on_deeply_nested_yaml(tmp_path):
    """GIVEN 1200 nested brackets WHEN `servesim config FILE` THEN exit 2, no traceback."""
    p = tmp_path / "deep.yaml"
    p.write_text("[" * 1200)
    res = _cli(["config", str(p)])
    assert res.exit_code == 2, (res.exit_code, repr(res.exception))
