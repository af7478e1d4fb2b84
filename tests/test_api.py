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
