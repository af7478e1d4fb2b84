"""Executors give identical results in input order: serial, process pool, Ray."""

from __future__ import annotations

import pytest

from sim.config import parse_run_config
from sim.errors import ConfigError
from sim.studies.executor import run_many


def _configs():
    return [
        parse_run_config({"cost": {"model": "linear"}, "seed": s, "workload": {"num_requests": 40}, "arrival": {"strategy": "poisson", "rate_rps": r}})
        for s, r in ((1, 2.0), (2, 8.0), (3, 30.0))
    ]


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.requests.to_csv(index=False) == y.requests.to_csv(index=False)
        assert x.summary == y.summary or str(x.summary) == str(y.summary)


def test_process_pool_matches_serial_in_order():
    serial = run_many(_configs(), "serial")
    assert [r.config.seed for r in serial] == [1, 2, 3]
    _same(serial, run_many(_configs(), "process", workers=2))
    _same(serial, run_many(_configs(), "process", workers=1))


def test_progress_is_reported():
    seen = []
    run_many(_configs(), "serial", progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_bad_executor_and_workers():
    with pytest.raises(ConfigError, match="unknown executor"):
        run_many(_configs(), "dask")
    with pytest.raises(ConfigError, match="--workers"):
        run_many(_configs(), "process", workers=0)


def test_ray_matches_serial():
    """A local Ray instance (installed with the test extra) gives the serial results."""
    ray = pytest.importorskip("ray", reason="Ray not installed: pip install 'servesim[ray]'")
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        _same(run_many(_configs(), "serial"), run_many(_configs(), "ray"))
    finally:
        ray.shutdown()
