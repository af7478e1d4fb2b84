"""Scheduling policies and the paged KV block manager."""

from sim.scheduler import policies as _policies  # noqa: F401
from sim.scheduler import vllm_v1 as _vllm_v1  # noqa: F401  (registers the default policy)
from sim.scheduler.base import SCHEDULERS, SchedulerLimits, SchedulerOutput

__all__ = ["SCHEDULERS", "SchedulerLimits", "SchedulerOutput"]
