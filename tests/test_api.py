"""The Python API: docs/api.md's examples run as written, and each call agrees with the
library underneath (same config ⇒ same numbers as the CLI's path)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import sim
from sim.core.simulation import simulate as core_simulate

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_docs_examples_run():
    blocks = _blocks()
    assert len(blocks) >= 6
    scope: dict = {}
    for code in blocks:
        exec(compile(code, str(DOC), "exec"), scope)  # noqa: S102 - the documentation's own examples


def test_public_names():
    for name in ("simulate", "sweep", "capacity", "compare", "plan", "load_config", "RunConfig", "ConfigError"):
        assert name in dir(sim) and getattr(sim, name) is not None
    with pytest.raises(AttributeError):
        sim.no_such_name  # noqa: B018


def test_config_forms_agree(tmp_path):
    data = {"model": "llama-2-7b", "workload": {"num_requests": 30}, "arrival": {"strategy": "poisson", "rate_rps": 5}}
    path = tmp_path / "c.yaml"
    import yaml

    path.write_text(yaml.safe_dump(data))
    a = sim.load_config(data)
    b = sim.load_config(path)
    c = sim.load_config(a)
    assert a == b == c
    assert sim.simulate(data).summary == core_simulate(a).summary
    # overrides merge deeply; an unknown key is an error naming it
    d = sim.load_config(data, {"workload": {"num_requests": 40}})
    assert d.workload.num_requests == 40 and d.arrival.rate_rps == 5
    with pytest.raises(sim.ConfigError, match="max_num_seq"):
        sim.load_config(data, {"server": {"max_num_seq": 3}})
    with pytest.raises(sim.ConfigError, match="not found"):
        sim.load_config(tmp_path / "missing.yaml")
    with pytest.raises(sim.ConfigError, match="find"):
        sim.capacity(data, find="nothing")


def test_one_layering_rule(tmp_path):
    """Every way of starting layers CONFIG over the embedded default (CLI and API alike)."""
    import yaml
    from click.testing import CliRunner

    from sim.cli.main import main

    default = sim.load_config()
    only_model = sim.load_config({"model": "llama-2-13b"})
    assert only_model.model == "llama-2-13b"
    assert only_model.model_dump(exclude={"model"}) == default.model_dump(exclude={"model"})
    # a length distribution, the arrivals and the SLOs are replaced whole, not merged
    fixed = sim.load_config({"workload": {"prompt_tokens": {"dist": "fixed", "value": 100}}})
    assert fixed.workload.prompt_tokens.dist == "fixed" and fixed.workload.prompt_tokens.mean is None
    assert fixed.workload.prompt_tokens.max == 1_000_000  # the schema's, not the default's 512
    assert fixed.workload.prefix_tokens == default.workload.prefix_tokens  # other keys still merge
    closed = sim.load_config({"arrival": {"strategy": "synchronous"}})
    assert closed.arrival.rate_rps is None
    one_slo = sim.load_config({"slo": {"ttft_p99_ms": 500}})
    assert one_slo.slo.ttft_p99_ms == 500 and one_slo.slo.tpot_p99_ms is None
    # a trace workload replaces the synthetic one (no inherited shared prefix)
    trace = tmp_path / "t.csv"
    trace.write_text("prompt_tokens,output_tokens\n100,10\n200,20\n")
    traced = sim.load_config({"workload": {"trace": {"path": str(trace)}}, "arrival": {"strategy": "synchronous"}})
    assert traced.workload.prefix_tokens == 0 and traced.workload.num_requests is None
    # the CLI prints the same effective config for the same file
    path = tmp_path / "m.yaml"
    path.write_text("model: llama-2-13b\n")
    res = CliRunner().invoke(main, ["config", str(path)])
    assert res.exit_code == 0, res.output
    assert yaml.safe_load(res.output) == yaml.safe_load(yaml.safe_dump(only_model.model_dump(mode="json")))
