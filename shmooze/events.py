"""Change events: a version number that increases with every visible change.

A service calls :meth:`ChangeLog.publish` whenever its visible state changes;
clients ask :meth:`ChangeLog.since` for what happened after the version they
last saw, waiting up to a timeout when nothing has yet.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any


class ChangeLog:
    """The last ``keep`` events of one service, numbered from 1."""

    def __init__(self, keep: int = 1000):
        self.version = 0
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)
        self._cond = threading.Condition()
        self._closed = False

    def publish(self, kind: str, **details: Any) -> int:
        """Record one change; wake every waiter; return the new version."""
        with self._cond:
            self.version += 1
            self._events.append({"version": self.version, "kind": kind, "time": time.time(), **details})
            self._cond.notify_all()
            return self.version

    def close(self) -> None:
        """Wake every waiter and make later waits return at once (the service is stopping)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def since(self, version: int, timeout: float = 0.0) -> dict[str, Any]:
        """Events after ``version``, waiting up to ``timeout`` seconds for one.

        The answer is ``{"version": V, "events": [...]}``; ``"reset": true`` says
        that events were dropped (the client was too far behind, or the service
        restarted and its versions started again), so the client should reload.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while self.version == version and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            current = self.version
            if version > current:
                return {"version": current, "events": [], "reset": True}
            if version == current:
                return {"version": current, "events": []}
            oldest = self._events[0]["version"] if self._events else current + 1
            if version + 1 < oldest:
                return {"version": current, "events": [], "reset": True}
            return {"version": current, "events": [e for e in self._events if e["version"] > version]}
