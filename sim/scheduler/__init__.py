"""Scheduling policies and the paged KV block manager."""

from . import vllm_v1 as _vllm_v1  # noqa: F401  (registers the default policy)
from . import policies as _policies  # noqa: F401
from .base import SCHEDULERS, SchedulerLimits, SchedulerOutput

__all__ = ["SCHEDULERS", "SchedulerLimits", "SchedulerOutput"]
