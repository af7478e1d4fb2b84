"""Benchmark of ``servesim plan``: the whole command as a user types it (interpreter start,
imports, worker pool, every simulation, the report and the result files), printed as a
Markdown table.

    python scripts/bench_plan.py                # the issue's example, 3 runs
    python scripts/bench_plan.py --repeat 5
    python scripts/bench_plan.py --exhaustive   # also with every shape searched to the end

The example: Llama-2-70B at 40 req/s (Poisson), p99 TTFT <= 500 ms and p99 TPOT <= 50 ms, over
H100, A100, L40S x TP 1, 2, 4, 8, on the embedded default's chat workload, shipped calibration
and example prices, local process pool (one worker per CPU).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXAMPLE = ["plan", "--model", "llama-2-70b", "--rate", "40", "--slo", "ttft_p99=500,tpot_p99=50", "--gpus", "H100,A100,L40S", "--tp", "1,2,4,8", "-q"]


def _run(extra: list[str]) -> tuple[float, float, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "plan"
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "sim", *EXAMPLE, *extra, "-o", str(out)], check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        peak_mb = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
        return wall, peak_mb, json.loads((out / "plan.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs per case (median and fastest shown)")
    ap.add_argument("--exhaustive", action="store_true", help="also run with --exhaustive (every shape searched to its fewest replicas)")
    args = ap.parse_args()
    cases = [("branch and bound (default)", [])] + ([("--exhaustive", ["--exhaustive"])] if args.exhaustive else [])
    print(f"`servesim {' '.join(EXAMPLE)}` — {platform.python_implementation()} {platform.python_version()}, {platform.machine()}")
    print()
    print("| case | median s | fastest s | peak RSS MB (largest process) | simulations | cheapest |")
    print("|---|---|---|---|---|---|")
    for label, extra in cases:
        walls, peaks, doc = [], [], {}
        for _ in range(args.repeat):
            wall, peak, doc = _run(extra)
            walls.append(wall)
            peaks.append(peak)
        rec = doc.get("recommendation") or {}
        chosen = (
            f"{rec.get('replicas')}x {rec.get('gpu')} TP{rec.get('tensor_parallel_size')}, ${rec.get('usd_per_hour', float('nan')):.2f}/h" if rec else "none"
        )
        print(f"| {label} | {statistics.median(walls):.1f} | {min(walls):.1f} | {max(peaks):.0f} | {doc.get('num_simulations')} | {chosen} |")


if __name__ == "__main__":
    main()
