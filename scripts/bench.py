"""Performance benchmarks P1–P3 and scaling, printed as a Markdown table.

Each case runs in a fresh subprocess so that its peak memory (ru_maxrss) is its own.
"wall s" is timed inside it from the parsed config to the result (the run's own imports,
worker pool start-up and result tables included); "process s" is the whole subprocess as the
parent sees it (interpreter start and every import too).

    python scripts/bench.py                 # P1, P3 and the scaling table
    python scripts/bench.py --p2            # also P2 (100,000 requests, streamed)
    python scripts/bench.py --million       # also 1,000,000 requests, streamed to disk
    python scripts/bench.py --fleet         # also F16: 16 replicas, each at P1's load
    python scripts/bench.py --priority      # also the priority policy overloaded (10,000 requests)
    python scripts/bench.py --repeat 3      # each case three times (this machine's speed drifts)

After the in-process table, the commands a user types are timed as whole processes (start,
imports, simulation, report, every output file): ``servesim --help``, ``servesim run`` of P1
with default outputs and with ``--stream``, the embedded default ``python -m sim``, and with
``--p2`` ``servesim run`` of P2 with default outputs.

P1: Llama-2-7B, TP 1, H100, 10,000 requests, prompt 512±256 [2, 7000], output 215±100
[2, 7000], constant 50 req/s, seed 42, 256 seats, 2048-token budget, roofline +
weighted-average. P2: the same at 100,000 requests, records streamed to Parquet. P3: a
12-point sweep of P1 at 1,000 requests per point (process pool). F16: a fleet of 16 P1
servers behind a router, 160,000 requests at 800 req/s (round-robin with constant arrivals
gives each replica exactly P1's arrivals; least-outstanding on 100 ms snapshots as vLLM's DP
balancer), records in memory, and round-robin streamed to Parquet.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time

P1 = {
    "seed": 42,
    "model": "llama-2-7b",
    "gpu": "H100",
    "server": {"max_num_seqs": 256, "max_num_batched_tokens": 2048},
    "cost": {"model": "roofline", "formula": "weighted-average"},
    "workload": {
        "num_requests": 10000,
        "prompt_tokens": {"dist": "normal", "mean": 512, "stdev": 256, "min": 2, "max": 7000},
        "output_tokens": {"dist": "normal", "mean": 215, "stdev": 100, "min": 2, "max": 7000},
    },
    "arrival": {"strategy": "constant", "rate_rps": 50},
}


def _child(case: dict) -> dict:
    """Runs inside the subprocess: one case, returns its figures."""
    from sim.config import merge, parse_run_config

    cfg = parse_run_config(merge(P1, case.get("override", {})))
    t0 = time.perf_counter()
    if case["kind"] == "run":
        from sim.core.simulation import Simulation

        spill = None
        tmp = None
        if case.get("stream"):
            from pathlib import Path

            from sim.cli.output import StreamingParquet

            tmp = tempfile.mkdtemp(prefix="servesim-bench-")
            spill = StreamingParquet({"requests": Path(tmp) / "requests.parquet", "steps": Path(tmp) / "steps.parquet"})
        if cfg.cluster is not None:
            from sim.core.simulation import make_simulation

            res = make_simulation(cfg, spill=spill, fast_forward=case.get("fast_forward", True)).run()
        else:
            res = Simulation(cfg, spill=spill, fast_forward=case.get("fast_forward", True)).run()
        if spill is not None:
            spill.commit()
        wall = time.perf_counter() - t0
        s = res.summary
        return {
            "wall_s": wall,
            "requests": s["num_requests"],
            "steps": s["num_steps"],
            "requests_per_wall_s": s["num_requests"] / wall,
            "steps_per_wall_s": s["num_steps"] / wall,
            "mean_batch_tokens": s["mean_batch_tokens"],
            "finished": s["num_finished"],
        }
    from sim.studies.executor import run_many
    from sim.studies.sweep import run_sweep

    res = run_sweep(cfg, lambda cfgs: run_many(cfgs, "process"))
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "points": len(res.points),
        "requests": sum(p.result.summary["num_requests"] for p in res.points),
        "steps": sum(p.result.summary["num_steps"] for p in res.points),
    }


def run_case(case: dict) -> dict:
    """Run ``case`` in a fresh interpreter; adds ``process_s``, the subprocess's whole wall
    time (interpreter start, imports, run) as the parent sees it."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(case)], capture_output=True, text=True)
    process_s = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_s"] = process_s
    return out


def run_command(argv: list[str], cwd: str) -> dict:
    """``argv`` as a user types it, in a fresh process: whole wall time as the parent sees it
    and the peak RSS of the largest process of its tree (``wait4``: the command and the pool
    workers it waited for)."""
    import os

    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.stderr.close() if proc.stderr else None
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {err}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024}


def cli_cases(p2: bool) -> list[tuple[str, list[str], str]]:
    """The commands users type (whole process, default outputs), P1 written as a config file."""
    import yaml

    tmp = tempfile.mkdtemp(prefix="servesim-bench-cli-")
    p1 = f"{tmp}/p1.yaml"
    with open(p1, "w") as fh:
        yaml.safe_dump(P1, fh)
    sim = [sys.executable, "-m", "sim"]
    cases = [
        ("servesim --help", [*sim, "--help"]),
        ("servesim run P1 (default outputs)", [*sim, "run", p1, "-q", "-o", f"{tmp}/p1"]),
        ("servesim run P1 --stream", [*sim, "run", p1, "--stream", "-q", "-o", f"{tmp}/p1s"]),
        ("python -m sim (embedded default sweep)", [*sim]),
    ]
    if p2:
        p2_cfg = f"{tmp}/p2.yaml"
        with open(p2_cfg, "w") as fh:
            yaml.safe_dump({**P1, "workload": {**P1["workload"], "num_requests": 100000}}, fh)
        cases.append(("servesim run P2 (100k, default outputs)", [*sim, "run", p2_cfg, "-q", "-o", f"{tmp}/p2"]))
    return [(name, argv, tmp) for name, argv in cases]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child")
    ap.add_argument("--p2", action="store_true", help="also P2: 100,000 requests (streamed)")
    ap.add_argument("--million", action="store_true", help="also 1,000,000 requests (streamed)")
    ap.add_argument("--priority", action="store_true", help="also the priority policy, 10,000 requests, Poisson 50 req/s, 4 levels")
    ap.add_argument("--fleet", action="store_true", help="also F16: 16 replicas x P1's load, two routers")
    ap.add_argument("--repeat", type=int, default=1, help="runs per case; the table shows the fastest (and the median)")
    args = ap.parse_args()
    if args.child:
        case = json.loads(args.child)
        out = _child(case)
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(out))
        return

    print(f"machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}, {__import__('os').cpu_count()} CPUs")
    cases = [("P1", {"kind": "run"})]
    if args.p2:
        cases.append(("P2", {"kind": "run", "stream": True, "override": {"workload": {"num_requests": 100000}}}))
    if args.million:
        cases.append(("1M", {"kind": "run", "stream": True, "override": {"workload": {"num_requests": 1000000}, "record_itls": False}}))
    if args.priority:
        prio = {"scheduler": {"policy": "priority"}, "workload": {"priority_levels": 4}, "arrival": {"strategy": "poisson"}}
        cases.append(("priority@50, 10k", {"kind": "run", "override": prio}))
    if args.fleet:
        fleet = {"workload": {"num_requests": 160000}, "arrival": {"rate_rps": 800}, "record_itls": False}
        for router, refresh_ms in (("round-robin", 0), ("least-outstanding", 100)):
            cluster = {"groups": [{"replicas": 16}], "router": {"policy": router, "refresh_interval_ms": refresh_ms}}
            cases.append((f"F16 {router}", {"kind": "run", "override": {**fleet, "cluster": cluster}}))
        cases.append(("F16 round-robin, streamed", {"kind": "run", "stream": True, "override": {**fleet, "cluster": {"groups": [{"replicas": 16}]}}}))
    cases.append(("P3", {"kind": "sweep", "override": {"workload": {"num_requests": 1000}, "sweep": {"num_points": 12}}}))
    # the engine's decode fast-forward, on and off, on its best case (one request at a time)
    sync = {"workload": {"num_requests": 1000}, "arrival": {"strategy": "synchronous"}}
    cases.append(("sync, fast-forward on", {"kind": "run", "override": sync}))
    cases.append(("sync, fast-forward off", {"kind": "run", "override": sync, "fast_forward": False}))
    # scaling with load: cost per step vs batch size, same number of requests
    for rate in (5, 20, 50):
        cases.append((f"scale@{rate}", {"kind": "run", "override": {"workload": {"num_requests": 3000}, "arrival": {"rate_rps": rate}}}))
    print("| case | wall s (fastest) | median of runs | process s | peak RSS MB | requests | steps | req/wall-s | steps/wall-s | mean batch tokens |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    results = {}
    for name, case in cases:
        runs = sorted((run_case(case) for _ in range(max(1, args.repeat))), key=lambda x: x["wall_s"])
        r = runs[0]
        median = runs[len(runs) // 2]["wall_s"]
        results[name] = r
        print(
            f"| {name} | {r['wall_s']:.2f} | {median:.2f} | {r['process_s']:.2f} | {r['peak_rss_mb']:.0f} | {r['requests']} | {r['steps']} | "
            f"{r.get('requests_per_wall_s', r['requests'] / r['wall_s']):.0f} | "
            f"{r.get('steps_per_wall_s', r['steps'] / r['wall_s']):.0f} | {r.get('mean_batch_tokens', float('nan')):.1f} |",
            flush=True,
        )
    print("\nWhole process, as typed (wall s as the parent sees it; peak RSS of the largest process):\n")
    print("| command | wall s (fastest) | median | peak RSS MB |")
    print("|---|---:|---:|---:|")
    for name, argv, cwd in cli_cases(args.p2):
        runs = sorted((run_command(argv, cwd) for _ in range(max(1, args.repeat))), key=lambda x: x["wall_s"])
        print(f"| {name} | {runs[0]['wall_s']:.2f} | {runs[len(runs) // 2]['wall_s']:.2f} | {max(r['peak_rss_mb'] for r in runs):.0f} |", flush=True)
        results[name] = runs[0]
    if "P2" in results:
        print(f"\nP2/P1 wall ratio: {results['P2']['wall_s'] / results['P1']['wall_s']:.2f} (target <= 12)")
    for name in results:
        if name.startswith("F16"):
            print(f"{name}/P1 wall ratio: {results[name]['wall_s'] / results['P1']['wall_s']:.2f} (target <= 20)")


if __name__ == "__main__":
    main()
