"""Change events: a version number that increases with every visible change.

A service calls :meth:`ChangeLog.publish` whenever its visible state changes;
clients ask :meth:`ChangeLog.since` for what happened after the version they
last saw, waiting up to a timeout when nothing has yet.

Versions carry the instance that handed them out: a service's versions start at
its *epoch* (:func:`epoch_base`, from the time it started), above every version an
earlier instance could have reached. A client from before a restart asks with a
version below the epoch and is answered ``reset``, however high or low it was.
Versions stay below 2**53, so JavaScript holds them exactly.
"""

from __future__ import annotations

import collections
import itertools
import json
import threading
import time
from typing import Any, Callable

#: 2024-01-01 UTC: epochs count from here, so that versions stay far below 2**53 for centuries.
_ORIGIN = 1704067200.0
#: Versions per millisecond of epoch: an instance would have to publish a million events a second,
#: on average over its life, before its versions reached the next instance's epoch.
_PER_MS = 1000


def epoch_base(now: float | None = None) -> int:
    """The first version of a service instance that starts now."""
    return int(((time.time() if now is None else now) - _ORIGIN) * 1000) * _PER_MS


#: Bytes of JSON the log keeps, and the most one answer of :meth:`ChangeLog.since` carries.
MAX_LOG_BYTES = 8 << 20
MAX_ANSWER_BYTES = 4 << 20


class ChangeLog:
    """The last ``keep`` events of one service, numbered from ``base + 1`` (``base``: its epoch),
    and at most ``max_bytes`` of them.

    ``since(0)`` means "from the start of this instance": a client that knows nothing yet. An
    answer to :meth:`since` carries at most ``max_answer_bytes`` of events; a client further behind
    than that gets ``reset: true`` (it reloads), never an answer of hundreds of MiB.
    """

    def __init__(self, keep: int = 1000, base: int = 0, max_bytes: int = MAX_LOG_BYTES,
                 max_answer_bytes: int = MAX_ANSWER_BYTES):
        self.base = base
        self.version = base
        self.max_bytes = max_bytes
        self.max_answer_bytes = max_answer_bytes
        self._events: collections.deque[dict[str, Any]] = collections.deque()
        self._sizes: collections.deque[int] = collections.deque()
        self._bytes = 0
        self._keep = keep
        self._cond = threading.Condition()
        self._closed = False
        #: Kept streams (:meth:`follow`): each is handed every batch as one line, under the lock.
        self._streams: list[Callable[[bytes], None]] = []

    def publish(self, kind: str, **details: Any) -> int:
        """Record one change; wake every waiter; return the new version."""
        return self.publish_each(kind, [details])

    def publish_each(self, kind: str, each: list[dict[str, Any]]) -> int:
        """Record one change of ``kind`` per item of ``each`` (its details), waking the waiters once;
        return the last new version."""
        with self._cond:
            now = time.time()
            first = len(self._events)
            for details in each:
                self.version += 1
                event = {"version": self.version, "kind": kind, "time": now, **details}
                size = _size(event)
                self._events.append(event)
                self._sizes.append(size)
                self._bytes += size
            if self._streams:
                self._stream(list(itertools.islice(self._events, first, None)), sum(
                    itertools.islice(self._sizes, first, None)))
            while len(self._events) > self._keep or (self._bytes > self.max_bytes and len(self._events) > 1):
                self._events.popleft()
                self._bytes -= self._sizes.popleft()
            self._cond.notify_all()
            return self.version

    def follow(self, since: int, deliver: Callable[[bytes], None]) -> bytes:
        """Start a kept stream after version ``since``: the first line (what :meth:`since` answers now,
        without waiting) is returned, and every later batch is handed to ``deliver`` as one more line,
        on the publishing thread, in order, with nothing between (both under the lock). ``deliver``
        must not block. Lines are JSON answers as :meth:`since`'s, each ending in a newline."""
        with self._cond:
            first = self.since(since)
            self._streams.append(deliver)
        return line(first)

    def unfollow(self, deliver: Callable[[bytes], None]) -> None:
        with self._cond:
            if deliver in self._streams:
                self._streams.remove(deliver)

    @property
    def closed(self) -> bool:
        return self._closed

    def _stream(self, events: list[dict[str, Any]], size: int) -> None:
        if size > self.max_answer_bytes:  # (as :meth:`since` would: too much for one answer, reload)
            batch = line({"version": self.version, "events": [], "reset": True})
        else:
            batch = line({"version": self.version, "events": events})
        for deliver in list(self._streams):
            deliver(batch)

    def close(self) -> None:
        """Wake every waiter and make later waits return at once (the service is stopping)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def since(self, version: int, timeout: float = 0.0) -> dict[str, Any]:
        """Events after ``version``, waiting up to ``timeout`` seconds for one.

        The answer is ``{"version": V, "events": [...]}``; ``"reset": true`` says
        that events were dropped (the client was too far behind, or its version
        comes from another instance of the service), so the client should reload.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        if version == 0:
            version = self.base
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
            wanted = current - version  # the newest ``wanted`` events, if their bytes fit
            if sum(itertools.islice(reversed(self._sizes), wanted)) > self.max_answer_bytes:
                return {"version": current, "events": [], "reset": True}
            return {"version": current, "events": list(itertools.islice(self._events, len(self._events) - wanted,
                                                                        None))}


#: Made once: ``json.dumps`` with options builds a new encoder for every call, a good part of
#: publishing a small event.
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str, check_circular=False)


def line(answer: dict[str, Any]) -> bytes:
    """One line of a kept stream (see :meth:`ChangeLog.follow`)."""
    try:
        return _ENCODER.encode(answer).encode() + b"\n"
    except (TypeError, ValueError, RecursionError):  # an event that is not JSON: the follower reloads
        return b'{"version":%d,"events":[],"reset":true}\n' % answer["version"]


def _size(event: dict[str, Any]) -> int:
    """Bytes of an event as JSON (an event that is not JSON counts as small: it fails later, elsewhere)."""
    try:
        return len(_ENCODER.encode(event))
    except (TypeError, ValueError, RecursionError):
        return 64
