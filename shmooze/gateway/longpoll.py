"""HTTP long polls waited out at the gateway, not at the service.

A long poll (``changes`` with a timeout, as the browser library's fallback and ``shmz watch``
send it) waits on the gateway worker's one :class:`~shmooze.gateway.fanout.ServiceWatcher` of that
service; the service is then asked the same question without the wait. So any number of
long polls leave the service's threads free for commands.
"""

from __future__ import annotations

import threading
from typing import Any

from shmooze import protocol
from shmooze.gateway.fanout import ServiceWatcher

#: The longest a long poll waits at the gateway (below the forwarding timeout).
MAX_LONG_POLL = 25.0


class _Wakeup:
    """A listener that only notes that something was published."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def push(self, frame: bytes) -> None:
        self.event.set()


def wait_for_change(watcher: ServiceWatcher, since: int, timeout: float) -> None:
    """Wait (up to ``timeout``) until the watched service has changes after ``since``."""
    waker = _Wakeup()
    watcher.subscribe(waker)
    try:
        if watcher.current_version() == since:
            waker.event.wait(timeout)
    finally:
        watcher.unsubscribe(waker)


def wait_for_changes_here(watcher: ServiceWatcher, body: bytes) -> bytes:
    """If ``body`` is a long poll (``changes`` with a timeout), wait for it on the gateway's watcher
    and return the same question without the wait; any other body is returned as it is, but for a
    ``changes`` that asks for a kept stream: that is asked without it."""
    if b'"changes"' not in body:
        return body
    try:
        request = protocol.parse_request(body)
    except protocol.BodyError:
        return body
    item = request.items[0] if len(request.items) == 1 and not request.batch else None
    if not isinstance(item, protocol.Command) or item.cmd != "changes":
        return body
    if "stream" in item.args:
        # A kept stream is the gateway's own way to follow a service; asked for by a client, it would hold
        # one of the service's threads (the gateway signs what it forwards) until the forward timeout.
        item = protocol.Command("changes", {k: v for k, v in item.args.items() if k != "stream"})
        body = protocol.dumps({"cmd": "changes", "args": item.args})
    if set(item.args) - {"since", "timeout"}:
        return body
    since, timeout = item.args.get("since", 0), item.args.get("timeout", 0)
    if not _is_int(since) or not (_is_int(timeout) or isinstance(timeout, float)) or timeout <= 0:
        return body  # not a plain long poll: the service answers it as it is
    wait_for_change(watcher, since, min(float(timeout), MAX_LONG_POLL))
    return protocol.dumps({"cmd": "changes", "args": {"since": since, "timeout": 0}})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
