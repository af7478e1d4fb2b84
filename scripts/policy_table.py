"""Print a Markdown table of mean TTFT / TPOT / E2E per scheduling policy on one workload
(docs/policies.md).

Usage: ``python scripts/policy_table.py [--rate 20] [--requests 400] [--seed 1]
[--cost roofline|linear] [--max-batched-tokens 2048]``. Writes to stdout only.

Workload: Llama-2-7B on one H100, Poisson arrivals, prompts normal(1024, 512) in [16, 4096],
outputs normal(128, 64) in [2, 512], three priority levels, vLLM default limits
(256 seats) except ``max_num_batched_tokens`` 2048 (vLLM's pick on small GPUs, so that the
budget binds and the policies differ), ``chunk_size_tokens`` 512, ``starvation_age_s`` 10.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim.config import parse_run_config  # noqa: E402
from sim.core.simulation import simulate  # noqa: E402

POLICIES = ["vllm-v1", "vllm-v0", "decode-first", "sarathi", "priority", "sjf"]


def config(policy: str, rate: float, requests: int, seed: int, cost: str, budget: int):
    return parse_run_config(
        {
            "seed": seed,
            "model": "llama-2-7b",
            "gpu": "H100",
            "server": {"max_num_batched_tokens": budget},
            "scheduler": {"policy": policy, "chunk_size_tokens": 512, "starvation_age_s": 10.0},
            "cost": {"model": cost},
            "workload": {
                "num_requests": requests,
                "prompt_tokens": {"dist": "normal", "mean": 1024, "stdev": 512, "min": 16, "max": 4096},
                "output_tokens": {"dist": "normal", "mean": 128, "stdev": 64, "min": 2, "max": 512},
                "priority_levels": 3,
            },
            "arrival": {"strategy": "poisson", "rate_rps": rate},
            "record_itls": True,
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=20.0, help="requests per second")
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cost", default="roofline", help="cost model: roofline | linear | fixed")
    ap.add_argument("--max-batched-tokens", type=int, default=2048, help="server.max_num_batched_tokens")
    a = ap.parse_args()
    print(
        f"llama-2-7b TP1 H100, cost model `{a.cost}`, Poisson {a.rate:g} req/s, {a.requests} requests, "
        f"max_num_batched_tokens {a.max_batched_tokens}, seed {a.seed}; milliseconds\n"
    )
    head = ["policy", "mean TTFT", "p99 TTFT", "mean TPOT", "p99 ITL", "mean E2E", "preemptions", "mixed steps", "steps"]
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for policy in POLICIES:
        s = simulate(config(policy, a.rate, a.requests, a.seed, a.cost, a.max_batched_tokens)).summary
        assert s["num_finished"] == a.requests, f"{policy}: only {s['num_finished']} of {a.requests} finished"
        row = [
            f"`{policy}`",
            f"{s['ttft_mean_ms']:.1f}",
            f"{s['ttft_p99_ms']:.1f}",
            f"{s['tpot_mean_ms']:.2f}",
            f"{s['itl_p99_ms']:.2f}",
            f"{s['e2e_mean_ms']:.1f}",
            str(s["num_preemptions"]),
            str(s["num_mixed_steps"]),
            str(s["num_steps"]),
        ]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
