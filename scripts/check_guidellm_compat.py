#!/usr/bin/env python
"""Check that a servesim guidellm report loads with guidellm's own loader.

Usage::

    python scripts/check_guidellm_compat.py path/to/benchmarks.json   # check an existing file
    python scripts/check_guidellm_compat.py                          # simulate a small run, write it to a temp dir, check it

Needs guidellm (0.8.1, the schema ``sim/records/guidellm.py`` matches) importable in the running
interpreter; servesim itself does not depend on it. guidellm imports torch only for its dataset
loader, which loading a report never uses; when torch is not installed this script puts a tiny
stand-in module in ``sys.modules`` so the loader can be imported without torch/CUDA
(``--no-torch-stub`` disables that). Exits 0 when ``GenerativeBenchmarksReport.load_file``
accepts the file and the loaded numbers match the file's; prints a short table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import types
from pathlib import Path
from typing import Generic, TypeVar

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _stub_torch() -> None:
    """Register a minimal ``torch`` (only what guidellm's data loader touches at import)."""
    # libraries that probe for torch (datasets, transformers) must see it as absent
    for mod in ("datasets", "transformers"):
        if importlib.util.find_spec(mod) is not None:
            __import__(mod)
    T = TypeVar("T")

    class DataLoader(Generic[T]):  # noqa: D101
        pass

    class IterableDataset(Generic[T]):  # noqa: D101
        pass

    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch.utils")
    data = types.ModuleType("torch.utils.data")
    dl = types.ModuleType("torch.utils.data.dataloader")
    ds = types.ModuleType("torch.utils.data.dataset")
    dl.DataLoader = data.DataLoader = DataLoader
    ds.IterableDataset = data.IterableDataset = IterableDataset
    data.dataloader, data.dataset, utils.data, torch.utils = dl, ds, data, utils
    sys.modules.update({"torch": torch, "torch.utils": utils, "torch.utils.data": data, "torch.utils.data.dataloader": dl, "torch.utils.data.dataset": ds})


def import_loader(stub_torch: bool = True):
    """guidellm's ``GenerativeBenchmarksReport`` (ImportError if guidellm is missing)."""
    if importlib.util.find_spec("guidellm") is None:
        raise ImportError("guidellm is not installed (pip install guidellm==0.8.1)")
    if stub_torch and "torch" not in sys.modules and importlib.util.find_spec("torch") is None:
        _stub_torch()
    from guidellm.benchmark.schemas.report import GenerativeBenchmarksReport

    return GenerativeBenchmarksReport


def check_file(path: Path, stub_torch: bool = True) -> list[str]:
    """Load ``path`` with guidellm; return a list of mismatches (empty = compatible)."""
    loader = import_loader(stub_torch)
    report = loader.load_file(path)
    raw = json.loads(Path(path).read_text())
    problems = []
    if len(report.benchmarks) != len(raw["benchmarks"]):
        problems.append(f"benchmarks: loaded {len(report.benchmarks)}, file has {len(raw['benchmarks'])}")
    for i, (b, rb) in enumerate(zip(report.benchmarks, raw["benchmarks"])):
        if b.config.strategy.type_ != rb["config"]["strategy"]["type_"]:
            problems.append(f"benchmark {i}: strategy {b.config.strategy.type_} != {rb['config']['strategy']['type_']}")
        rm = rb["metrics"]
        for name in ("time_to_first_token_ms", "inter_token_latency_ms", "time_per_output_token_ms", "request_latency",
                     "requests_per_second", "output_tokens_per_second"):  # fmt: skip
            got = getattr(b.metrics, name).successful
            want = rm[name]["successful"]
            if got.mean != want["mean"] or got.percentiles.p99 != want["percentiles"]["p99"]:
                problems.append(f"benchmark {i}: {name} changed on load")
        if b.metrics.request_totals.successful != rm["request_totals"]["successful"]:
            problems.append(f"benchmark {i}: request_totals changed on load")
        if len(b.requests.successful) != len(rb["requests"]["successful"]):
            problems.append(f"benchmark {i}: per-request records lost on load")
        for name, (got, want) in recompute_with_guidellm(b).items():
            if not _close(got, want):
                problems.append(f"benchmark {i}: {name} = {want} in the file, guidellm recomputes {got}")
        print(
            f"benchmark {i}: {b.config.strategy.type_:<11} requests ok={b.metrics.request_totals.successful} "
            f"err={b.metrics.request_totals.errored} inc={b.metrics.request_totals.incomplete}  "
            f"TTFT mean={b.metrics.time_to_first_token_ms.successful.mean:.2f} ms "
            f"p99={b.metrics.time_to_first_token_ms.successful.percentiles.p99:.2f} ms  "
            f"ITL mean={b.metrics.inter_token_latency_ms.successful.mean:.2f} ms  "
            f"req/s={b.metrics.requests_per_second.successful.mean:.3f}  "
            f"out tok/s={b.metrics.output_tokens_per_second.successful.mean:.1f}"
        )
    return problems


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def recompute_with_guidellm(bench) -> dict[str, tuple[float, float]]:
    """Recompute key summaries with guidellm's own code from the loaded per-request records,
    the way ``GenerativeMetrics.compile`` does; returns {name: (guidellm, file)} pairs."""
    from guidellm.schemas import StatusDistributionSummary as SDS

    req = bench.requests
    groups = {"successful": req.successful, "incomplete": req.incomplete, "errored": req.errored}
    start, end = bench.scheduler_metrics.measure_start_time, bench.scheduler_metrics.measure_end_time
    fresh = {
        "time_to_first_token_ms": SDS.from_values_function(lambda r: r.time_to_first_token_ms or 0.0, **groups),
        "inter_token_latency_ms": SDS.from_values_function(lambda r: (r.inter_token_latency_ms or 0.0, (r.output_tokens or 1.0) - 1.0), **groups),
        "time_per_output_token_ms": SDS.from_values_function(lambda r: (r.time_per_output_token_ms or 0.0, r.output_tokens or 0.0), **groups),
        "request_latency": SDS.from_values_function(lambda r: r.request_latency or 0.0, **groups),
        "requests_per_second": SDS.rate_distribution_from_timings_function(lambda r: r.request_end_time, **groups, start_time=start, end_time=end),
        "output_tokens_per_second": SDS.rate_distribution_from_timings_function(lambda r: r.output_tokens_timings, **groups, start_time=start, end_time=end),
        "request_concurrency": SDS.concurrency_distribution_from_timings_function(
            lambda r: (r.request_start_time, r.request_end_time), **groups, start_time=start, end_time=end
        ),
    }
    out = {}
    for name, summ in fresh.items():
        ours = getattr(bench.metrics, name)
        for status in ("successful", "total"):
            a, b = getattr(summ, status), getattr(ours, status)
            for stat in ("mean", "median", "std_dev", "min", "max", "count"):
                out[f"{name}.{status}.{stat}"] = (float(getattr(a, stat)), float(getattr(b, stat)))
            for p in ("p50", "p90", "p95", "p99"):
                out[f"{name}.{status}.{p}"] = (getattr(a.percentiles, p), getattr(b.percentiles, p))
    return out


def _demo_report(directory: Path) -> Path:
    from sim.config import parse_run_config
    from sim.core.simulation import simulate
    from sim.records.guidellm import build_report

    base = {
        "seed": 1,
        "cost": {"model": "fixed", "fixed_step_s": 0.01},
        "workload": {
            "num_requests": 30,
            "prompt_tokens": {"dist": "normal", "mean": 300, "stdev": 150, "min": 2, "max": 1500},
            "output_tokens": {"dist": "normal", "mean": 40, "stdev": 20, "min": 1, "max": 200},
        },
    }
    arrivals = [{"strategy": "synchronous"}, {"strategy": "constant", "rate_rps": 5.0}, {"strategy": "throughput"}]
    results = [simulate(parse_run_config({**base, "arrival": a})) for a in arrivals]
    path = directory / "benchmarks.json"
    path.write_text(json.dumps(build_report(results, model="llama-2-7b")))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", nargs="?", type=Path, help="report file or directory (default: simulate a demo run)")
    ap.add_argument("--no-torch-stub", action="store_true", help="do not stand in for a missing torch")
    args = ap.parse_args(argv)
    try:
        import_loader(not args.no_torch_stub)
    except ImportError as err:
        print(f"cannot import guidellm's loader: {err}", file=sys.stderr)
        return 2
    from importlib.metadata import version

    print(f"guidellm {version('guidellm')}")
    with tempfile.TemporaryDirectory() as tmp:
        path = args.path or _demo_report(Path(tmp))
        problems = check_file(path, not args.no_torch_stub)
    for p in problems:
        print("MISMATCH:", p, file=sys.stderr)
    print("OK: guidellm loaded the report" if not problems else "FAILED")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
