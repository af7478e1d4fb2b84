"""Print a Markdown table of roofline step times for reference batches (docs/cost-model.md).

Usage: ``python scripts/cost_table.py [--model llama-2-7b] [--gpu H100] [--tp 1]
[--bench-data DIR] [--lookup nearest|interpolate] [--gemm-m tokens|requests]``.
Without ``--bench-data`` the built-in MFU model is used. Writes to stdout only.

``--per-gpu [--calibration h100|none] [--gpus H100,A100,L40S] [--quantization fp8]
[--kv-cache-dtype fp8]`` instead prints one row per GPU: the step time of a decode-only batch
of 1 / 64 / 256 requests (KV 1024 tokens each) and of a 2048-token prefill, priced by the run's
cost model (the calibration transferred to every GPU), so A100 can be checked against H100.
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


def per_gpu_table(model: str, tp: int, gpus: list[str], calibration: str, quantization: str | None, kv_cache_dtype: str) -> None:
    from sim.config import parse_run_config
    from sim.cost import build_cost_model

    dec = lambda i, kv: BatchItem(i, 1, kv, True)  # noqa: E731
    batches = [(f"decode ×{n}", Batch.of([dec(i, 1024) for i in range(n)])) for n in (1, 64, 256)]
    batches.append(("prefill 2048", Batch.of([BatchItem(0, 2048, 0, False)])))
    quant = f", --quantization {quantization}" if quantization else ""
    print(f"{model} TP{tp}, calibration {calibration}{quant}, KV cache {kv_cache_dtype}; step time, ms (decode rows: KV 1024 tokens per request)\n")
    head = ["GPU"] + [label for label, _ in batches] + ["decode ×256 tok/s"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for g in gpus:
        server = {"kv_cache_dtype": kv_cache_dtype, **({"quantization": quantization} if quantization else {})}
        cfg = parse_run_config({"model": model, "gpu": g, "tensor_parallel_size": tp, "server": server, "cost": {"calibration": calibration}})
        cm = build_cost_model(cfg)
        times = [cm.price(b).total_s for _, b in batches]
        print("| " + " | ".join([g] + [f"{t * 1e3:.2f}" for t in times] + [f"{256 / times[2]:.0f}"]) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-2-7b")
    ap.add_argument("--gpu", default="H100")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--bench-data", default=None)
    ap.add_argument("--lookup", default="nearest", choices=["nearest", "interpolate"])
    ap.add_argument("--gemm-m", default="tokens", choices=["tokens", "requests"])
    ap.add_argument("--per-gpu", action="store_true", help="one row per GPU with the run's cost model (calibration applied)")
    ap.add_argument("--gpus", default="H100,H100-PCIe,H200,A100,A100-40,L40S")
    ap.add_argument("--calibration", default="h100")
    ap.add_argument("--quantization", default=None)
    ap.add_argument("--kv-cache-dtype", default="auto")
    a = ap.parse_args()
    if a.per_gpu:
        per_gpu_table(a.model, a.tp, [g.strip() for g in a.gpus.split(",") if g.strip()], a.calibration, a.quantization, a.kv_cache_dtype)
        return
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
