"""Run many independent simulations: serially, on a local process pool, or on Ray.

Every executor returns results in the order of the configs it was given, and each simulation
depends only on its own config (seeded streams), so results are identical whatever the
executor or worker count.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed

from sim.config import RunConfig
from sim.core.simulation import SimResult, simulate
from sim.errors import ConfigError

EXECUTORS = ("process", "serial", "ray")
Progress = Callable[[int, int], None]


def _worker_init() -> None:
    """Pool workers leave interrupts to the parent (which stops them) and die on SIGTERM:
    no worker prints a KeyboardInterrupt traceback, none outlives an interrupted parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def default_workers() -> int:
    """Worker processes for the local pool: one per CPU the process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def simulate_then(cfg: RunConfig, post: Callable[[SimResult], SimResult] | None = None) -> SimResult:
    """``simulate(cfg)``, then ``post(result)`` where it ran (a worker, for a pool)."""
    res = simulate(cfg)
    return post(res) if post is not None else res


def run_many(
    configs: Sequence[RunConfig],
    executor: str = "process",
    workers: int | None = None,
    progress: Progress | None = None,
    ray_address: str | None = None,
    post: Callable[[SimResult], SimResult] | None = None,
) -> list[SimResult]:
    """Simulate every config; results in input order. ``progress(done, total)`` after each.
    ``post`` (a module-level function, so workers can receive it) runs on each result where it
    was simulated, e.g. to compute report parts in parallel."""
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor: unknown executor {executor!r}; choose one of: {', '.join(EXECUTORS)}")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers: must be >= 1, got {workers}")
    total = len(configs)
    if executor == "ray":
        return _run_ray(configs, ray_address, progress, post)
    n_workers = min(workers or default_workers(), total) if total else 1
    if executor == "serial" or n_workers <= 1:
        out = []
        for i, cfg in enumerate(configs):
            out.append(simulate_then(cfg, post))
            if progress:
                progress(i + 1, total)
        return out
    results: list[SimResult | None] = [None] * total
    pool = ProcessPoolExecutor(max_workers=n_workers, initializer=_worker_init)
    try:
        futures = {pool.submit(simulate_then, cfg, post): i for i, cfg in enumerate(configs)}
        for done, fut in enumerate(as_completed(futures), start=1):
            results[futures[fut]] = fut.result()
            if progress:
                progress(done, total)
    except BaseException:
        # interrupted, terminated or failed: stop the workers now rather than letting them
        # finish (or block writing to a parent that is gone)
        workers_alive = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in workers_alive:
            proc.terminate()
        for proc in workers_alive:
            proc.join(timeout=5)
        raise
    pool.shutdown(wait=True)
    return results  # type: ignore[return-value]


def _run_ray(configs: Sequence[RunConfig], address: str | None, progress: Progress | None, post=None) -> list[SimResult]:
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray: Ray is not installed; install it with: pip install 'servesim[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    remote = ray.remote(simulate_then)
    refs = [remote.remote(cfg, post) for cfg in configs]  # type: ignore[call-arg]
    pending = {ref: i for i, ref in enumerate(refs)}
    results: list[SimResult | None] = [None] * len(refs)
    done = 0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            results[pending.pop(ref)] = ray.get(ref)
            done += 1
            if progress:
                progress(done, len(refs))
    return results  # type: ignore[return-value]
