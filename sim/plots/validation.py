"""Figures of a validation: simulated vs measured per formula, and latency vs rate per
experiment."""

from __future__ import annotations

import pandas as pd


def plot_sim_vs_meas(long: pd.DataFrame, title: str):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4.4))
    # one colour per dataset in every panel (panels miss datasets that lack a metric)
    colours = {ds: f"C{i}" for i, ds in enumerate(sorted(long["dataset"].dropna().unique()))}
    for ax, metric, label in zip(
        axes, ("ttft_mean", "tpot_mean", "tpot_incl_ttft_mean", "e2e_mean"), ("TTFT mean (ms)", "TPOT mean (ms)", "E2E/output mean (ms)", "E2E mean (ms)")
    ):
        d = long[(long["metric"] == metric) & long["sim"].notna() & long["meas"].notna()]
        for ds, grp in d.groupby("dataset", sort=True):
            ax.scatter(grp["meas"], grp["sim"], s=22, label=str(ds), alpha=0.8, color=colours[ds])
        from sim.plots.runs import identity_loglog

        identity_loglog(ax, pd.concat([d["meas"], d["sim"]]))
        ax.set_xlabel(f"measured {label}")
        ax.set_ylabel(f"simulated {label}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_latency_vs_rate(long: pd.DataFrame, experiment: str):
    import matplotlib.pyplot as plt

    d = long[long["experiment"] == experiment]
    rps = d[d["metric"] == "requests_per_s"][["formula", "gemm_m", "point_id", "meas", "sim"]]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, metric, label in zip(axes, ("ttft_mean", "tpot_mean", "e2e_mean"), ("TTFT mean (ms)", "TPOT mean (ms)", "E2E mean (ms)")):
        m = d[d["metric"] == metric].merge(rps, on=["formula", "gemm_m", "point_id"], suffixes=("", "_rps"))
        meas = m.drop_duplicates("point_id").sort_values("meas_rps")
        ax.plot(meas["meas_rps"], meas["meas"], "-o", color="black", label="measured")
        for (f, g), grp in m.groupby(["formula", "gemm_m"], sort=True):
            grp = grp.sort_values("meas_rps")
            ax.plot(grp["meas_rps"], grp["sim"], "--s", markersize=4, label=f"sim {f}/{g}")
        ax.set_xlabel("measured achieved request rate (req/s)")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        from sim.plots.runs import plain_log_ticks

        plain_log_ticks(ax)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(f"{experiment}: latency vs rate (x = measured achieved rate of each point)")
    fig.tight_layout()
    return fig
