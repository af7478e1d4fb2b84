"""Client request timeouts (``arrival.request_timeout_s``): a request the client gave up on is
recorded ``timed_out`` at exactly ``sent + timeout`` with the output it received, the server
aborts it (seat and KV freed), and nothing else changes — laws, an analytic case, the
fast-forward cut, fleets, the CLI and the formats."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import make_config

from sim.cli.main import main
from sim.config import merge, parse_run_config
from sim.core.simulation import Simulation, make_simulation
from sim.errors import ConfigError
from sim.load.formats import from_inference_perf
from sim.records.guidellm import build_report

STATUSES = {"finished", "rejected", "timed_out", "in_flight", "not_sent"}
# the request table and summary counts of servesim before timeouts existed
COLUMNS_WITHOUT_TIMEOUT = [
    "request_id", "status", "arrival_s", "prompt_tokens", "output_tokens", "prefix_tokens", "cached_prompt_tokens",
    "first_scheduled_s", "first_token_s", "finish_s", "ttft_s", "e2e_s", "tpot_s", "queue_delay_s", "max_itl_s",
    "num_preemptions", "reject_reason",
]  # fmt: skip
COUNTS_WITHOUT_TIMEOUT = ["num_requests", "num_finished", "num_rejected", "num_in_flight", "num_not_sent"]
FIXED = {"prompt_tokens": {"dist": "fixed", "value": 300}, "output_tokens": {"dist": "fixed", "value": 80}}


def _cfg(timeout_s: float | None, **over) -> object:
    """A small overloaded-able run (fixed 10 ms steps, few KV blocks) with ``timeout_s``."""
    base = {
        "workload": {"num_requests": 120, **FIXED},
        "arrival": {"strategy": "constant", "rate_rps": 60.0, "request_timeout_s": timeout_s},
        "server": {"num_gpu_blocks": 120},
    }
    d = merge(base, over)
    return make_config(**d)


def _run(cfg, ff: bool = True):
    sim = make_simulation(cfg, fast_forward=ff)
    return sim.run(), sim


def _servers(sim):
    return [sim.server] if isinstance(sim, Simulation) else [r.server for r in sim.replicas]


def assert_timeout_laws(res, sim, timeout_s: float, horizon: bool = False) -> None:
    """The laws every run with a client timeout obeys."""
    df, s = res.requests, res.summary
    n = len(sim.workload)
    assert sorted(df["request_id"]) == list(range(n)), "every request exactly once"
    assert set(df["status"]) <= STATUSES
    counts = df["status"].value_counts()
    # conservation: sent = finished + timed out + rejected + in flight (+ never sent = all)
    sent = n - s["num_not_sent"]
    assert sim.num_sent == sent == s["num_finished"] + s["num_timed_out"] + s["num_rejected"] + s["num_in_flight"]
    for status in ("finished", "rejected", "timed_out", "in_flight", "not_sent"):
        assert s[f"num_{status}"] == counts.get(status, 0)
    deadline = df["arrival_s"] + timeout_s  # the client's deadline: its send plus the timeout
    fin = df[df["status"] == "finished"]
    assert (fin["finish_s"] <= deadline[fin.index]).all(), "a finished request outlived its timeout"
    assert (fin["generated_tokens"] == fin["output_tokens"]).all()
    out = df[df["status"] == "timed_out"]
    assert (out["finish_s"] == deadline[out.index]).all(), "a timeout landed off its deadline"
    assert (out["generated_tokens"] < out["output_tokens"]).all() and (out["generated_tokens"] >= 0).all()
    assert out["tpot_s"].isna().all() and out["reject_reason"].str.startswith("client timeout after").all()
    got_first = out["first_token_s"].notna()
    assert ((out["generated_tokens"] > 0) == got_first).all()
    assert (out.loc[got_first, "first_token_s"] <= out.loc[got_first, "finish_s"]).all()
    # latency statistics are the finished requests' only
    if len(fin):
        assert s["e2e_p99_ms"] == pytest.approx(np.percentile(fin["e2e_s"], 99) * 1e3)
        assert s["e2e_p99_ms"] <= timeout_s * 1e3 * (1 + 1e-12)
    for server in _servers(sim):
        if not horizon:  # every request left: no seat, no KV block, no staged request is held
            assert not server.engine.leaving
            assert server.kv.num_used_blocks == 0 and not server.scheduler.has_work() and not server.requests_inside()
        server.kv.check()


def _assert_identical(a, b) -> None:
    assert a.requests.to_csv(index=False) == b.requests.to_csv(index=False)
    assert a.steps.to_csv(index=False) == b.steps.to_csv(index=False)
    assert np.array_equal(np.asarray(a.itls_s), np.asarray(b.itls_s))
    assert str(a.summary) == str(b.summary)


# ------------------------------------------------------------------- analytic


def test_a_lone_request_fails_at_exactly_its_send_plus_the_timeout():
    """One request, 10 ms steps: its first token comes at 0.01 s, one token per step after. A
    0.255 s timeout falls inside the 26th step: the client has 25 tokens when it gives up at
    0.255 s; the server aborts the request when that step ends (its 26th token is dropped)."""
    cfg = _cfg(0.255, workload={"num_requests": 1, "prompt_tokens": {"dist": "fixed", "value": 100}, "output_tokens": {"dist": "fixed", "value": 100}})
    for ff in (True, False):
        res, sim = _run(cfg, ff)
        row = res.requests.iloc[0]
        assert row["status"] == "timed_out"
        assert row["finish_s"] == row["arrival_s"] + 0.255 and row["e2e_s"] == pytest.approx(0.255)
        assert row["generated_tokens"] == 25 and row["ttft_s"] == pytest.approx(0.01)
        assert row["reject_reason"] == "client timeout after 0.255 s while running, after 25 of 100 output tokens"
        assert len(res.steps) == 26, "the step running at the timeout completes; none after it"
        assert res.summary["num_timed_out"] == 1 and res.summary["num_finished"] == 0
        assert math.isnan(res.summary["e2e_mean_ms"]), "no finished request, no latency statistic"
        assert len(res.itls_s) == 24, "gaps the client saw: 25 tokens"
        assert_timeout_laws(res, sim, 0.255)


def test_synchronous_client_sends_the_next_request_when_it_gives_up():
    """Each request needs 1 s of 10 ms steps, the timeout is 0.5 s: every request times out and
    the synchronous client sends the next at that instant."""
    cfg = _cfg(
        0.5,
        arrival={"strategy": "synchronous", "rate_rps": None},
        workload={"num_requests": 4, "prompt_tokens": {"dist": "fixed", "value": 50}, "output_tokens": {"dist": "fixed", "value": 100}},
    )
    res, sim = _run(cfg)
    df = res.requests
    assert (df["status"] == "timed_out").all()
    assert df["arrival_s"].tolist() == [0.0, 0.5, 1.0, 1.5]
    assert (df["arrival_s"].iloc[1:].to_numpy() == df["finish_s"].iloc[:-1].to_numpy()).all()
    assert_timeout_laws(res, sim, 0.5)


def test_a_last_token_exactly_at_the_deadline_is_a_finish():
    """Same-instant order: a request whose last token comes exactly at its deadline finished;
    one ulp less and it timed out one token short (with fast-forward on and off)."""
    base = dict(workload={"num_requests": 1, "prompt_tokens": {"dist": "fixed", "value": 100}, "output_tokens": {"dist": "fixed", "value": 60}})
    free, _ = _run(_cfg(None, **base))
    finish = float(free.requests["finish_s"].iloc[0])  # sent at t = 0
    for ff in (True, False):
        at, sim = _run(_cfg(finish, **base), ff)
        assert at.requests["status"].iloc[0] == "finished" and at.requests["finish_s"].iloc[0] == finish
        assert_timeout_laws(at, sim, finish)
        short, sim = _run(_cfg(math.nextafter(finish, 0.0), **base), ff)
        row = short.requests.iloc[0]
        assert row["status"] == "timed_out" and row["generated_tokens"] == 59
        assert_timeout_laws(short, sim, math.nextafter(finish, 0.0))
        # a deadline exactly at the end of the step of the 30th token: that token is delivered
        step = free.steps.iloc[29]
        at_30 = float(step["start_s"] + step["duration_s"])
        mid, sim = _run(_cfg(at_30, **base), ff)
        row = mid.requests.iloc[0]
        assert row["status"] == "timed_out" and row["generated_tokens"] == 30 and row["finish_s"] == at_30
        assert len(mid.steps) == 30, "the server drops it before planning the next step"
        assert_timeout_laws(mid, sim, at_30)


def test_a_timeout_cuts_a_fast_forward_window():
    """A lone decoding request is fast-forwarded; the timeout inside the stretch still lands at
    its instant, with the tokens of the steps before it, as in the step-by-step loop."""
    cfg = _cfg(0.7777, workload={"num_requests": 1, "prompt_tokens": {"dist": "fixed", "value": 20}, "output_tokens": {"dist": "fixed", "value": 500}})
    sim = Simulation(cfg)
    planned: list[float] = []
    schedule = sim.scheduler.schedule
    sim.scheduler.schedule = lambda now_s: planned.append(now_s) or schedule(now_s)
    on = sim.run()
    assert len(planned) < 10, "the decode steps before the timeout were fast-forwarded"
    off, _ = _run(cfg, False)
    _assert_identical(on, off)
    row = on.requests.iloc[0]
    assert row["status"] == "timed_out" and row["finish_s"] == 0.7777 and row["generated_tokens"] == 77
    assert on.summary["num_steps"] == 78, "the step running at the timeout completes; none after it"


# ------------------------------------------------------------------ the laws

CASES = {
    "constant": {},
    "poisson-priority": {"arrival": {"strategy": "poisson", "rate_rps": 80.0}, "scheduler": {"policy": "priority"}, "workload": {"priority_levels": 3}},
    "sarathi": {"scheduler": {"policy": "sarathi"}},
    "prefix-cache": {"workload": {"prefix_tokens": 128, "prefix_groups": 2}, "server": {"enable_prefix_caching": True}},
    "async": {"server": {"async_scheduling": True}},
    "concurrent": {"arrival": {"strategy": "concurrent", "concurrency": 12, "rate_rps": None}},
    "throughput": {"arrival": {"strategy": "throughput", "rate_rps": None}, "server": {"num_gpu_blocks": 300}},
    "roofline-frontend": {"cost": {"model": "roofline", "frontend_latency_ms": 30.0, "frontend_us_per_prompt_token": 20.0}},
    "horizon": {"horizon_s": 1.5},
}


@pytest.mark.parametrize("timeout_s", [0.35, 1.3])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_laws_hold_and_fast_forward_changes_nothing(case, timeout_s):
    cfg = _cfg(timeout_s, **CASES[case])
    on, sim = _run(cfg, True)
    off, _ = _run(cfg, False)
    assert_timeout_laws(on, sim, timeout_s, horizon=cfg.horizon_s is not None)
    _assert_identical(on, off)


def test_deferred_decodes_report_what_was_delivered():
    """A loaded vLLM-V1 server defers its decodes' bookkeeping; requests timing out mid-step
    are recorded from the deferred state, exactly as the plain step loop records them."""
    cfg = _cfg(
        0.8, workload={"num_requests": 400, "output_tokens": {"dist": "fixed", "value": 150}}, arrival={"rate_rps": 200.0}, server={"num_gpu_blocks": 2000}
    )
    on, sim = _run(cfg, True)
    assert sim.engine.deferred
    off, _ = _run(cfg, False)
    _assert_identical(on, off)
    out = on.requests[on.requests["status"] == "timed_out"]
    assert len(out) > 50 and (out["generated_tokens"] > 1).any()
    assert_timeout_laws(on, sim, 0.8)


def test_overload_fails_requests_and_a_light_load_fails_none():
    over, sim = _run(_cfg(1.0, arrival={"rate_rps": 200.0}))
    assert over.summary["num_timed_out"] > 0
    assert_timeout_laws(over, sim, 1.0)
    light, sim = _run(_cfg(1.0, arrival={"rate_rps": 2.0}))
    assert light.summary["num_timed_out"] == 0 and light.summary["num_finished"] == 120
    assert_timeout_laws(light, sim, 1.0)


def test_streamed_records_and_summary_match_the_in_memory_run():
    cfg = _cfg(0.6)
    mem, _ = _run(cfg)
    chunks: list = []
    res = make_simulation(cfg, spill=lambda kind, frame: chunks.append((kind, frame)), chunk_rows=16).run()
    req = pd.concat([f for k, f in chunks if k == "requests"]).sort_values("request_id", kind="stable").reset_index(drop=True)
    assert req.to_csv(index=False) == mem.requests.to_csv(index=False)
    for key in ("num_finished", "num_timed_out", "num_in_flight", "num_not_sent", "num_rejected"):
        assert res.summary[key] == mem.summary[key]


# ------------------------------------------------------- unset: nothing changes


@pytest.mark.parametrize(
    "over",
    [
        {},
        {
            "arrival": {"strategy": "poisson", "rate_rps": 30.0},
            "server": {"async_scheduling": True, "enable_prefix_caching": True},
            "workload": {"prefix_tokens": 64},
        },
        {"arrival": {"strategy": "concurrent", "concurrency": 6, "rate_rps": None}},
        {"horizon_s": 1.0},
        {"cluster": {"groups": [{"replicas": 2}], "router": {"policy": "least-outstanding", "latency_ms": 1.0}}},
        {"cluster": {"groups": [{"role": "prefill"}, {"role": "decode"}]}},
    ],
    ids=["constant", "async-prefix", "concurrent", "horizon", "fleet", "prefill-decode"],
)
def test_unset_timeout_keeps_the_tables_and_a_timeout_that_never_fires_changes_nothing(over):
    """Without a timeout the tables and summary have exactly their earlier columns and keys; a
    timeout too long to fire adds its column and count and leaves every other value as it was."""
    unset, _ = _run(_cfg(None, **over))
    assert list(unset.requests.columns[: len(COLUMNS_WITHOUT_TIMEOUT)]) == COLUMNS_WITHOUT_TIMEOUT
    assert "generated_tokens" not in unset.requests.columns and "num_timed_out" not in unset.summary
    assert [k for k in unset.summary if k in COUNTS_WITHOUT_TIMEOUT or k == "num_timed_out"] == COUNTS_WITHOUT_TIMEOUT
    inert, sim = _run(_cfg(1e6, **over))
    assert inert.summary.pop("num_timed_out") == 0
    assert inert.requests.drop(columns="generated_tokens").to_csv(index=False) == unset.requests.to_csv(index=False)
    assert inert.steps.to_csv(index=False) == unset.steps.to_csv(index=False)
    assert np.array_equal(np.asarray(inert.itls_s), np.asarray(unset.itls_s))
    assert str(inert.summary) == str(unset.summary)
    if over.get("horizon_s") is None:
        assert inert.derived["end_s"] == unset.derived["end_s"], "no wake-up of the client's outlives the run"


# --------------------------------------------------------------------- fleets

PD = {"groups": [{"role": "prefill", "replicas": 1}, {"role": "decode", "replicas": 2}]}


@pytest.mark.parametrize(
    "cluster, where",
    [
        ({"groups": [{"replicas": 3}], "router": {"policy": "least-outstanding"}}, "while"),
        ({"groups": [{"replicas": 2}], "router": {"latency_ms": 500.0}}, "in the router"),
        ({"groups": [{"role": "prefill", "server": {"num_gpu_blocks": 20}}, {"role": "decode", "replicas": 2}]}, "(its prefill phase"),
        ({**PD, "kv_transfer": {"link": "tcp", "bandwidth_gb_per_s": 0.001, "latency_ms": 0.0}}, "during the KV transfer"),
    ],
    ids=["mixed", "router", "prefill", "transfer"],
)
def test_fleets_time_requests_out_wherever_they_are(cluster, where):
    timeout_s = 0.4
    cfg = _cfg(timeout_s, cluster=cluster, arrival={"rate_rps": 150.0})
    on, sim = _run(cfg, True)
    off, _ = _run(cfg, False)
    assert_timeout_laws(on, sim, timeout_s)
    _assert_identical(on, off)
    out = on.requests[on.requests["status"] == "timed_out"]
    assert out["reject_reason"].str.contains(where, regex=False).any(), out["reject_reason"].value_counts()
    assert sum(r.num_routed - r.num_left for r in sim.replicas) == 0, "every replica saw its requests leave"


@pytest.mark.parametrize("output_tokens, timeout_s, status, generated, where", [
    (1, 0.01, "finished", 1, ""),  # the prefill's step ends at the deadline with the only token
    (5, 0.01, "timed_out", 1, "as its first token came"),  # ... with the first of five
    (5, 0.005, "timed_out", 0, "(its prefill phase, on replica 0)"),  # during the prefill's step
])  # fmt: skip
def test_prefill_decode_deadline_at_the_prefill(output_tokens, timeout_s, status, generated, where):
    """A lone disaggregated request: its prefill (one 10 ms step) ends at 0.01 s."""
    workload = {"num_requests": 1, "prompt_tokens": {"dist": "fixed", "value": 100}, "output_tokens": {"dist": "fixed", "value": output_tokens}}
    cfg = _cfg(timeout_s, workload=workload, cluster={"groups": [{"role": "prefill"}, {"role": "decode"}]})
    for ff in (True, False):
        res, sim = _run(cfg, ff)
        row = res.requests.iloc[0]
        assert row["status"] == status and row["generated_tokens"] == generated and where in row["reject_reason"]
        assert row["replica"] == 0 and row["prefill_replica"] == 0
        assert_timeout_laws(res, sim, timeout_s)


def test_fleet_api_server_and_closed_loop_timeouts():
    """Requests given up while the API server holds them never reach the engine; a closed-loop
    user's next request follows at once."""
    cfg = _cfg(
        0.05,
        cost={"frontend_latency_ms": 80.0},
        arrival={"strategy": "concurrent", "concurrency": 3, "rate_rps": None},
        workload={"num_requests": 9},
        cluster={"groups": [{"replicas": 2}]},
    )
    res, sim = _run(cfg)
    assert (res.requests["status"] == "timed_out").all()
    assert res.requests["reject_reason"].str.contains("in the API server").all()
    assert res.summary["num_steps"] == 0
    assert_timeout_laws(res, sim, 0.05)


def test_staged_requests_time_out_under_async_scheduling():
    """1 s steps: a request that arrives during the first step is staged, and its 0.1 s timeout
    expires before the next step launches."""
    cfg = _cfg(0.1, cost={"fixed_step_s": 1.0}, server={"async_scheduling": True}, arrival={"rate_rps": 4.0}, workload={"num_requests": 3})
    res, sim = _run(cfg)
    reasons = res.requests["reject_reason"].tolist()
    assert reasons[0] == "client timeout after 0.1 s while running, before its first token"
    assert all("staged by async scheduling" in r for r in reasons[1:])
    assert_timeout_laws(res, sim, 0.1)


# ------------------------------------------------- reports, CLI and formats


def test_guidellm_report_counts_timeouts_as_errored():
    res, _ = _run(_cfg(0.5, arrival={"rate_rps": 200.0}))
    assert res.summary["num_timed_out"] > 0
    b = build_report([res], model="llama-2-7b")["benchmarks"][0]
    totals = b["metrics"]["request_totals"]
    assert totals["errored"] == res.summary["num_timed_out"] + res.summary["num_rejected"]
    assert totals["successful"] == res.summary["num_finished"]
    errored = b["requests"]["errored"]
    assert all(r["info"]["status"] == "errored" and r["info"]["error"].startswith("timed out by the simulated client") for r in errored)
    out = res.requests.set_index("request_id")
    for r in errored:
        row = out.loc[int(r["request_id"])]
        assert r["output_metrics"]["text_tokens"] == row["generated_tokens"]
        assert r["info"]["timings"]["request_end"] == pytest.approx(row["finish_s"])
    json.dumps(b)


def test_cli_request_timeout_flag(tmp_path):
    out = tmp_path / "r"
    args = ["run", "--cost-model", "fixed", "--num-requests", "60", "--strategy", "constant", "--rate", "300", "--num-gpu-blocks-override", "100"]
    res = CliRunner().invoke(main, [*args, "--request-timeout", "0.5", "--quiet", "--no-plots", "-o", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())["runs"][0]["summary"]
    req = pd.read_parquet(out / "runs/run/requests.parquet")
    assert s["num_timed_out"] == (req["status"] == "timed_out").sum() > 0
    assert "generated_tokens" in req.columns and "timed out" in res.output
    bad = CliRunner().invoke(main, [*args, "--request-timeout", "0", "--quiet", "-o", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "arrival.request_timeout_s" in bad.output


def test_inference_perf_request_timeout_maps_to_the_client_timeout():
    load = {"type": "constant", "stages": [{"rate": 5, "duration": 10}]}
    assert from_inference_perf({"load": {**load, "request_timeout": 900}})["arrival"]["request_timeout_s"] == 900
    assert "request_timeout_s" not in from_inference_perf({"load": {**load, "request_timeout": None}})["arrival"]
    with pytest.raises(ConfigError, match="load.request_timeout"):
        from_inference_perf({"load": {**load, "request_timeout": -1}})


@pytest.mark.parametrize("value", [0, -1.0, float("inf"), True])
def test_config_rejects_a_timeout_that_is_not_a_positive_number(value):
    with pytest.raises(ConfigError, match="request_timeout_s"):
        parse_run_config({"arrival": {"strategy": "poisson", "rate_rps": 1.0, "request_timeout_s": value}})
