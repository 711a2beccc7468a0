"""A background writer: callers queue items; one thread writes them in batches (group commit).

The command log (:mod:`shmooze.cmdlog`) and the state journal (:mod:`shmooze.journal`) both write
this way. What they share lives here: the queue, the counts of items put and written, the stop
marker and the thread. :meth:`BatchWriter.put` never blocks on the disk and hands back a ticket;
:meth:`BatchWriter.wait` blocks until that item's batch is written (or says why it was not), so a
command can be answered only once its record is kept, while every command that arrived during one
write shares the next one (one commit, one fsync for all). What they write, and when they have work
to do without a new item (pruning, an fsync due, coalesced parameters), is the owner's ``write``
and ``timeout``.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from typing import Any, Callable

log = logging.getLogger(__name__)

_STOP = object()


class WriteFailed(Exception):
    """Raised by an owner's ``write`` that has logged the failure itself: the batch is failed."""


class BatchWriter:
    """One writer thread fed by a queue.

    ``write(items, last)`` runs on the thread with what has gathered (possibly nothing, when
    ``timeout()`` seconds passed without an item); ``last`` is True once, for the final batch after
    :meth:`close`. When ``write`` raises, every item of the batch is failed: :meth:`wait` says so.
    ``gather`` waits that long after a first item so a burst becomes one batch (it delays every
    waiter: 0 when callers wait); ``max_batch`` caps a batch.
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
        #: Tickets of recent batches whose write raised ((first, last), newest last) and why.
        self._failed: collections.deque[tuple[int, int, str]] = collections.deque(maxlen=1000)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Items put but not written yet."""
        return self._put - self._done

    @property
    def tickets(self) -> int:
        """The number of the last ticket handed out (pass it to :meth:`wait` as ``since``)."""
        return self._put

    def put(self, item: Any) -> int:
        """Queue one item and return its ticket; never blocks on the disk. Once closed, the item is
        dropped and its ticket failed (a :meth:`wait` says so)."""
        with self._written:  # tickets follow the queue's order: a batch is a range of tickets
            self._put += 1
            if self.closed:
                self._failed.append((self._put, self._put, "not written: the writer is closed"))
                self._done += 1
            else:
                self._queue.put(item)
            return self._put

    def wait(self, since: int = 0, timeout: float = 5.0) -> str | None:
        """Block until every item put so far is written. None when those after ticket ``since`` all
        were; else why not: a batch holding one of them failed, or ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._written:
            target = self._put
            while self._done < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return f"not written after {timeout:g} s"
                self._written.wait(min(remaining, 0.05))
            for first, last, why in reversed(self._failed):
                if last <= since:
                    break
                if first <= target:
                    return why
        return None

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every item put so far is written (or failed); False when ``timeout`` passed first."""
        return self.wait(self._put, timeout) is None

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then end the thread; later items are dropped."""
        with self._written:
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
            failed = None
            try:
                self._write(items, last)
            except WriteFailed as exc:  # the owner has said what it means
                failed = str(exc)
            except Exception as exc:
                log.exception("%s: writing %d item(s) failed", self._thread.name, len(items))
                failed = f"{type(exc).__name__}: {exc}"
            with self._written:
                if failed is not None and items:
                    self._failed.append((self._done + 1, self._done + len(items), failed))
                self._done += len(items)
                self._written.notify_all()
            if last:
                return
