"""Plots of runs and sweeps. Functions return matplotlib Figures; callers save them.

The package selects the non-interactive Agg backend (no display needed).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from sim.core.simulation import SimResult
from sim.studies.sweep import SweepResult


def latency_vs_rate(sweep: SweepResult, title: str = "", intervals: list[dict] | None = None) -> Figure:
    """TTFT, TPOT and E2E (mean, p50, p90, p99) against the achieved request rate of the rate
    points (lines; unstable points crossed, inconclusive ones hollow), with the synchronous
    and throughput benchmarks as separate markers (they are other load shapes, not rates on the
    curve), the config's p99 SLOs as horizontal lines, the saturation point at its achieved
    rate, and TTFT on a log axis (it spans milliseconds to seconds once a queue forms). With
    ``intervals`` (one dict per sweep point, key → (lo, hi)) a band around the rate points' means."""
    # the curve: rate points, or a concurrency sweep's closed-loop points
    on_curve = [p.rate_rps is not None or p.strategy == "concurrent" for p in sweep.points]
    rated = [i for i, p in enumerate(sweep.points) if on_curve[i] and p.achieved_rps == p.achieved_rps]
    order = sorted(rated, key=lambda i: sweep.points[i].achieved_rps)
    pts = [sweep.points[i] for i in order]
    anchors = [p for i, p in enumerate(sweep.points) if not on_curve[i] and p.achieved_rps == p.achieved_rps]
    x = [p.achieved_rps for p in pts]
    slo = sweep.points[0].result.config.slo if sweep.points else None
    sat = next((p for p in pts if sweep.saturation_rps is not None and p.rate_rps == sweep.saturation_rps), None)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    colours = {"mean": "tab:blue", "p50": "tab:orange", "p90": "tab:green", "p99": "tab:red"}
    for ax, metric, label in zip(axes, ("ttft", "tpot", "e2e"), ("TTFT (ms)", "TPOT (ms)", "E2E latency (ms)")):
        for stat, style in (("mean", "-o"), ("p50", "--"), ("p90", ":"), ("p99", "-.")):
            ax.plot(x, [p.result.summary[f"{metric}_{stat}_ms"] for p in pts], style, color=colours[stat], label=stat, markersize=4)
        means = [p.result.summary[f"{metric}_mean_ms"] for p in pts]
        bad = [(xi, m) for xi, m, p in zip(x, means, pts) if p.stable is False]
        if bad:
            ax.plot([b[0] for b in bad], [b[1] for b in bad], "kx", markersize=8, label="unstable")
        short = [(xi, m) for xi, m, p in zip(x, means, pts) if p.inconclusive]
        if short:
            ax.plot([b[0] for b in short], [b[1] for b in short], "o", mfc="none", mec="k", markersize=9, label="too short to judge")
        for p, marker in zip(anchors, ("s", "^", "D", "v")):
            ax.plot(
                [p.achieved_rps] * 2,
                [p.result.summary[f"{metric}_mean_ms"], p.result.summary[f"{metric}_p99_ms"]],
                marker,
                color="k",
                linestyle="none",
                markersize=6,
                mfc="white" if p.strategy == "throughput" else "k",
                label=f"{p.label} (mean, p99)",
            )
        if intervals:
            band = [intervals[i].get(f"{metric}_mean_ms", (float("nan"), float("nan"))) for i in order]
            ax.fill_between(x, [b[0] for b in band], [b[1] for b in band], alpha=0.2, label="mean, 90 % PI")
        bound = getattr(slo, f"{metric}_p99_ms", None) if slo is not None else None
        if bound is not None:
            ax.axhline(bound, color="tab:red", lw=1, alpha=0.6, linestyle="--", label=f"SLO p99 {bound:g} ms")
        if sat is not None:
            ax.axvline(sat.achieved_rps, color="purple", alpha=0.5, lw=1, label=f"saturation ({sweep.saturation_rps:.3g} req/s offered)")
        if metric == "ttft":
            ax.set_yscale("log")
            plain_log_ticks(ax)
        ax.set_xlabel("achieved request rate (req/s)")
        ax.set_ylabel(label + (", log scale" if ax.get_yscale() == "log" else ""))
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3, which="both" if metric == "ttft" else "major")
        ax.legend(fontsize=7)
    fig.suptitle(title or "latency vs request rate")
    fig.tight_layout()
    return fig


def throughput_vs_offered(sweep: SweepResult, title: str = "") -> Figure:
    """Achieved request rate and output tokens/s against the offered rate (rate points)."""
    rated = sweep.rate_points()
    pts = [p for _, p in rated]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    off = [r for r, _ in rated]
    ax.plot(off, [p.achieved_rps for p in pts], "-o", label="achieved req/s")
    if off:
        ax.plot([0, max(off)], [0, max(off)], "k:", lw=1, label="offered = achieved")
    ax.set_xlabel("offered request rate (req/s)")
    ax.set_ylabel("achieved request rate (req/s)")
    ax2 = ax.twinx()
    ax2.plot(off, [p.result.summary["output_tokens_per_s"] for p in pts], "s--", color="tab:green", label="output tok/s")
    ax2.set_ylabel("output tokens/s")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax2.set_ylim(bottom=0)
    if sweep.saturation_rps is not None:
        ax.axvline(sweep.saturation_rps, color="purple", alpha=0.5, lw=1, label=f"saturation ({sweep.saturation_rps:.3g} req/s)")
    ax.grid(alpha=0.3)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="upper left")
    ax.set_title(title or "throughput vs offered rate")
    fig.tight_layout()
    return fig


def batch_composition(res: SimResult, title: str = "") -> Figure:
    """Per-step prefill tokens, decode requests and KV usage over simulated time."""
    st = res.steps
    fig, axes = plt.subplots(3, 1, figsize=(10, 7), sharex=True)
    t = st["start_s"]
    axes[0].plot(t, st["num_prefill_tokens"], lw=0.6, color="tab:orange")
    axes[0].set_ylabel("prefill tokens per step")
    axes[1].plot(t, st["num_decode_reqs"], lw=0.6, color="tab:blue", label="decode requests")
    axes[1].plot(t, st["num_waiting"], lw=0.6, color="tab:red", label="waiting")
    axes[1].set_ylabel("requests per step")
    axes[1].legend(fontsize=8)
    axes[2].plot(t, st["kv_blocks_used"] / max(1, res.derived.get("num_gpu_blocks", 1)), lw=0.6, color="tab:purple")
    axes[2].set_ylabel("KV blocks used (share of the cache)")
    axes[2].set_xlabel("simulated time (s)")
    for ax in axes:
        ax.grid(alpha=0.3)
    mixed = int(st["is_mixed"].sum()) if len(st) else 0
    axes[0].set_title(title or f"batch composition ({mixed} of {len(st)} steps mixed)")
    fig.tight_layout()
    return fig


REPLICA_LOAD_BINS = 400  # time bins per line: enough to see bursts, cheap to draw for long runs
REPLICA_LEGEND_MAX = 12


def replica_load(res: SimResult, title: str = "") -> Figure:
    """A fleet's load per replica over simulated time: running and waiting requests and KV
    use (fraction of that replica's blocks), each the step-weighted mean over one of
    ``REPLICA_LOAD_BINS`` time bins (bins where a replica took no step are gaps)."""
    st, reps = res.steps, res.replicas
    if reps is None:
        raise ValueError("replica_load needs a fleet result (SimResult.replicas)")
    end_s = float((st["start_s"] + st["duration_s"]).max()) if len(st) else 1.0
    edges = np.linspace(0.0, end_s if end_s > 0 else 1.0, REPLICA_LOAD_BINS + 1)
    centres = 0.5 * (edges[:-1] + edges[1:])
    fig, axes = plt.subplots(3, 1, figsize=(10, 7.5), sharex=True)
    cmap = plt.get_cmap("tab20" if len(reps) > 10 else "tab10")
    blocks = dict(zip(reps["replica"], reps["num_gpu_blocks"]))
    for k, (index, part) in enumerate(st.groupby("replica", sort=True)):
        which = np.clip(np.searchsorted(edges, part["start_s"].to_numpy(), side="right") - 1, 0, REPLICA_LOAD_BINS - 1)
        weight = part["duration_s"].to_numpy(dtype=float)
        total = np.bincount(which, weight, REPLICA_LOAD_BINS)
        label = f"{index} {reps.loc[reps['replica'] == index, 'group'].iloc[0]}"
        for ax, values in zip(
            axes,
            (part["num_running"], part["num_waiting"], part["kv_blocks_used"] / max(1, int(blocks[index]))),
        ):
            summed = np.bincount(which, weight * values.to_numpy(dtype=float), REPLICA_LOAD_BINS)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(total > 0, summed / total, np.nan)
            ax.plot(centres, mean, lw=0.8, color=cmap(k % cmap.N), label=label)
    for ax, name in zip(axes, ("running requests (time-weighted mean)", "waiting requests (time-weighted mean)", "KV blocks used (share)")):
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    if len(reps) <= REPLICA_LEGEND_MAX:
        axes[0].legend(fontsize=7, ncol=min(6, len(reps)), title="replica", title_fontsize=7)
    axes[2].set_xlabel("simulated time (s)")
    imb = res.summary.get("load_imbalance_requests", float("nan"))
    axes[0].set_title(title or f"load per replica ({len(reps)} replicas; request imbalance max/mean {imb:.2f})")
    fig.tight_layout()
    return fig


_METRIC_LABELS = {
    "ttft_mean_ms": "TTFT mean (ms)",
    "ttft_p99_ms": "TTFT p99 (ms)",
    "tpot_mean_ms": "TPOT mean (ms)",
    "tpot_p99_ms": "TPOT p99 (ms)",
    "e2e_mean_ms": "E2E mean (ms)",
    "e2e_p99_ms": "E2E p99 (ms)",
    "output_tokens_per_s": "output tokens/s",
    "requests_per_s": "requests/s",
}


def comparison(table, metrics=("ttft_mean_ms", "tpot_mean_ms", "e2e_mean_ms", "output_tokens_per_s")) -> Figure:
    """Per metric, two panels: each arm's mean with its 95 % interval over seeds (top), and each
    other arm's paired difference to the baseline (the first arm) with its 95 % interval and
    the zero line (bottom) — the comparison's answer. One colour per arm throughout; against the
    request rate when the comparison has rates, else one position per arm."""
    fig, axes = plt.subplots(2, len(metrics), figsize=(4.2 * len(metrics), 6.8), squeeze=False)
    with_rates = table["rate_rps"].notna().any()
    arms = list(dict.fromkeys(table["arm"]))
    colours = {arm: f"C{i % 10}" for i, arm in enumerate(arms)}
    for col, m in enumerate(metrics):
        top, bottom = axes[0][col], axes[1][col]
        sub = table[table["metric"] == m]
        for i, arm in enumerate(arms):
            a = sub[sub["arm"] == arm].sort_values("rate_rps")
            x = a["rate_rps"].to_numpy(dtype=float) if with_rates else np.array([i], dtype=float)
            c = colours[arm]
            if with_rates:
                top.plot(x, a["mean"], "-o", color=c, label=arm, markersize=4)
                top.fill_between(x, a["ci_low"], a["ci_high"], color=c, alpha=0.2)
            else:
                top.errorbar(x, a["mean"], yerr=[a["mean"] - a["ci_low"], a["ci_high"] - a["mean"]], fmt="o", color=c, capsize=4, label=arm)
            if i == 0:
                continue  # the baseline has no difference to itself
            if with_rates:
                bottom.plot(x, a["diff_mean"], "-o", color=c, label=f"{arm} − {arms[0]}", markersize=4)
                bottom.fill_between(x, a["diff_low"], a["diff_high"], color=c, alpha=0.2)
            else:
                bottom.errorbar(
                    x,
                    a["diff_mean"],
                    yerr=[a["diff_mean"] - a["diff_low"], a["diff_high"] - a["diff_mean"]],
                    fmt="o",
                    color=c,
                    capsize=4,
                    label=f"{arm} − {arms[0]}",
                )
        bottom.axhline(0.0, color="k", lw=1, alpha=0.6)
        label = _METRIC_LABELS.get(m, m)
        top.set_title(label)
        top.set_ylabel(label)
        bottom.set_ylabel(f"paired difference, {label}")
        for ax in (top, bottom):
            ax.set_xlabel("request rate (req/s)" if with_rates else "arm")
            if not with_rates:
                ax.set_xticks(range(len(arms)), arms, rotation=30, fontsize=8)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if len(arms) > 1:
        axes[1][0].legend(fontsize=8)
    fig.suptitle(f"comparison over seeds: means (top) and paired differences to {arms[0] if arms else '-'} (bottom), 95 % intervals")
    fig.tight_layout()
    return fig


def plain_log_ticks(ax, axis: str = "y") -> None:
    """Readable ticks on a log axis: plain numbers (``30``, ``0.5``, ``2000``), not powers of
    ten, and enough of them — every 1-9 multiple labelled below one decade, the 2s and 5s
    below two, the powers of ten beyond. A span under 3x is drawn linear instead (a log scale
    adds nothing there and leaves one tick). Call after plotting (reads the limits)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    which = ax.yaxis if axis == "y" else ax.xaxis
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    if lo > 0 and hi / lo < 3:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("linear")
        return
    fmt = FuncFormatter(lambda v, _pos: f"{v:g}")
    which.set_major_formatter(fmt)
    if lo > 0 and hi / lo < 100:
        subs = (2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0) if hi / lo < 10 else (2.0, 5.0)
        which.set_minor_locator(LogLocator(base=10, subs=subs))
        which.set_minor_formatter(fmt)
    else:
        which.set_minor_formatter(NullFormatter())


def identity_loglog(ax, values) -> None:
    """Log–log axes with the y = x line over the positive ``values`` (simulated vs measured)."""
    vals = [float(v) for v in values if v == v and v > 0]
    if vals:
        lo, hi = min(vals) * 0.7, max(vals) * 1.4
        ax.plot([lo, hi], [lo, hi], "k:", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
