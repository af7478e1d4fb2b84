"""The planner (``servesim plan``, ``sim.plan``): laws of its answer — minimal replica counts,
monotonicity in SLO, rate and price, bounds that decide "meets", branch and bound agreeing with
the exhaustive search, exclusions with reasons, determinism — and its command line."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from click.testing import CliRunner

from sim.cli.main import main
from sim.config import merge, parse_run_config
from sim.core.simulation import Simulation, simulate
from sim.errors import ConfigError
from sim.plots.plan import pareto_front
from sim.studies.executor import run_many
from sim.studies.plan import Planner, batch1_bounds, parse_prices, rank, shapes_for

PRICES = {"H100": 2.0, "A100": 1.2, "L40S": 0.8}


def plan_config(rate_rps: float = 30.0, ttft_ms: float = 300.0, tpot_ms: float = 40.0, **over):
    """Llama-2-7B on the embedded default's chat workload, small runs (150 requests)."""
    from importlib import resources

    import yaml

    base = yaml.safe_load(resources.files("sim").joinpath("data/default.yaml").read_text())
    base["workload"]["num_requests"] = 150
    base["arrival"] = {"strategy": "poisson", "rate_rps": rate_rps}
    base["slo"] = {"ttft_p99_ms": ttft_ms, "tpot_p99_ms": tpot_ms}
    return parse_run_config(merge(base, over))


def serial(cfgs):
    return run_many(cfgs, "serial")


def run_plan(cfg, gpus=("H100", "A100"), tps=(1,), prices=None, **kw):
    return Planner(cfg, shapes_for(list(gpus), list(tps)), prices=prices, **kw).run(serial)


@pytest.fixture(scope="module")
def base_plan():
    return run_plan(plan_config())


def by_shape(result):
    return {p.shape.label: p for p in result.shapes}


# ---------------------------------------------------------------- the answer's laws


def test_counts_are_minimal_and_bounds_decide(base_plan):
    found = 0
    for p in base_plan.shapes:
        assert p.status in ("meets", "at risk"), (p.shape.label, p.status, p.reason)
        n = p.replicas_point
        fleets = {e.replicas: e.meets_slo for e in p.evaluations if e.kind == "fleet"}
        assert fleets[n] is True
        if n > 1:
            assert fleets[n - 1] is False  # one fewer was simulated and fails the SLOs
            found += 1
        if p.status == "meets":
            assert p.replicas >= n
            hi = p.bounds[p.replicas]
            assert hi["ttft_p99_ms"][1] <= 300 and hi["tpot_p99_ms"][1] <= 40
            for m in range(n, p.replicas):  # counts below the answer miss the bound (or were skipped by it)
                assert m not in p.bounds or not (p.bounds[m]["ttft_p99_ms"][1] <= 300 and p.bounds[m]["tpot_p99_ms"][1] <= 40)
        # every upper bound is above its point estimate
        for m, b in p.bounds.items():
            for key, (lo, hi_) in b.items():
                v = p.fleet[m][key]
                if v == v:
                    assert lo <= v <= hi_, (key, lo, v, hi_)
    assert found, "the fixture should make at least one shape need more than one replica"


def test_batch1_bound_is_below_every_simulated_p99():
    for over in ({}, {"server": {"enable_prefix_caching": True}}, {"gpu": "L40S"}):
        cfg = plan_config(rate_rps=20.0, **over)
        b = batch1_bounds(Simulation(cfg))
        for strategy in ("synchronous", "poisson"):
            res = simulate(
                parse_run_config(
                    merge(cfg.model_dump(mode="json"), {"arrival": {"strategy": strategy, "rate_rps": None if strategy == "synchronous" else 20.0}})
                )
            )
            for key in ("ttft_p99_ms", "tpot_p99_ms", "e2e_p99_ms"):
                assert res.summary[key] >= b[key] * (1 - 1e-9), (over, strategy, key, res.summary[key], b[key])


def test_looser_slo_never_needs_more_replicas(base_plan):
    loose = run_plan(plan_config(ttft_ms=600.0, tpot_ms=80.0))
    a, b = by_shape(base_plan), by_shape(loose)
    for label, p in a.items():
        q = b[label]
        assert q.replicas_point <= p.replicas_point
        if p.replicas is not None and q.replicas is not None:
            assert q.replicas <= p.replicas


def test_higher_rate_never_needs_fewer_replicas(base_plan):
    higher = run_plan(plan_config(rate_rps=60.0))
    a, b = by_shape(base_plan), by_shape(higher)
    for label, p in a.items():
        q = b[label]
        assert q.replicas_point is not None and q.replicas_point >= p.replicas_point
        if p.replicas is not None and q.replicas is not None:
            assert q.replicas >= p.replicas


def test_doubling_a_price_never_makes_that_gpu_more_preferred(base_plan):
    for gpu in ("H100", "A100"):
        before = rank(base_plan, PRICES)
        after = rank(base_plan, {**PRICES, gpu: 2 * PRICES[gpu]})
        meets_b = list(before.loc[before["status"] == "meets", "gpu"])
        meets_a = list(after.loc[after["status"] == "meets", "gpu"])
        assert meets_a.index(gpu) >= meets_b.index(gpu)
        if meets_b[0] != gpu:
            assert meets_a[0] != gpu
    # and the branch-and-bound search, which prices while it searches, agrees
    for gpu in ("H100", "A100"):
        bb = rank(run_plan(plan_config(), prices={**PRICES, gpu: 2 * PRICES[gpu]}), {**PRICES, gpu: 2 * PRICES[gpu]})
        ex = rank(base_plan, {**PRICES, gpu: 2 * PRICES[gpu]})
        first = lambda df: tuple(df.loc[df["status"] == "meets"].iloc[0][["shape", "replicas"]])  # noqa: E731
        assert first(bb) == first(ex)


def test_rank_is_cheapest_first_and_prices_are_arithmetic(base_plan):
    df = rank(base_plan, PRICES)
    meets = df[df["status"] == "meets"]
    assert list(meets["usd_per_hour"]) == sorted(meets["usd_per_hour"])
    for r in df[df["status"].isin(["meets", "at risk"])].itertuples():
        assert r.num_gpus == r.replicas * r.tensor_parallel_size
        assert math.isclose(r.usd_per_hour, r.num_gpus * PRICES[r.gpu])
        assert math.isclose(r.usd_per_million_output_tokens, r.usd_per_hour / (r.output_tokens_per_s * 3600) * 1e6)
        assert 0 < r.goodput_rps <= 30.0 + 1e-9


def test_exclusions_and_pruning_need_no_simulation():
    cfg = plan_config(model="llama-2-70b")
    res = run_plan(cfg, gpus=("L40S",), tps=(1, 3))
    assert res.num_simulations == 0
    reasons = {p.shape.label: (p.status, p.reason) for p in res.shapes}
    assert reasons["L40S-tp1"][0] == "excluded" and "does not fit" in reasons["L40S-tp1"][1]
    assert reasons["L40S-tp3"][0] == "excluded" and "does not divide" in reasons["L40S-tp3"][1]
    # one request's KV must fit: a KV cache smaller than the longest request excludes the shape
    small = run_plan(plan_config(server={"num_gpu_blocks": 20}), gpus=("H100",))
    (p,) = small.shapes
    assert p.status == "excluded" and "KV cache capacity" in p.reason
    # an SLO that even one request alone misses is pruned by the closed form
    tight = run_plan(plan_config(tpot_ms=1.0), gpus=("H100", "A100"))
    assert tight.num_simulations == 0
    assert all(p.status == "pruned" and "batch-1" in p.reason for p in tight.shapes)


def test_deterministic_whatever_the_executor():
    cfg = plan_config()
    a = rank(Planner(cfg, shapes_for(["H100", "A100"], [1]), prices=PRICES).run(serial), PRICES)
    b = rank(Planner(cfg, shapes_for(["H100", "A100"], [1]), prices=PRICES).run(lambda c: run_many(c, "process", 2)), PRICES)
    pd.testing.assert_frame_equal(a, b)


def test_bad_inputs_are_named():
    with pytest.raises(ConfigError, match="rate"):
        Planner(plan_config().model_copy(update={"arrival": plan_config().arrival.model_copy(update={"strategy": "synchronous"})}), shapes_for(["H100"], [1]))
    with pytest.raises(ConfigError, match="aggregate SLO"):
        Planner(parse_run_config(merge(plan_config().model_dump(mode="json"), {"slo": {"ttft_p99_ms": None, "tpot_p99_ms": None}})), shapes_for(["H100"], [1]))
    with pytest.raises(ConfigError, match="no price for GPU 'L40S'"):
        Planner(plan_config(), shapes_for(["L40S"], [1]), prices={"H100": 1.0})
    with pytest.raises(ConfigError, match="--tp"):
        shapes_for(["H100"], [0])
    with pytest.raises(ConfigError, match="unknown GPU"):
        shapes_for(["H999"], [1])
    with pytest.raises(ConfigError, match="--level"):
        Planner(plan_config(), shapes_for(["H100"], [1]), level=1.5)
    with pytest.raises(ConfigError, match="prefill/decode"):
        Planner(
            parse_run_config(merge(plan_config().model_dump(mode="json"), {"cluster": {"groups": [{"role": "prefill"}, {"role": "decode"}]}})),
            shapes_for(["H100"], [1]),
        )


def test_parse_prices():
    assert parse_prices({"gpus": {"h100": {"usd_per_gpu_hour": 2.5, "source": "x", "as_of": "2026"}, "A100": 1}}) == {"H100": 2.5, "A100": 1.0}
    for bad, match in (
        ({"gpus": {"H100": {"usd_per_gpu_hour": -1}}}, "positive"),
        ({"gpus": {"H100": {"usd_per_gpu_hour": True}}}, "positive"),
        ({"gpus": {"H100": {"price": 2}}}, "unknown key"),
        ({"gpu": {"H100": 2}}, "unknown key"),
        ({"gpus": {}}, "'gpus' must map"),
        ({"currency": "EUR", "gpus": {"H100": 2}}, "currency"),
        ([1, 2], "mapping"),
    ):
        with pytest.raises(ConfigError, match=match):
            parse_prices(bad)


def test_pareto_front():
    import numpy as np

    x = np.array([1.0, 2.0, 3.0, 2.5, 0.5])
    y = np.array([5.0, 4.0, 1.0, 1.0, 4.0])
    assert list(pareto_front(x, y)) == [0, 1, 2]  # (2.5, 1) and (0.5, 4) are beaten on both axes


# ---------------------------------------------------------------- the command line and the API


def test_cli_plan_writes_one_result(tmp_path):
    out = tmp_path / "p"
    args = ["plan", "--rate", "30", "--slo", "ttft_p99=300,tpot_p99=40", "--gpus", "H100,A100", "--tp", "1", "--num-requests", "150", "-q", "-o", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "cheapest:" in res.output and "meets" in res.output
    for name in ("plan.json", "shapes.parquet", "evaluations.parquet", "config.yaml", "plots/pareto.png"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "plan.json").read_text())
    rec = doc["recommendation"]
    assert rec["status"] == "meets" and rec["usd_per_hour"] == min(d["usd_per_hour"] for d in doc["deployments"] if d["status"] == "meets")
    assert (out / "runs" / f"plan-{rec['shape']}-x{rec['replicas']}" / "requests.parquet").is_file()
    shapes = pd.read_parquet(out / "shapes.parquet")
    assert set(shapes["shape"]) == {"H100-tp1", "A100-tp1"}
    js = CliRunner().invoke(main, [*args[:-1], str(tmp_path / "j"), "--format", "json", "--no-plots"])
    assert js.exit_code == 0, js.output
    assert json.loads(js.output)["recommendation"] == rec


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--slo", "ttft_p99=300"], "--rate"),
        (["--rate", "10"], "--slo"),
        (["--rate", "10", "--slo", "ttft_p99=300", "--tp", "x"], "--tp"),
        (["--rate", "10", "--slo", "ttft_p99=300", "--gpus", "B300"], "unknown GPU"),
        (["--rate", "10", "--slo", "ttft_p99=300", "--prices", "missing.yaml"], "file not found"),
        (["--rate", "10", "--slo", "ttft_p99=300", "--gpus", "H200"], "no price for GPU 'H200'"),
        (["--rate", "-1", "--slo", "ttft_p99=300"], "rate_rps"),
    ],
)
def test_cli_plan_bad_input_exits_2(tmp_path, extra, message):
    res = CliRunner().invoke(main, ["plan", "-q", "-o", str(tmp_path / "x"), *extra])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert not (tmp_path / "x").exists()


def test_cli_prices_file(tmp_path):
    prices = tmp_path / "prices.yaml"
    prices.write_text("gpus:\n  H100: {usd_per_gpu_hour: 3.0, source: mine}\n  oops: 1\n  A100: {usd_per_gpu_hour: 0}\n")
    res = CliRunner().invoke(main, ["plan", "--rate", "10", "--slo", "ttft_p99=300", "--prices", str(prices), "-q", "-o", str(tmp_path / "x")])
    assert res.exit_code == 2 and "gpus.A100" in res.output


def test_python_api_matches_the_planner():
    import sim

    cfg = plan_config()
    df = sim.plan(
        rate_rps=30,
        slo={"ttft_p99": 300, "tpot_p99": 40},
        gpus=["H100", "A100"],
        tp=[1],
        overrides={"workload": {"num_requests": 150}},
        prices=PRICES,
        executor="serial",
    )
    assert isinstance(df, pd.DataFrame)
    ref = rank(Planner(cfg, shapes_for(["H100", "A100"], [1]), prices=PRICES).run(serial), PRICES)
    pd.testing.assert_frame_equal(df, ref)


def test_cli_plan_router_reaches_the_fleets(tmp_path):
    out = tmp_path / "r"
    res = CliRunner().invoke(
        main,
        [
            "plan",
            "--rate",
            "30",
            "--slo",
            "ttft_p99=300,tpot_p99=40",
            "--gpus",
            "A100",
            "--tp",
            "1",
            "--num-requests",
            "150",
            "--router",
            "least-outstanding",
            "--no-plots",
            "-q",
            "-o",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "plan.json").read_text())
    assert doc["router"] == "least-outstanding" and "router least-outstanding" in res.output
    rec = doc["recommendation"]
    replicas = pd.read_parquet(out / "runs" / f"plan-{rec['shape']}-x{rec['replicas']}" / "replicas.parquet")
    assert len(replicas) == rec["replicas"]


def test_early_stop_changes_no_verdict():
    """A run stopped once certain to miss the TTFT SLO gets the verdict it would have got run
    to the end, so the plan is the same; and the stop does happen on overloaded runs."""
    cfg = plan_config(rate_rps=45.0, ttft_ms=35.0)
    on = run_plan(cfg, gpus=("H100",), max_replicas=3, early_stop=True)
    off = run_plan(cfg, gpus=("H100",), max_replicas=3, early_stop=False)
    for p, q in zip(on.shapes, off.shapes):
        assert (p.status, p.replicas_point, p.replicas, p.capacity_rps) == (q.status, q.replicas_point, q.replicas, q.capacity_rps)
        assert [(e.kind, e.replicas, e.rate_rps, e.meets_slo) for e in p.evaluations] == [(e.kind, e.replicas, e.rate_rps, e.meets_slo) for e in q.evaluations]
    assert any(v.startswith("stopped early") for p in on.shapes for e in p.evaluations for v in e.violations)


def test_stopped_run_would_have_missed_the_slo():
    over = plan_config(rate_rps=80.0, ttft_ms=100.0)
    cfg = parse_run_config(merge(over.model_dump(mode="json"), {"workload": {"num_requests": 400}}))
    full = simulate(cfg)
    stopped = simulate(parse_run_config(merge(cfg.model_dump(mode="json"), {"stop_when_slo_missed": True})))
    assert stopped.derived["stopped_early"] and full.summary["ttft_p99_ms"] > 100.0
    assert stopped.summary["num_in_flight"] + stopped.summary["num_not_sent"] > 0
    assert stopped.summary["end_s" if "end_s" in stopped.summary else "duration_s"] < full.summary["end_s" if "end_s" in full.summary else "duration_s"]
    n_late = int((full.requests["ttft_s"] > 0.1).sum())
    assert n_late >= 400 - math.floor(0.99 * 399)  # the full run has at least the watch's limit of late first tokens
    with pytest.raises(ConfigError, match="stop_when_slo_missed"):
        simulate(parse_run_config(merge(cfg.model_dump(mode="json"), {"stop_when_slo_missed": True, "slo": {"ttft_p99_ms": None}})))
