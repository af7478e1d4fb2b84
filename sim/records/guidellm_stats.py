"""guidellm 0.8.1's statistics, reimplemented: ``DistributionSummary`` (mean, median, mode,
variance, percentiles from a probability density over values), rate and concurrency summaries
over a time window, and their ``StatusDistributionSummary`` per request status. Used by
:mod:`sim.records.guidellm`; pure functions of arrays."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

PERCENTILE_PROBABILITIES: dict[str, float] = {
    "p001": 0.001,
    "p01": 0.01,
    "p05": 0.05,
    "p10": 0.1,
    "p25": 0.25,
    "p50": 0.5,
    "p75": 0.75,
    "p90": 0.9,
    "p95": 0.95,
    "p99": 0.99,
    "p999": 0.999,
}


_EPS = 1e-6
_MERGE_THRESHOLD_S = 1e-4  # guidellm merges events closer than 0.1 ms


def _summary_from_pdf(pdf: np.ndarray, count: int | None) -> dict[str, Any]:
    if pdf.shape[0] == 0:
        return {
            "mean": 0.0, "median": 0.0, "mode": 0.0, "variance": 0.0, "std_dev": 0.0,
            "min": 0.0, "max": 0.0, "count": 0 if count is None else int(count), "total_sum": 0.0,
            "percentiles": dict.fromkeys(PERCENTILE_PROBABILITIES, 0.0),
            "pdf": None, "mean_ci": None, "percentile_cis": None,
        }  # fmt: skip
    values = pdf[:, 0]
    probabilities = pdf[:, 1]
    cdf = np.cumsum(probabilities)
    percentiles = {k: pdf[np.searchsorted(cdf, q, side="left"), 0].item() for k, q in PERCENTILE_PROBABILITIES.items()}
    mean = np.sum(values * probabilities).item()
    variance = np.sum((values - mean) ** 2 * probabilities).item()
    if count is None:
        count = len(pdf)
    return {
        "mean": mean,
        "median": percentiles["p50"],
        "mode": values[np.argmax(probabilities)].item(),
        "variance": variance,
        "std_dev": math.sqrt(variance),
        "min": values[0].item(),
        "max": values[-1].item(),
        "count": int(count),
        "total_sum": mean * count,
        "percentiles": percentiles,
        "pdf": None,
        "mean_ci": None,
        "percentile_cis": None,
    }


def _weighted(values: Sequence | np.ndarray, n: int) -> np.ndarray:
    """guidellm's ``_to_weighted_ndarray``: (N, n) with weight 1.0 filled in."""
    arr: np.ndarray | None
    if isinstance(values, np.ndarray):
        arr = values.astype(float)
        if arr.ndim == 1:
            arr = arr.reshape(-1, 1)
        if arr.shape[0] == 0:
            return np.empty((0, n))
        if arr.shape[1] == n - 1:
            arr = np.hstack((arr, np.ones((arr.shape[0], 1))))
        return arr
    try:  # homogeneous lists (all scalars, or all tuples of one length) convert in one call
        arr = np.asarray(values, dtype=float)
    except (ValueError, TypeError):
        arr = None
    if arr is not None and arr.size:
        if arr.ndim == 1:
            ones = np.ones((arr.shape[0], 1))
            return np.column_stack((arr, ones)) if n == 2 else np.column_stack((arr, arr, ones))
        if arr.ndim == 2 and arr.shape[1] == n:
            return arr
        if arr.ndim == 2 and arr.shape[1] == n - 1:
            return np.hstack((arr, np.ones((arr.shape[0], 1))))
    out = np.empty((len(values), n), dtype=float)
    for i, v in enumerate(values):
        if isinstance(v, tuple):
            out[i, :] = v if len(v) == n else (*v, 1.0)
        else:
            out[i, :] = (v, 1.0) if n == 2 else (v, v, 1.0)
    return out


def distribution_summary(values: Sequence | np.ndarray, count: int | None = None) -> dict[str, Any]:
    """``DistributionSummary.from_values``: values or (value, weight) pairs → summary dict."""
    arr = _weighted(values, 2)
    if arr.shape[0] == 0:
        return _summary_from_pdf(np.empty((0, 2)), 0)
    return _weighted_summary(arr[:, 0], arr[:, 1], count)


def _weighted_summary(values: np.ndarray, weights: np.ndarray, count: int | None = None) -> dict[str, Any]:
    """:func:`distribution_summary` of ``values`` with ``weights`` (1-D, same length > 0)."""
    if count is None:
        count = round(np.sum(weights).item())
    order = np.argsort(values)
    sorted_values = values[order]
    sorted_weights = weights[order]
    del order
    uniq, weights = _sum_sorted_runs(sorted_values, sorted_weights)
    del sorted_values, sorted_weights
    mask = weights > 0
    final_values = uniq[mask]
    final_weights = weights[mask]
    total = np.sum(final_weights)
    if total <= _EPS:
        final_weights = np.ones_like(final_values)
        total = np.sum(final_weights)
    return _summary_from_pdf(np.column_stack((final_values, final_weights / total)), count)


def _sum_sorted_runs(sorted_values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of an ascending array and the sum of each one's weights, added in
    array order: what ``np.unique(..., return_inverse=True)`` + ``np.add.at`` give (guidellm's
    code), without sorting again (``bincount`` sums in the same order as ``add.at``).
    Precondition: ``sorted_values`` ascending, no NaN. Distinct values come back as the input
    arrays themselves (not copies)."""
    n = sorted_values.shape[0]
    if n == 0:
        return sorted_values.copy(), np.zeros(0)
    first = np.empty(n, dtype=bool)
    first[0] = True
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=first[1:])
    if first.all():  # already distinct: the inputs themselves (callers do not modify them)
        return sorted_values, weights
    inverse = np.cumsum(first, dtype=np.int64 if n >= 2**31 else np.int32) - 1
    uniq = sorted_values[first]
    del first
    return uniq, np.bincount(inverse, weights=weights, minlength=uniq.shape[0])


def _merge_times(wt: np.ndarray, threshold: float | None) -> np.ndarray:
    """guidellm's ``_merge_sorted_times_with_weights``. Precondition: ``wt`` sorted by time."""
    return np.column_stack(_merge_times_1d(wt[:, 0], wt[:, 1], threshold))


def _merge_times_1d(times: np.ndarray, weights: np.ndarray, threshold: float | None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_merge_times` on separate time and weight arrays (no (N, 2) copies)."""
    times, w = _sum_sorted_runs(times, weights)
    if threshold is None or threshold <= 0.0 or times.shape[0] <= 1:
        return times, w
    within = np.diff(times) <= threshold
    if not np.any(within):
        return times, w
    run_starts = np.flatnonzero(np.concatenate(([True], ~within)))
    run_lengths = np.diff(run_starts, append=len(times))
    long_runs = run_lengths > 1
    in_long_run = np.repeat(long_runs, run_lengths)
    long_inds = np.flatnonzero(in_long_run)
    long_times = times[long_inds]
    group_ends = np.searchsorted(long_times, long_times + threshold, side="right")
    # Greedy groups inside each long run: a group starts at the run's first time, the next at
    # the first time beyond the group start + threshold. Walked for every run at once (one
    # array step per group rank); the few chains left once most runs ended are walked in
    # Python, so a very long run does not cost one array operation per group.
    run_len = run_lengths[long_runs]
    run_end = np.repeat(np.cumsum(run_len), run_len)  # per long element: its run's end
    nxt = np.where(group_ends < run_end, group_ends, -1)  # next group start, -1 after the last
    is_group_start = np.zeros(len(long_inds), dtype=bool)
    frontier = np.cumsum(run_len) - run_len
    del run_len, run_end, group_ends, long_times
    while frontier.size > 64:
        is_group_start[frontier] = True
        frontier = nxt[frontier]
        frontier = frontier[frontier >= 0]
    for ind in frontier.tolist():
        while ind >= 0:
            is_group_start[ind] = True
            ind = int(nxt[ind])
    del nxt
    is_start = ~in_long_run
    is_start[long_inds[is_group_start]] = True
    del in_long_run, long_inds, is_group_start
    starts = np.flatnonzero(is_start)
    return times[starts], np.add.reduceat(w, starts)


def _rate_summary(events: Sequence | np.ndarray, start: float, end: float) -> dict[str, Any]:
    """``DistributionSummary.rate_distribution_from_timings`` (time-weighted local rates)."""
    wt = _weighted(events, 2)
    t = wt[:, 0]
    # guidellm: drop events before start, add (start, 0); drop those after end, add (end, 0)
    lead = np.array([[start, 0.0]]) if start <= end else np.empty((0, 2))
    wt = np.concatenate((lead, wt[(t >= start) & (t <= end)], [[end, 0.0]]))
    # a stable sort (fast on the per-request runs of times); equal times' weights are summed,
    # and the zero weights of the added rows change no sum
    order = np.argsort(wt[:, 0], kind="stable")
    return _rate_from_sorted(wt[order, 0], wt[order, 1])


def rate_summary_unit_events(sorted_times: np.ndarray, extra: np.ndarray, start: float, end: float) -> dict[str, Any]:
    """:func:`_rate_summary` of the events ``sorted_times`` (ascending, weight 1.0 each: one
    token each) together with the ``(time, weight)`` rows ``extra``, without building the
    (N, 2) event array: the unit events are counted per distinct time on the sorted array
    (a view of the window, no copy) and the few extra rows added where their times fall.
    Identical to :func:`_rate_summary` of the concatenation when every weight is an integer
    (token counts: sums of integers are exact in any order)."""
    t = sorted_times[np.searchsorted(sorted_times, start, side="left") : np.searchsorted(sorted_times, end, side="right")]
    if len(t):
        first = np.empty(len(t), dtype=bool)
        first[0] = True
        np.not_equal(t[1:], t[:-1], out=first[1:])
        run_starts = np.flatnonzero(first)
        u1 = t[run_starts]
        c1 = np.diff(run_starts, append=len(t)).astype(float)
        del first, run_starts
    else:
        u1 = c1 = np.empty(0)
    ex = _weighted(extra, 2)
    te = ex[:, 0]
    lead = np.array([[start, 0.0]]) if start <= end else np.empty((0, 2))
    ex = np.concatenate((lead, ex[(te >= start) & (te <= end)], [[end, 0.0]]))
    ex = ex[np.argsort(ex[:, 0], kind="stable")]
    u2, w2 = _sum_sorted_runs(ex[:, 0], ex[:, 1])
    pos = np.searchsorted(u1, u2)
    hit = np.zeros(len(u2), dtype=bool)
    if len(u1):
        hit = (pos < len(u1)) & (u1[np.minimum(pos, len(u1) - 1)] == u2)
        c1[pos[hit]] += w2[hit]  # distinct times: each position once
    times, weights = np.insert(u1, pos[~hit], u2[~hit]), np.insert(c1, pos[~hit], w2[~hit])
    del u1, c1
    return _rate_from_sorted(times, weights)


def _rate_from_sorted(times: np.ndarray, weights: np.ndarray) -> dict[str, Any]:
    """The rate distribution of events sorted by time (window rows included)."""
    times, occurrences = _merge_times_1d(times, weights, _MERGE_THRESHOLD_S)
    if len(times) <= 1:
        return distribution_summary([], count=len(times))
    mid = (times[1:] + times[:-1]) / 2
    durations = np.empty_like(times)
    durations[0] = mid[0] - times[0]
    durations[1:-1] = mid[1:] - mid[:-1]
    durations[-1] = np.clip(times[-1] - mid[-1], _EPS, None)
    del mid, times
    rates = occurrences / durations
    return _weighted_summary(rates, durations, count=round(np.sum(occurrences).item()))


def _concurrency_summary(intervals: Sequence | np.ndarray, start: float, end: float) -> dict[str, Any]:
    """``DistributionSummary.concurrency_distribution_from_timings`` (time-weighted levels)."""
    wi = _weighted(intervals, 3)
    wi = wi[wi[:, 1] >= start]
    wi = wi[wi[:, 0] <= end]
    count = len(wi)
    if count:
        adds = np.stack((wi[:, 0], wi[:, 2]), axis=1)
        removes = np.stack((wi[:, 1], -1 * wi[:, 2]), axis=1)
    else:
        adds = removes = np.empty((0, 2))
    wt = np.vstack((adds, removes))
    wt = wt[np.argsort(wt[:, 0])]
    wt = _merge_times(wt, _MERGE_THRESHOLD_S)
    if len(wt) > 0:
        i = np.searchsorted(wt[:, 0], start, side="left")
        prior = np.sum(wt[:i, 1]) if i > 0 else 0.0
        wt = np.insert(wt[i:], 0, [start, prior], axis=0)
        j = np.searchsorted(wt[:, 0], end, side="right")
        wt = np.append(wt[:j], [[end, 0.0]], axis=0)
    conc = np.clip(np.cumsum(wt[:, 1]), 0, None)
    if len(conc) <= 1:
        return distribution_summary([] if count == 0 else [conc[0].item()])
    durations = np.clip(np.diff(wt[:, 0]), 0, None)
    if not np.any(durations > 0):
        return distribution_summary([], count=count)
    return distribution_summary(np.column_stack((conc[:-1], durations)), count=count)


def status_summary(kind: str, groups: Mapping[str, Sequence | np.ndarray], start: float = 0.0, end: float = 0.0) -> dict[str, Any]:
    """A ``StatusDistributionSummary``: successful / incomplete / errored / total."""
    n = 3 if kind == "concurrency" else 2
    arrs = {k: _weighted(groups[k], n) for k in ("successful", "incomplete", "errored")}
    arrs["total"] = np.concatenate((arrs["successful"], arrs["incomplete"], arrs["errored"]), axis=0)
    out: dict[str, Any] = {}
    for k in ("successful", "incomplete", "errored", "total"):
        if k == "total" and not len(arrs["incomplete"]) and not len(arrs["errored"]):
            # every request succeeded: the total's array is the successful one's, so is its summary
            out[k] = {**out["successful"], "percentiles": dict(out["successful"]["percentiles"])}
            continue
        if kind == "values":
            out[k] = distribution_summary(arrs[k])
        elif kind == "rate":
            out[k] = _rate_summary(arrs[k], start, end)
        else:
            out[k] = _concurrency_summary(arrs[k], start, end)
    return out
