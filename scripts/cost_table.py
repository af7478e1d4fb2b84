"""Print a Markdown table of roofline step times for reference batches (docs/cost-model.md).

Usage: ``python scripts/cost_table.py [--model llama-2-7b] [--gpu H100] [--tp 1]
[--bench-data DIR] [--lookup nearest|interpolate] [--gemm-m tokens|requests]``.
Without ``--bench-data`` the built-in MFU model is used. Writes to stdout only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim.cost.combine import FORMULAS  # noqa: E402
from sim.cost.roofline_build import build_roofline
from sim.entities import Batch, BatchItem  # noqa: E402


def reference_batches() -> list[tuple[str, Batch]]:
    dec = lambda i, kv: BatchItem(i, 1, kv, True)  # noqa: E731
    return [
        ("1 decode, KV 1024", Batch.of([dec(0, 1024)])),
        ("64 decodes, KV 1024", Batch.of([dec(i, 1024) for i in range(64)])),
        ("prefill 2048", Batch.of([BatchItem(0, 2048, 0, False)])),
        ("prefill chunk 512 + 64 decodes (KV 1024)", Batch.of([BatchItem(100, 512, 0, False)] + [dec(i, 1024) for i in range(64)])),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-2-7b")
    ap.add_argument("--gpu", default="H100")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--bench-data", default=None)
    ap.add_argument("--lookup", default="nearest", choices=["nearest", "interpolate"])
    ap.add_argument("--gemm-m", default="tokens", choices=["tokens", "requests"])
    a = ap.parse_args()
    formulas = FORMULAS.names()
    models = {f: build_roofline(a.model, a.gpu, a.tp, f, a.gemm_m, a.lookup, a.bench_data) for f in formulas}
    mfu = f"tables {a.bench_data} ({a.lookup})" if a.bench_data else "built-in MFU model"
    print(f"{a.model} TP{a.tp} {a.gpu}, {mfu}, gemm_m={a.gemm_m}; milliseconds\n")
    head = ["batch", "compute bound", "memory bound", "Tp", "Td", "overhead"] + [f"total `{f}`" for f in formulas]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for label, batch in reference_batches():
        c = models[formulas[0]].price(batch)
        cells = [label] + [f"{x * 1e3:.3f}" for x in (c.compute_s, c.memory_s, c.prefill_s, c.decode_s, c.overhead_s)]
        cells += [f"{models[f].price(batch).total_s * 1e3:.3f}" for f in formulas]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
