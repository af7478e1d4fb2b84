"""The planner's Pareto plot (AIConfigurator-style): output tokens/s per GPU against output
tokens/s per user (1 / mean TPOT) for every fleet the planner simulated at the target rate.
Returns a matplotlib Figure; the caller saves it."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both x and y (higher is better), by x."""
    order = np.argsort(-x, kind="stable")
    keep, best_y = [], -np.inf
    for i in order:
        if y[i] > best_y:
            keep.append(i)
            best_y = y[i]
    return np.asarray(sorted(keep, key=lambda i: x[i]), dtype=int)


def pareto(table: pd.DataFrame, evaluations: pd.DataFrame, title: str = "") -> Figure:
    """``table``: :func:`sim.studies.plan.rank`'s deployments (status, shape, replicas, the
    per-GPU and per-user rates); ``evaluations``: every simulated run (kind, shape, replicas,
    meets_slo, output_tokens_per_s, tpot_mean_ms). Fleets failing the SLOs are grey, deployments
    at risk orange, those meeting the SLOs with their bounds green (their Pareto front joined),
    the cheapest a star."""
    fig, ax = plt.subplots(figsize=(8, 5.5))
    fleets = evaluations[evaluations["kind"] == "fleet"] if len(evaluations) else evaluations
    ranked = table[table["status"].isin(["meets", "at risk"])] if len(table) else table
    fail = fleets[~fleets["meets_slo"]] if len(fleets) else fleets
    if len(fail):
        tp = fail["shape"].str.extract(r"-tp(\d+)")[0].astype(float).to_numpy()
        per_gpu = fail["output_tokens_per_s"].to_numpy(float) / (fail["replicas"].to_numpy(float) * tp)
        ax.scatter(1e3 / fail["tpot_mean_ms"].to_numpy(float), per_gpu, c="0.75", s=18, label="simulated, misses the SLOs")
    for status, colour, marker in (("at risk", "tab:orange", "^"), ("meets", "tab:green", "o")):
        part = ranked[ranked["status"] == status]
        if len(part):
            ax.scatter(part["output_tokens_per_s_per_user"], part["output_tokens_per_s_per_gpu"], c=colour, marker=marker, s=40, label=status, zorder=3)
            for r in part.itertuples():
                ax.annotate(
                    f"{r.shape} x{int(r.replicas)}",
                    (r.output_tokens_per_s_per_user, r.output_tokens_per_s_per_gpu),
                    fontsize=7,
                    xytext=(4, 3),
                    textcoords="offset points",
                )
    meets = ranked[ranked["status"] == "meets"]
    if len(meets):
        x = meets["output_tokens_per_s_per_user"].to_numpy(float)
        y = meets["output_tokens_per_s_per_gpu"].to_numpy(float)
        front = pareto_front(x, y)
        ax.plot(x[front], y[front], "-", color="tab:green", alpha=0.5, lw=1, label="Pareto front (meets)")
        best = meets.iloc[0]
        ax.scatter(
            [best["output_tokens_per_s_per_user"]],
            [best["output_tokens_per_s_per_gpu"]],
            marker="*",
            s=260,
            c="gold",
            edgecolors="k",
            zorder=4,
            label="cheapest",
        )
    ax.set_xlabel("output tokens/s per user (1000 / mean TPOT ms)")
    ax.set_ylabel("output tokens/s per GPU")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "deployments at the target rate")
    fig.tight_layout()
    return fig
