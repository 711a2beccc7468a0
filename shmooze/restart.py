"""Restart policies: whether a module that ended is started again, when, and when to give up.

Pure logic with the clock passed in, so it is tested without processes. A policy is set per module
type (``restart``, ``restart_delay``, ``restart_max_delay``, ``restart_max_starts``,
``restart_window`` on :class:`~shmooze.moduletype.ModuleType`):

* ``never`` (the default): an ended module is gone, as before;
* ``on-failure``: started again when it ended by itself with a failure (a non-zero exit, a signal,
  a broken protocol, a resource limit), not when it left cleanly or was removed;
* ``always``: started again whenever it ended without being removed (``rm``, a new background,
  the service stopping are removals: nothing is restarted after them).

The delay before a restart grows exponentially from ``restart_delay`` (doubling each time) up to
``restart_max_delay``; it starts again from ``restart_delay`` once the module has run for a whole
``restart_window`` since its last start. After ``restart_max_starts`` starts within
``restart_window`` seconds the policy gives up, as supervisor's ``startretries`` and PM2's
``max_restarts`` do.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

NEVER, ON_FAILURE, ALWAYS = "never", "on-failure", "always"
MODES = (NEVER, ON_FAILURE, ALWAYS)


@dataclass(frozen=True)
class Policy:
    mode: str = NEVER
    delay: float = 1.0
    max_delay: float = 60.0
    max_starts: int = 5
    window: float = 60.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"restart must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.delay < 0 or self.max_delay < self.delay:
            raise ValueError("restart delays must satisfy 0 <= restart_delay <= restart_max_delay")
        if self.max_starts < 1 or self.window <= 0:
            raise ValueError("restart_max_starts must be at least 1 and restart_window positive")

    @classmethod
    def of(cls, mtype: Any) -> Policy:
        """The policy of a module type (its ``restart*`` fields; ``never`` when it has none)."""
        return cls(getattr(mtype, "restart", NEVER), getattr(mtype, "restart_delay", 1.0),
                   getattr(mtype, "restart_max_delay", 60.0), getattr(mtype, "restart_max_starts", 5),
                   getattr(mtype, "restart_window", 60.0))

    def wants(self, failed: bool, removed: bool) -> bool:
        """Whether an end calls for a restart at all (before counting starts)."""
        if removed or self.mode == NEVER:
            return False
        return self.mode == ALWAYS or failed


@dataclass
class Tracker:
    """The restart history of one module (one uid): its starts, and what the policy decided."""

    policy: Policy
    starts: collections.deque = field(default_factory=collections.deque)  # monotonic times of starts
    restarts: int = 0
    streak: int = 0  # restarts in a row without a whole window of running (sets the backoff)
    next_try: float | None = None  # monotonic time of the planned restart
    given_up: bool = False
    last_end: str | None = None

    def started(self, now: float) -> None:
        self.starts.append(now)
        self.next_try = None

    def _recent(self, now: float) -> int:
        while self.starts and self.starts[0] <= now - self.policy.window:
            self.starts.popleft()
        return len(self.starts)

    def ended(self, now: float, failed: bool, removed: bool, why: str = "") -> float | None:
        """The module ended: the delay before its restart, or None (no restart: not wanted, or given up)."""
        self.last_end = why or None
        if not self.policy.wants(failed, removed):
            return None
        ran_long = bool(self.starts) and now - self.starts[-1] >= self.policy.window
        if self._recent(now) >= self.policy.max_starts:
            self.given_up = True
            self.next_try = None
            return None
        self.streak = 0 if ran_long else self.streak + 1
        delay = min(self.policy.max_delay, self.policy.delay * (2 ** max(0, self.streak - 1)))
        self.next_try = now + delay
        return delay

    def start_failed(self, now: float, why: str = "") -> float | None:
        """A restart attempt did not get the module running: count it and plan the next one."""
        return self.ended(now, failed=True, removed=False, why=why)

    def view(self, now: float) -> dict[str, Any]:
        """What ``status`` shows."""
        info: dict[str, Any] = {"restarts": self.restarts, "policy": self.policy.mode}
        if self.next_try is not None:
            info["next_try"] = round(max(0.0, self.next_try - now), 3)
        if self.given_up:
            info["given_up"] = True
        return info
