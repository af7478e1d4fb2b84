"""Figures of a calibration: measured vs cross-validated prediction with intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd

from sim.studies.fit import FIT_METRICS


def plot_cv(table: pd.DataFrame, title: str):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for ax, (metric, _, _) in zip(axes, FIT_METRICS):
        d = table[(table["metric"] == metric) & np.isfinite(table["meas"]) & np.isfinite(table["cv"])]
        for ov, mk in ((False, "o"), (True, "x")):
            g = d[d["overloaded"] == ov]
            if g.empty:
                continue
            err = np.vstack([np.maximum(g["cv"] - g["lo"], 0), np.maximum(g["hi"] - g["cv"], 0)])
            ax.errorbar(g["meas"], g["cv"], yerr=err, fmt=mk, ms=4, alpha=0.8, capsize=2, label="overloaded" if ov else "CV prediction ± interval")
            ax.scatter(g["meas"], g["seed"], s=10, c="grey", alpha=0.6, label=None if ov else "seed model")
        from sim.plots.runs import identity_loglog

        identity_loglog(ax, pd.concat([d["meas"], d["cv"]]))
        ax.set_xlabel(f"measured {metric} (ms)")
        ax.set_ylabel(f"simulated {metric} (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
