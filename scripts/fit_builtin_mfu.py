"""Fit the built-in MFU curves of ``sim/cost/mfu.py`` to the H100 microbenchmark tables.

Usage: ``python scripts/fit_builtin_mfu.py [BENCH_DATA_DIR]`` (default
``../shared/ground_truth/bench_data``). Prints the fitted constants (paste them into
``sim/cost/mfu.py``) and the fit error: absolute relative error |pred − meas|/meas over every
table row with meas ≥ 1e-4 (rows with MFU 0 are unusable measurements). Needs scipy
(offline tool only; the simulator does not).

Curves (x^p/(x^p + x0^p) is a Hill saturation; all are increasing in their argument so that
step times grow with work):
  GEMM            mfu = a · m / (m + m0)   (all k, n together; m clamped at the table's
                  smallest M = 8 below which time scales ∝ m, as the tables' clamp implies)
  decode attn     mfu = c · g · x^q / (x^q + x0^q),  x = batch·kv_len, g = H/Hk (GQA group)
                  (decode attention is memory bound: FLOPs/byte ∝ g, hence the factor g)
  prefill attn    mfu = f · s^r / (s^r + s0^r),    s = seq_len
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

FLOOR = 1e-4  # rows below this are zero-MFU artefacts (blis-reference.md §2)


def hill(x, p, x0):
    return x**p / (x**p + x0**p)


def fit(res_fn, x0):
    # fit in log space: relative errors weigh small and large MFUs alike
    r = least_squares(res_fn, x0, method="lm", max_nfev=20000)
    return r.x


def report(name, pred, meas):
    rel = np.abs(pred - meas) / meas
    print(f"  {name}: n={len(meas)} median abs rel err={np.median(rel):.3f} mean={np.mean(rel):.3f} p90={np.quantile(rel, 0.9):.3f}")
    return rel


def main(root: Path) -> None:
    gemm = pd.read_csv(root / "gemm/h100/data.csv")
    gemm = gemm[gemm.mfu >= FLOOR]
    m, y = gemm.m.to_numpy(float), gemm.mfu.to_numpy(float)
    # exponent fixed at 1: then GEMM time ∝ m/mfu = (m + m0)/a grows with m (a free exponent
    # > 1 fits slightly better but makes time fall with m for m < ~40)
    gp = 1.0
    ga, gm0 = fit(lambda t: np.log(t[0] * hill(m, gp, np.exp(t[1]))) - np.log(y), [0.62, np.log(300)])
    gm0 = float(np.exp(gm0))

    dec = []
    for f in sorted((root / "mha/decode/h100").glob("*.csv")):
        H, Hk, dh, tp = map(int, re.match(r"(\d+)-(\d+)-(\d+)-tp(\d+)", f.stem).groups())
        d = pd.read_csv(f)
        d["g"], d["tp"], d["key"] = H / Hk, tp, f.stem
        dec.append(d)
    dec = pd.concat(dec)
    dec = dec[dec.mfu >= FLOOR]
    x, g, yd = (dec.batch_size * dec.kv_len).to_numpy(float), dec.g.to_numpy(float), dec.mfu.to_numpy(float)
    # q <= 1 keeps decode attention time ∝ x/mfu increasing in x
    dc, dq, dx0 = least_squares(
        lambda t: np.log(t[0] * g * hill(x, t[1], np.exp(t[2]))) - np.log(yd),
        [0.003, 0.9, np.log(4096)],
        bounds=([1e-6, 0.1, 0.0], [1.0, 1.0, 20.0]),
    ).x
    dx0 = float(np.exp(dx0))

    pre = []
    for f in sorted((root / "mha/prefill/h100").glob("*.csv")):
        p = pd.read_csv(f)
        p["key"] = f.stem
        pre.append(p)
    pre = pd.concat(pre)
    pre = pre[pre.mfu >= FLOOR]
    s, yp = pre.seq_len.to_numpy(float), pre.mfu.to_numpy(float)
    pf, pr, ps0 = fit(lambda t: np.log(t[0] * hill(s, t[1], np.exp(t[2]))) - np.log(yp), [0.74, 2.0, np.log(2048)])
    ps0 = float(np.exp(ps0))

    print("# constants for sim/cost/mfu.py")
    print(f"GEMM_MFU_MAX = {ga:.4f}\nGEMM_HILL_P = {gp:.4f}\nGEMM_M0 = {gm0:.1f}")
    print(f"DECODE_MFU_PER_GROUP = {dc:.6f}\nDECODE_HILL_Q = {dq:.4f}\nDECODE_X0 = {dx0:.1f}")
    print(f"PREFILL_MFU_MAX = {pf:.4f}\nPREFILL_HILL_R = {pr:.4f}\nPREFILL_S0 = {ps0:.1f}")
    print("# fit error (absolute relative error over rows with mfu >= 1e-4)")
    r1 = report("gemm", ga * hill(m, gp, gm0), y)
    r2 = report("decode", dc * g * hill(x, dq, dx0), yd)
    r3 = report("prefill", pf * hill(s, pr, ps0), yp)
    allr = np.concatenate([r1, r2, r3])
    print(f"  all: n={len(allr)} median={np.median(allr):.3f} mean={np.mean(allr):.3f}")
    # sanity: does the same code path in sim reproduce these numbers?
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from sim.cost.mfu import builtin_fit_errors

        print("# sim.cost.mfu.builtin_fit_errors (hard-coded constants):", builtin_fit_errors(root))
    except ImportError as err:  # first run, before constants exist
        print("# (sim.cost.mfu not importable yet:", err, ")")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared/ground_truth/bench_data")
