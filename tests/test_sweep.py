"""Saturation verdicts on a server whose capacity is known in closed form.

Fixed step Δ, S seats, prompts that fit one step and O output tokens: each request holds a seat
for exactly O steps, so the server completes at most S/(O·Δ) requests per second.
"""

from __future__ import annotations

import pytest
from conftest import make_config

from sim.core.simulation import simulate
from sim.studies.executor import run_many
from sim.studies.sweep import full_batch_capacity_rps, is_stable, queue_growth, run_sweep

STEP_S, SEATS, OUTPUT = 0.01, 8, 20
CAPACITY_RPS = SEATS / (OUTPUT * STEP_S)  # 40 req/s


def _cfg(strategy: str, rate: float | None = None, n: int = 400, **over):
    return make_config(
        cost={"model": "fixed", "fixed_step_s": STEP_S},
        server={"max_num_seqs": SEATS},
        workload={"num_requests": n, "prompt_tokens": {"dist": "fixed", "value": 32}, "output_tokens": {"dist": "fixed", "value": OUTPUT}},
        arrival={"strategy": strategy, "rate_rps": rate},
        **over,
    )


def test_full_batch_capacity_matches_closed_form():
    res = simulate(_cfg("throughput"))
    assert full_batch_capacity_rps(res) == pytest.approx(CAPACITY_RPS, rel=0.05)


def test_full_batch_capacity_is_nan_without_enough_finishes():
    assert full_batch_capacity_rps(simulate(_cfg("throughput", n=5))) != full_batch_capacity_rps(simulate(_cfg("throughput", n=5)))


@pytest.mark.parametrize("load", [0.3, 0.6, 0.85])
def test_rates_below_capacity_are_stable(load):
    res = simulate(_cfg("constant", load * CAPACITY_RPS))
    slope, span_s, _ = queue_growth(res)
    assert span_s > 0 and abs(slope) * span_s < 3
    assert is_stable(res)
    assert is_stable(res, CAPACITY_RPS)


@pytest.mark.parametrize("load", [1.3, 2.0])
def test_rates_above_capacity_are_unstable_by_the_queue_alone(load):
    """The waiting queue grows at ≈ offered − capacity; the verdict needs no capacity estimate."""
    res = simulate(_cfg("constant", load * CAPACITY_RPS))
    slope, _, _ = queue_growth(res)
    assert slope == pytest.approx((load - 1) * CAPACITY_RPS, rel=0.25)
    assert not is_stable(res)


def test_capacity_criterion_overrides_a_quiet_queue():
    res = simulate(_cfg("constant", 0.6 * CAPACITY_RPS))
    assert is_stable(res, float("nan"))
    assert not is_stable(res, 0.5 * CAPACITY_RPS)


def test_sweep_places_an_overload_point_and_finds_saturation_below_capacity():
    cfg = _cfg("poisson", 1.0, sweep={"num_points": 6})
    result = run_sweep(cfg, lambda cfgs: run_many(cfgs, "serial"))
    rates = [p.rate_rps for p in result.points if p.rate_rps is not None]
    thr = result.points[1].achieved_rps
    assert rates[-1] == pytest.approx(1.25 * rates[-2]) and rates[-2] == pytest.approx(thr)
    assert result.full_batch_capacity_rps == pytest.approx(CAPACITY_RPS, rel=0.05)
    assert result.saturation_rps is not None and result.saturation_rps <= result.full_batch_capacity_rps
    assert not result.points[-1].stable  # 1.25 × throughput rate ≥ capacity


def test_overload_point_can_be_switched_off():
    cfg = _cfg("poisson", 1.0, n=60, sweep={"num_points": 4, "overload_factor": None})
    result = run_sweep(cfg, lambda cfgs: run_many(cfgs, "serial"))
    assert len(result.points) == 4


def test_capacity_never_exceeds_what_a_full_batch_completes():
    """A loose SLO and a short run: the rate search may not report a rate above the throughput
    run's full-batch capacity (a queue there grows without bound, however short the run)."""
    from sim.studies.sweep import find_capacity, point_config

    cfg = make_config(workload={"num_requests": 300}, slo={"ttft_p99_ms": 1e6, "tpot_p99_ms": 1e6})
    cap = find_capacity(cfg, lambda cfgs: run_many(cfgs, "serial"))
    (thr,) = run_many([point_config(cfg, "throughput")], "serial")
    batch = full_batch_capacity_rps(thr)
    assert cap.capacity_rps is not None and batch == batch
    assert cap.capacity_rps <= batch
    assert any("full-batch capacity" in " ".join(v) for r, ok, v in cap.tried if r > batch)


def _default_sweep(num_requests: int):
    import sim

    return sim.sweep(overrides={"workload": {"num_requests": num_requests}}, executor="serial")


def test_unsaturated_throughput_run_measures_no_capacity():
    """100 requests fit the 256 seats at once: the throughput run never made a request wait,
    so its completion rate is no full-batch capacity and no rate is failed by it."""
    from sim.studies.sweep import full_batch_capacity_rps

    sw = _default_sweep(100)
    assert full_batch_capacity_rps(sw.points[1].result) != full_batch_capacity_rps(sw.points[1].result)  # NaN
    assert not any("above the full-batch capacity" in n or "full-batch capacity" in n for n in sw.notes)
    # a saturating throughput run still measures it (the embedded default: 600 requests)
    big = _default_sweep(600)
    assert full_batch_capacity_rps(big.points[1].result) > 0


def test_short_points_are_inconclusive_and_verdicts_agree():
    sw = _default_sweep(100)
    rate = [p for _, p in sw.rate_points()]
    assert any(p.inconclusive for p in rate)
    for p in rate:
        if p.inconclusive:
            assert p.stable is None
    # the saturation point is the last of an unbroken run of stable rates from the bottom
    chain = []
    for p in rate:
        if p.stable is not True:
            break
        chain.append(p.rate_rps)
    assert sw.saturation_rps == (chain[-1] if chain else None)
    above = any("saturation lies above the swept range" in n for n in sw.notes)
    assert above == all(p.stable is True for p in rate)
    if not above and rate[len(chain)].inconclusive:
        assert any("inconclusive" in n and "num_requests" in n for n in sw.notes)
