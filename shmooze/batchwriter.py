"""A background writer: callers queue items and return at once; one thread writes them in batches.

The command log (:mod:`shmooze.cmdlog`) and the state journal (:mod:`shmooze.journal`) both keep
commands off the disk this way. What they share lives here: the queue, the counts of items put and
written (so :meth:`BatchWriter.flush` can wait for everything put so far), the stop marker and the
thread. What they write, and when they have work to do without a new item (pruning, an fsync
due, coalesced parameters), is the owner's ``write`` and ``timeout``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable

log = logging.getLogger(__name__)

_STOP = object()


class BatchWriter:
    """One writer thread fed by a queue.

    ``write(items, last)`` runs on the thread with what has gathered (possibly nothing, when
    ``timeout()`` seconds passed without an item); ``last`` is True once, for the final batch after
    :meth:`close`. ``gather`` waits that long after a first item so a burst becomes one batch;
    ``max_batch`` caps a batch.
    """

    def __init__(self, name: str, write: Callable[[list[Any], bool], None], timeout: Callable[[], float | None],
                 gather: float = 0.0, max_batch: int | None = None):
        self._write = write
        self._timeout = timeout
        self.gather = gather
        self.max_batch = max_batch
        self.closed = False
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._written = threading.Condition()
        self._put = 0
        self._done = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Items put but not written yet."""
        return self._put - self._done

    def put(self, item: Any) -> None:
        """Queue one item (ignored once closed); never blocks on the disk."""
        if self.closed:
            return
        with self._written:
            self._put += 1
        self._queue.put(item)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every item put so far is written; False when ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._written:
            target = self._put
            while self._done < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._written.wait(min(remaining, 0.05))
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then end the thread; later items are dropped."""
        if self.closed:
            return
        self.closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _take(self) -> list[Any]:
        try:
            first = self._queue.get(timeout=self._timeout())
        except queue.Empty:
            return []
        if first is not _STOP and self.gather:
            time.sleep(self.gather)
        items = [first]
        while first is not _STOP and (self.max_batch is None or len(items) < self.max_batch):
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
            if items[-1] is _STOP:
                break
        return items

    def _run(self) -> None:
        while True:
            items = self._take()
            last = bool(items) and items[-1] is _STOP
            if last:
                items.pop()
            try:
                self._write(items, last)
            except Exception:
                log.exception("%s: writing %d item(s) failed", self._thread.name, len(items))
            with self._written:
                self._done += len(items)
                self._written.notify_all()
            if last:
                return
