"""Metrics: the sink that records a run, tables of its records, and summaries.

Definitions (times in seconds in records, milliseconds in summaries, as ``_ms`` says):

* TTFT = first token − arrival; E2E = finish − arrival; queue delay = first scheduled − arrival.
* ITL = every gap between consecutive output tokens of a request (preemption gaps included).
* TPOT = (E2E − TTFT) / (output − 1), vLLM's definition; undefined (NaN) for 1-token outputs.
* ``time_per_output_token`` = E2E / output, guidellm's ``time_per_output_token_ms``.
* Percentiles interpolate linearly between order statistics (numpy ``linear``), as vLLM's and
  guidellm's benchmarks do.

The sink only records; it never decides anything about the simulation.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import fields
from operator import attrgetter

import numpy as np
import pandas as pd

from .entities import Request, RequestRecord, RequestStatus, StepRecord

PERCENTILES = (50, 90, 95, 99)


def _nan_if_neg(x: float) -> float:
    return x if x >= 0 else math.nan


def request_record(req: Request, status: str | None = None) -> RequestRecord:
    """The outcome record of ``req`` (finished, rejected or still in flight)."""
    arrival = req.arrival_s
    first = _nan_if_neg(req.first_token_s)
    finish = _nan_if_neg(req.finish_s)
    ttft = first - arrival
    e2e = finish - arrival
    tpot = (e2e - ttft) / (req.output_tokens - 1) if req.output_tokens > 1 else math.nan
    return RequestRecord(
        request_id=req.request_id,
        status=status or req.status.value,
        arrival_s=arrival,
        prompt_tokens=req.prompt_tokens,
        output_tokens=req.output_tokens,
        prefix_tokens=req.prefix_tokens,
        cached_prompt_tokens=req.cached_prompt_tokens,
        first_scheduled_s=_nan_if_neg(req.first_scheduled_s),
        first_token_s=first,
        finish_s=finish,
        ttft_s=ttft,
        e2e_s=e2e,
        tpot_s=tpot,
        queue_delay_s=_nan_if_neg(req.first_scheduled_s) - arrival,
        max_itl_s=req.max_itl_s,
        num_preemptions=req.num_preemptions,
        reject_reason=req.reject_reason,
    )


_REQUEST_COLUMNS = [f.name for f in fields(RequestRecord)]
STEP_COLUMNS = [f.name for f in fields(StepRecord)]
_request_row = attrgetter(*_REQUEST_COLUMNS)


class MetricsSink:
    """Collects request records and per-step columns in memory.

    Step records are kept column-wise (one list per :class:`~sim.entities.StepRecord` field)
    so a step costs one append per column and no per-step object.
    """

    def __init__(self, record_itls: bool = True) -> None:
        self.record_itls = record_itls
        self.requests: list[RequestRecord] = []
        self.step_columns: dict[str, list] = {name: [] for name in STEP_COLUMNS}
        self._step_appenders = [self.step_columns[name].append for name in STEP_COLUMNS]
        self.itls_s = array("d")

    @property
    def num_steps(self) -> int:
        return len(self.step_columns["step_index"])

    def on_token(self, req: Request, t_s: float) -> None:
        """``req`` produced an output token at ``t_s``."""
        if req.first_token_s < 0:
            req.first_token_s = t_s
        else:
            gap = t_s - req.last_token_s
            if gap > req.max_itl_s:
                req.max_itl_s = gap
            if self.record_itls:
                self.itls_s.append(gap)
        req.last_token_s = t_s

    def on_tokens(self, reqs: list[Request], t_s: float) -> None:
        """Each of ``reqs`` produced an output token at ``t_s`` (:meth:`on_token` for many)."""
        record = self.itls_s.append if self.record_itls else None
        for req in reqs:
            if req.first_token_s < 0:
                req.first_token_s = t_s
            else:
                gap = t_s - req.last_token_s
                if gap > req.max_itl_s:
                    req.max_itl_s = gap
                if record is not None:
                    record(gap)
            req.last_token_s = t_s

    def on_step(self, *values) -> None:
        """One executed step; ``values`` in :class:`~sim.entities.StepRecord` field order."""
        for append, v in zip(self._step_appenders, values):
            append(v)

    def on_request_done(self, req: Request) -> None:
        """``req`` left the server (finished or rejected)."""
        self.requests.append(request_record(req))


def requests_frame(records: list[RequestRecord]) -> pd.DataFrame:
    """Per-request table, sorted by request id (stable, for byte-identical outputs)."""
    df = pd.DataFrame([_request_row(r) for r in records], columns=_REQUEST_COLUMNS)
    return df.sort_values("request_id", kind="stable").reset_index(drop=True)


def steps_frame(columns: dict[str, list]) -> pd.DataFrame:
    """Per-step table from the sink's step columns."""
    return pd.DataFrame({name: columns[name] for name in STEP_COLUMNS}, columns=STEP_COLUMNS)


def _stats_ms(values_s: np.ndarray, prefix: str) -> dict[str, float]:
    v = values_s[~np.isnan(values_s)] * 1e3 if len(values_s) else values_s
    out = {f"{prefix}_mean_ms": float(v.mean()) if len(v) else math.nan}
    for p in PERCENTILES:
        out[f"{prefix}_p{p}_ms"] = float(np.percentile(v, p)) if len(v) else math.nan
    return out


def summarize(requests: pd.DataFrame, steps: pd.DataFrame, itls_s: np.ndarray | array | None = None) -> dict[str, float | int]:
    """Aggregate metrics of one run (latencies over finished requests).

    Throughput is measured over the run's span, first arrival to last finish.
    """
    fin = requests[requests["status"] == RequestStatus.FINISHED.value]
    out: dict[str, float | int] = {
        "num_requests": int(len(requests)),
        "num_finished": int(len(fin)),
        "num_rejected": int((requests["status"] == RequestStatus.REJECTED.value).sum()),
        "num_in_flight": int((requests["status"] == "in_flight").sum()),
        "num_not_sent": int((requests["status"] == "not_sent").sum()),
    }
    for col, name in (("ttft_s", "ttft"), ("tpot_s", "tpot"), ("e2e_s", "e2e"), ("queue_delay_s", "queue_delay")):
        out.update(_stats_ms(fin[col].to_numpy(dtype=float), name))
    if len(fin):
        out["time_per_output_token_mean_ms"] = float((fin["e2e_s"] / fin["output_tokens"]).mean() * 1e3)
    else:
        out["time_per_output_token_mean_ms"] = math.nan
    if itls_s is not None:
        out.update(_stats_ms(np.asarray(itls_s, dtype=float), "itl"))
    if len(fin):
        span_s = float(fin["finish_s"].max() - requests["arrival_s"].min())
    else:
        span_s = 0.0
    out["duration_s"] = span_s
    out["output_tokens_per_s"] = float(fin["output_tokens"].sum() / span_s) if span_s > 0 else math.nan
    out["requests_per_s"] = float(len(fin) / span_s) if span_s > 0 else math.nan
    out["num_preemptions"] = int(requests["num_preemptions"].sum())
    out["num_steps"] = int(len(steps))
    out["num_mixed_steps"] = int(steps["is_mixed"].sum()) if len(steps) else 0
    out["mean_batch_tokens"] = float((steps["num_prefill_tokens"] + steps["num_decode_reqs"]).mean()) if len(steps) else math.nan
    return out
