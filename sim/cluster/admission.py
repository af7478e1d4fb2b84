"""Admission control in front of a fleet's router.

An admission policy is asked once per request, at the instant the client sends it; it
answers ``""`` (admit) or the reason for refusing, and is told when an admitted request
leaves the fleet. A refused request is recorded ``rejected`` with that reason (never lost).
Policies are registered in :data:`ADMISSIONS`; a factory takes the
:class:`~sim.config.AdmissionConfig` and raises ConfigError for settings it cannot use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from sim.config import AdmissionConfig
from sim.entities import Request
from sim.errors import ConfigError
from sim.registry import Registry


class Admission(Protocol):
    def admit(self, req: Request, now_s: float) -> str: ...

    def on_leave(self, req: Request) -> None: ...


ADMISSIONS: Registry[Callable[[AdmissionConfig], Admission]] = Registry("admission policy")


def _only(cfg: AdmissionConfig, allowed: set[str]) -> None:
    """ConfigError for a setting the policy would ignore (an input is used or refused)."""
    for name in ("max_in_flight", "rate_rps", "burst"):
        if getattr(cfg, name) is not None and name not in allowed:
            raise ConfigError(f"cluster.admission.{name}: not used by policy {cfg.policy!r}; remove it or choose a policy that uses it")


@ADMISSIONS.register("unlimited", "Admit every request (default).")
class Unlimited:
    def __init__(self, cfg: AdmissionConfig) -> None:
        _only(cfg, set())

    def admit(self, req: Request, now_s: float) -> str:
        return ""

    def on_leave(self, req: Request) -> None:
        pass


@ADMISSIONS.register("max-in-flight", "Refuse while max_in_flight admitted requests have not left.")
class MaxInFlight:
    def __init__(self, cfg: AdmissionConfig) -> None:
        _only(cfg, {"max_in_flight"})
        if cfg.max_in_flight is None:
            raise ConfigError("cluster.admission.max_in_flight: policy 'max-in-flight' needs it (requests, fleet-wide)")
        self.limit = cfg.max_in_flight
        self.in_flight = 0

    def admit(self, req: Request, now_s: float) -> str:
        if self.in_flight >= self.limit:
            return f"admission: {self.in_flight} requests in flight (max-in-flight {self.limit})"
        self.in_flight += 1
        return ""

    def on_leave(self, req: Request) -> None:
        self.in_flight -= 1


@ADMISSIONS.register("token-bucket", "A bucket of `burst` requests refilled at rate_rps; refuse when empty.")
class TokenBucket:
    """Continuous refill: ``tokens = min(burst, tokens + rate × elapsed)``; a request takes one.
    Starts full."""

    def __init__(self, cfg: AdmissionConfig) -> None:
        _only(cfg, {"rate_rps", "burst"})
        if cfg.rate_rps is None:
            raise ConfigError("cluster.admission.rate_rps: policy 'token-bucket' needs its refill rate, requests/s")
        self.rate_rps = float(cfg.rate_rps)
        self.burst = float(cfg.burst or 1)
        self.tokens = self.burst
        self.last_s = 0.0

    def admit(self, req: Request, now_s: float) -> str:
        self.tokens = min(self.burst, self.tokens + self.rate_rps * (now_s - self.last_s))
        self.last_s = now_s
        if self.tokens < 1.0:
            return f"admission: token bucket empty ({self.rate_rps:g} req/s, burst {self.burst:g})"
        self.tokens -= 1.0
        return ""

    def on_leave(self, req: Request) -> None:
        pass


def build_admission(cfg: AdmissionConfig) -> Admission:
    return ADMISSIONS.get(cfg.policy, "cluster.admission.policy")(cfg)
