"""Shedding slow request bodies when they crowd a gateway worker.

A gevent gateway worker holds at most ``gateway_connections`` connections. Each body already has a
deadline (``body_timeout`` plus its size at ``body_min_rate``), but a client with more connections
than the worker has slots, each trickling a body, keeps every slot for that whole deadline: new
connections of everyone else wait in the listen queue. So each worker watches how many of its
connections are reading a body. While they hold half of its slots or more, every body still arriving
``body_shed_after`` seconds after its size would have taken at ``body_min_rate`` is cut (408,
connection closed), and the slots go to the connections waiting in the queue, in the order they
came.

Only a gevent worker sheds (a threaded service has no slots to lose this way).
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)


class Shed(Exception):
    """Raised in a body reader that was cut to free its slot (the reader answers 408)."""


class SlowBodies:
    """The body readers of one gevent worker, and the greenlet that sheds them under pressure."""

    def __init__(self) -> None:
        self._readers: dict[Any, float] = {}  # reading greenlet -> when it may be cut (under pressure)
        self._watcher: Any = None
        self.shed_total = 0

    def enter(self, due: float = 0.0) -> Any:
        """Note that the current greenlet reads a body that should take ``due`` seconds at the
        minimum rate; returns the token for :meth:`leave`."""
        import gevent

        current = gevent.getcurrent()
        self._readers[current] = time.monotonic() + due
        return current

    def leave(self, token: Any) -> None:
        self._readers.pop(token, None)

    def __len__(self) -> int:
        return len(self._readers)

    def shed(self, keep: int, older_than: float) -> int:
        """Cut readers more than ``older_than`` seconds past what their size takes at the minimum
        rate, the longest overdue first, until at most ``keep`` remain; return how many were cut."""
        import gevent

        if len(self._readers) <= keep:
            return 0
        now = time.monotonic()
        cut = 0
        for reader, due in sorted(self._readers.items(), key=lambda item: item[1]):
            if len(self._readers) - cut <= keep or now - due < older_than:
                break
            self._readers.pop(reader, None)
            if isinstance(reader, gevent.Greenlet):
                reader.kill(Shed, block=False)
            else:  # a bare greenlet
                gevent.kill(reader, Shed)
            cut += 1
        self.shed_total += cut
        return cut

    def watch(self, slots: int, older_than: float, interval: float = 0.1) -> None:
        """Start the watching greenlet (once): shed while readers hold half of ``slots`` or more."""
        import gevent

        if self._watcher is not None:
            return
        keep = max(1, slots // 2)

        def run() -> None:
            while True:
                gevent.sleep(interval)
                if len(self._readers) < keep:
                    continue
                held = len(self._readers)
                try:
                    cut = self.shed(0, older_than)  # every overdue body: the queue behind them moves at once
                except Exception:  # the watcher must outlive any one bad round
                    log.exception("shedding slow request bodies failed")
                    continue
                if cut:
                    log.warning("request bodies held %d of %d connections: cut the %d slowest, each over "
                                "%g s late (body_shed_after)", held, slots, cut, older_than)

        self._watcher = gevent.spawn(run)
        log.info("slow request bodies are cut while they hold %d of %d connections", keep, slots)


#: The body readers of this process (the gateway worker it is, when gevent runs it).
READERS = SlowBodies()


