"""guidellm scenario files as CONFIG: the formats guidellm documents and ships (written here as
our own copies of the published layouts), every key honoured, rejected or ignored by name, and
the simulated workload matching the file."""

from __future__ import annotations

import json

import numpy as np
import pytest

import sim
from sim.core.simulation import Simulation
from sim.errors import ConfigError
from sim.load.formats import detect_format

DATA = {
    "prompt_tokens": 512,
    "prompt_tokens_stdev": 128,
    "prompt_tokens_min": 1,
    "prompt_tokens_max": 1024,
    "output_tokens": 256,
    "output_tokens_stdev": 64,
    "output_tokens_min": 1,
    "output_tokens_max": 1024,
}


def test_flat_profile_constant_rate_is_honoured():
    cfg = sim.load_config({"profile": "constant", "rate": 6, "max-requests": 300, "model": "llama-2-13b", "data": DATA})
    assert (cfg.arrival.strategy, cfg.arrival.rate_rps) == ("constant", 6.0)
    assert cfg.model == "llama-2-13b" and cfg.workload.num_requests == 300


def test_the_simulated_workload_matches_the_file():
    cfg = sim.load_config({"profile": "poisson", "rate": 5, "max_requests": 2000, "data": DATA})
    s = Simulation(cfg)
    reqs = [s.workload.make_request(i) for i in range(len(s.workload))]
    prompts = np.array([r.prompt_tokens for r in reqs])
    outputs = np.array([r.output_tokens for r in reqs])
    assert abs(prompts.mean() - 512) < 4 * 128 / np.sqrt(len(prompts)) + 2
    assert abs(outputs.mean() - 256) < 4 * 64 / np.sqrt(len(outputs)) + 2
    assert prompts.max() <= 1024 and outputs.max() <= 1024


def test_shipped_layouts_parse():
    # the flat scenario with a list of concurrencies and max-seconds as a string
    conc = {
        "description": "x",
        "profile": "concurrent",
        "request-type": "text_completions",
        "data": DATA,
        "rate": [1, 5, 25],
        "max-seconds": "600",
        "max-requests": 50,
    }
    cfg = sim.load_config(conc)
    assert cfg.sweep.concurrencies == [1, 5, 25] and cfg.horizon_s == 600.0 and cfg.arrival.strategy == "concurrent"
    # a sweep with its data as a list of one option string
    chat = {"profile": "sweep", "data": [",".join(f"{k}={v}" for k, v in DATA.items())]}
    cfg = sim.load_config(chat)
    assert cfg.sweep.num_points == 10 and cfg.workload.prompt_tokens.mean == 512
    # the nested spec layout
    spec = {"spec": {"profile": {"kind": "sweep"}, "data": [{"kind": "synthetic_text", **DATA}]}}
    assert detect_format(spec) == "guidellm"
    cfg = sim.load_config(spec)
    assert cfg.sweep.num_points == 10 and cfg.workload.output_tokens.mean == 256
    # rate lists for open loops become the sweep's rates
    cfg = sim.load_config({"profile": "poisson", "rate": [2, 4, 8], "max-seconds": 30, "data": DATA})
    assert cfg.sweep.rates_rps == [2.0, 4.0, 8.0] and cfg.sweep.rate_strategy == "poisson" and cfg.sweep.duration_s == 30.0
    # max-seconds alone for one open-loop rate: rate x seconds requests, stopped at the limit
    cfg = sim.load_config({"profile": "constant", "rate": 4, "max-seconds": 25, "data": DATA})
    assert cfg.workload.num_requests == 100 and cfg.horizon_s == 25.0


@pytest.mark.parametrize(
    "profile, match",
    [
        ({"profile": "constant", "rate": 2, "warmup": 0.1, "data": DATA}, "warmup"),
        ({"profile": "constant", "rate": 2, "cooldown-percent": 5, "data": DATA}, "cooldown-percent"),
        ({"profile": "constant", "rate": 2, "bogus": 1, "data": DATA}, "bogus"),
        ({"profile": "synchronous", "max-seconds": 60, "data": DATA}, "max-requests"),
        ({"profile": "sweep", "rate": [1, 2], "data": DATA}, "list of rates"),
        ({"profile": "constant", "rate": 2, "data": [DATA, DATA]}, "one synthetic dataset"),
        ({"profile": "constant", "rate": 2, "data": {"kind": "file", "path": "x"}}, "kind 'file'"),
        ({"profile": "constant", "rate-type": "poisson", "rate": 2, "data": DATA}, "disagree"),
        ({"profile": "burst", "rate": 2, "data": DATA}, "burst"),
    ],
)
def test_keys_not_understood_are_errors(profile, match):
    with pytest.raises(ConfigError, match=match):
        sim.load_config(profile)


def test_documentation_keys_are_ignored_and_zero_warmup_accepted(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(
        json.dumps({"profile": "constant", "rate": 3, "max-requests": 20, "metadata": {"owner": "me"}, "warmup": 0, "processor": "x", "data": DATA})
    )
    cfg = sim.load_config(path)
    assert cfg.arrival.rate_rps == 3.0
    res = sim.simulate(path, {"workload": {"num_requests": 20}})
    assert res.summary["num_finished"] == 20


def test_inference_perf_random_data_is_honoured():
    ip = {
        "load": {"type": "constant", "stages": [{"rate": 4, "duration": 50}]},
        "data": {
            "type": "random",
            "input_distribution": {"min": 100, "max": 4000, "mean": 2048, "std_dev": 256, "total_count": 500},
            "output_distribution": {"min": 10, "max": 1000, "mean": 512, "std_dev": 64, "total_count": 500},
        },
    }
    cfg = sim.load_config(ip)
    assert cfg.workload.prompt_tokens.mean == 2048 and cfg.workload.output_tokens.mean == 512
    assert cfg.workload.prefix_tokens == 0 and cfg.workload.prompt_pool == 500
    s = Simulation(cfg)
    prompts = np.array([s.workload.make_request(i).prompt_tokens for i in range(len(s.workload))])
    assert abs(prompts.mean() - 2048) < 4 * 256 / np.sqrt(min(len(prompts), 500)) + 2
    with pytest.raises(ConfigError, match="input_distribution"):
        sim.load_config({**ip, "data": {"type": "random", "output_distribution": ip["data"]["output_distribution"]}})
    with pytest.raises(ConfigError, match="median"):
        sim.load_config({**ip, "data": {**ip["data"], "input_distribution": {"mean": 5, "median": 4}}})
