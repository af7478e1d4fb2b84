"""The client's per-request timeout (``arrival.request_timeout_s``), as guidellm's and
inference-perf's HTTP clients have: a request that has not left ``timeout_s`` after its send
is given up at that instant, and the server aborts it.

Sends come in time order and share one timeout, so deadlines come in send order: a FIFO of
sent requests and one pending wake-up, at the deadline of the oldest request still in flight.
When that request leaves, the wake-up is withdrawn and set at the next one's deadline, so the
event queue holds only a live deadline: it is the next event the engine's fast-forward sees
(a window ends before it), and no wake-up outlives the run.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import simpy

from sim.core.engine import CancellableEnvironment
from sim.entities import LEFT_STATUSES, Request


class ClientTimeouts:
    """Gives up on requests ``timeout_s`` after their send: ``on_timeout(req, sent_s)`` is
    called at the deadline (exactly ``sent_s + timeout_s``) of every request that has not left
    by then. The client reports each send (:meth:`sent`) and each departure (:meth:`left`).
    A request whose status is in :data:`~sim.entities.LEFT_STATUSES` has left."""

    def __init__(self, env: CancellableEnvironment, timeout_s: float, on_timeout: Callable[[Request, float], None]) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.env = env
        self.timeout_s = timeout_s
        self.on_timeout = on_timeout
        self._queue: deque[tuple[float, float, Request]] = deque()  # (deadline, sent, request), in send order
        self._wake: simpy.Event | None = None  # at the head's deadline; None when nothing is in flight
        self._firing = False  # timing requests out: their departures need no re-arming

    def sent(self, req: Request, sent_s: float) -> None:
        """The client sent ``req`` at ``sent_s`` (now, after every earlier send)."""
        self._queue.append((sent_s + self.timeout_s, sent_s, req))
        if self._wake is None and not self._firing:
            self._arm()

    def left(self, req: Request) -> None:
        """``req`` left (finished, rejected, …); its status says so already."""
        queue = self._queue
        if self._wake is not None and not self._firing and queue and queue[0][2] is req:
            self.env.cancel(self._wake)  # the next deadline is later: wake up then instead
            self._wake = None
            self._arm()

    def _arm(self) -> None:
        """Wake up at the deadline of the oldest request in flight (dropping those that left)."""
        queue = self._queue
        while queue and queue[0][2].status in LEFT_STATUSES:
            queue.popleft()
        if queue:
            wake = self._wake = self.env.timeout_at(queue[0][0])
            wake.callbacks.append(self._fire)

    def _fire(self, _event: simpy.Event) -> None:
        self._wake = None
        self._firing = True
        now = self.env.now
        queue = self._queue
        while queue and queue[0][0] <= now:
            _, sent_s, req = queue.popleft()
            if req.status not in LEFT_STATUSES:
                self.on_timeout(req, sent_s)
        self._firing = False
        self._arm()
