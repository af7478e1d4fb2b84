"""Inputs servesim could misread are refused: booleans as numbers, YAML 1.1 surprises, HF
config sizes that are not whole numbers in range."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from sim.catalogue.models import HF_DEFAULT_MAX_LEN, model_spec_from_hf
from sim.cli import main
from sim.config import parse_run_config
from sim.errors import ConfigError


@pytest.mark.parametrize(
    "data, field",
    [
        ({"workload": {"num_requests": True}}, "workload.num_requests"),
        ({"arrival": {"strategy": "poisson", "rate_rps": True}}, "arrival.rate_rps"),
        ({"seed": False}, "seed"),
        ({"server": {"max_num_seqs": True}}, "server.max_num_seqs"),
        ({"workload": {"prompt_tokens": {"dist": "fixed", "value": True}}}, "workload.prompt_tokens.value"),
        ({"cluster": {"groups": [{"replicas": True}]}}, "cluster.groups.0.replicas"),
    ],
)
def test_booleans_are_not_numbers(data, field):
    with pytest.raises(ConfigError, match=f"{field}: expected a number, got (true|false)"):
        parse_run_config(data)


def test_booleans_stay_booleans():
    assert parse_run_config({"server": {"enable_prefix_caching": True}}).server.enable_prefix_caching is True


@pytest.mark.parametrize(
    "text, key, expected",
    [
        ("seed: 017\n", "seed", 17),  # YAML 1.1: 15
        ("seed: 0o17\n", "seed", 15),
        ("seed: 0x1f\n", "seed", 31),
        ("horizon_s: 1e3\n", "horizon_s", 1000.0),  # YAML 1.1: the string "1e3"
    ],
)
def test_yaml_scalars_follow_yaml_1_2(tmp_path, text, key, expected):
    from sim.cli.config_input import read_config_file

    f = tmp_path / "c.yaml"
    f.write_text(text)
    _, data = read_config_file(str(f))
    assert data[key] == expected and type(data[key]) is type(expected)


@pytest.mark.parametrize("value", ["on", "yes", "1:30"])
def test_yaml_1_1_booleans_and_base_60_are_not_numbers(tmp_path, value):
    f = tmp_path / "c.yaml"
    f.write_text(f"seed: {value}\n")
    res = CliRunner().invoke(main, ["config", str(f)])
    assert res.exit_code == 2 and "seed" in res.output


def test_set_values_parse_as_yaml_1_2():
    from sim.cli.config_input import build_config

    cfg, _ = build_config(None, {}, ("seed=017",))
    assert cfg.seed == 17


BASE = {"num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32, "torch_dtype": "float16"}


@pytest.mark.parametrize(
    "over, message",
    [
        ({"num_hidden_layers": True}, "num_hidden_layers must be a whole number"),
        ({"num_hidden_layers": 32.7}, "num_hidden_layers must be a whole number"),
        ({"hidden_size": float("inf")}, "hidden_size must be a whole number"),
        ({"vocab_size": -5}, "vocab_size must be between 0"),
        ({"max_position_embeddings": -1}, "max_position_embeddings must be between 1"),
        ({"num_key_value_heads": "8"}, "num_key_value_heads must be a whole number"),
        ({"hidden_size": 2**40}, "hidden_size must be between 1"),
    ],
)
def test_hf_config_sizes_are_whole_numbers_in_range(over, message):
    with pytest.raises(ConfigError, match=message):
        model_spec_from_hf({**BASE, **over}, "m")


def test_hf_config_without_a_length_gets_vllms_fallback_and_integral_floats_pass():
    spec = model_spec_from_hf({**BASE, "num_hidden_layers": 32.0}, "m")
    assert spec.num_layers == 32 and spec.max_position_embeddings == HF_DEFAULT_MAX_LEN == 2048


def test_cli_model_file_with_a_boolean_size_exits_2(tmp_path):
    f = tmp_path / "config.json"
    f.write_text(json.dumps({**BASE, "num_hidden_layers": True}))
    res = CliRunner().invoke(main, ["run", "--model", str(f), "--num-requests", "3", "-q", "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "num_hidden_layers" in res.output


@pytest.mark.parametrize("model", ["fixed", "linear"])
@pytest.mark.parametrize("setting", [{"formula": "additive"}, {"formula": "magic"}, {"calibration": "h100"}])
def test_roofline_settings_under_a_whole_step_cost_model_are_refused(model, setting):
    from sim.core.simulation import simulate

    key = next(iter(setting))
    with pytest.raises(ConfigError, match=f"cost.{key}: the {model} cost model has no mixed-batch formula"):
        simulate(parse_run_config({"cost": {"model": model, **setting}, "workload": {"num_requests": 2}}))


def test_compare_formulas_under_the_fixed_cost_model_is_refused(tmp_path):
    res = CliRunner().invoke(
        main, ["compare", "--cost-model", "fixed", "--formulas", "additive,max", "--seeds", "2", "--num-requests", "5", "-q", "-o", str(tmp_path / "c")]
    )
    assert res.exit_code == 2 and "cost.formula" in res.output


def test_max_model_len_beyond_the_models_context_is_refused():
    from sim.core.simulation import simulate

    with pytest.raises(ConfigError, match=r"server.max_model_len: 1000000000 exceeds llama-2-7b's max_position_embeddings \(4096\)"):
        simulate(parse_run_config({"server": {"max_model_len": 10**9}, "workload": {"num_requests": 2}}))
    assert simulate(parse_run_config({"server": {"max_model_len": 4096}, "workload": {"num_requests": 2}})).summary["num_finished"] == 2


@pytest.mark.parametrize(
    "text, message",
    [
        (
            '{"num_hidden_layers": Infinity, "hidden_size": 4096, "num_attention_heads": 32, "torch_dtype": "float16"}',
            "num_hidden_layers must be a whole number",
        ),
        ('{"num_hidden_layers": 1e400, "hidden_size": 4096, "num_attention_heads": 32, "torch_dtype": "float16"}', "num_hidden_layers must be a whole number"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
    ids=["Infinity", "1e400", "deep"],
)
def test_hf_config_files_with_overflowing_or_deep_json(tmp_path, text, message):
    from sim.catalogue.models import load_model_config

    f = tmp_path / "config.json"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_model_config(f)


def test_set_with_a_deeply_nested_value_exits_2():
    res = CliRunner().invoke(main, ["config", "--set", "seed=" + "[" * 100_000])
    assert res.exit_code == 2 and "--set" in res.output
