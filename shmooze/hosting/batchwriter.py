"""Group commit: callers queue items and whoever waits for them writes them, all at once.

The command log (:mod:`shmooze.hosting.cmdlog`) and the state journal (:mod:`shmooze.hosting.journal`) both write
this way. What they share lives here: the queue, the counts of items put and written, the tickets of
failed writes, and the thread that writes what nobody waits for. :meth:`BatchWriter.put` never
blocks and hands back a ticket; :meth:`BatchWriter.wait` returns once the items put so far are
written (or says why not), so a command is answered only once its record is kept. The waiter writes
them itself (no hand-over to another thread, the cost of a cheap command): it takes the write lock
and writes every item queued, its own and those of the commands that arrived meanwhile, in one
batch (one commit, one sync); those that wait behind the lock find theirs written. Items nobody
waits for (a module's updates) are written by the thread within ``linger``. What is written, and
when there is work to do without a new item (pruning, coalesced parameters), is the owner's
``write`` and ``timeout``.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from typing import Any, Callable

log = logging.getLogger(__name__)


class WriteFailed(Exception):
    """Raised by an owner's ``write`` that has logged the failure itself: the batch is failed."""


class BatchWriter:
    """A queue of items written in batches, by their waiters or by a thread of its own.

    ``write(items, last)`` runs with the write lock held (one batch at a time, in the order of the
    items), with what has gathered, possibly nothing (when ``timeout()`` seconds passed without an
    item); ``last`` is True once, for the final batch after :meth:`close`. When ``write`` raises,
    every item of the batch is failed: :meth:`wait` says so. ``max_batch`` caps a batch.
    """

    def __init__(self, name: str, write: Callable[[list[Any], bool], None], timeout: Callable[[], float | None],
                 max_batch: int | None = None, linger: float = 0.005, wake: bool = True):
        self._write = write
        self._timeout = timeout
        self.max_batch = max_batch
        self.linger = linger
        #: False: a put does not wake the idle thread, which looks every ``linger`` instead (an owner whose
        #: items are nearly all written by their waiters: no wake-up, and no GIL taken, per item).
        self.wake = wake
        self.closed = False
        self._items: collections.deque[Any] = collections.deque()
        self._lock = threading.Lock()  # the queue and the counts
        self._work = threading.Condition(self._lock)  # wakes the thread: an item while it was idle, close
        self._idle = False
        self._urgent = False  # (start_writing) the thread writes what is queued without lingering
        self._oldest_at = 0.0  # when the oldest item queued was put (monotonic)
        self._writing = threading.Lock()  # whoever holds it takes the next batch and writes it
        self._put = 0
        self._done = 0
        #: Tickets of recent batches whose write raised ((first, last), in the order written) and why.
        self._failed: collections.deque[tuple[int, int, str]] = collections.deque(maxlen=1000)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def pace(self, linger: float, wake: bool) -> None:
        """Change how long items linger and whether a put wakes the thread (see ``wake``). The idle thread
        is woken to take it at once: asleep until its owner's next periodic work (a minute away, say),
        it would otherwise write nothing put meanwhile, once puts no longer wake it."""
        with self._lock:
            self.linger, self.wake = linger, wake
            self._work.notify()

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
        with self._lock:  # tickets follow the queue's order: a batch is a range of tickets
            self._put += 1
            if self.closed:
                self._failed.append((self._put, self._put, "not written: the writer is closed"))
                self._done += 1
            else:
                if not self._items:
                    self._oldest_at = time.monotonic()
                self._items.append(item)
                if self._idle and self.wake:  # the thread sleeps for long: it writes this unless a waiter does first
                    self._idle = False
                    self._work.notify()
            return self._put

    def wait(self, since: int = 0, timeout: float = 5.0) -> str | None:
        """Return once every item put so far is written: None when those after ticket ``since`` all
        were; else why not (a batch holding one of them failed, or ``timeout`` passed first)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            target = self._put
        while True:
            with self._lock:
                if self._done >= target:
                    for first, last, why in self._failed:
                        if first <= target and last > since:
                            return why
                    return None
            if not self._writing.acquire(timeout=max(0.0, deadline - time.monotonic())):
                return f"not written after {timeout:g} s"
            try:
                if self._done < target and (not self.closed or self._items):
                    self._write_batch(last=False)  # its own items and every one queued meanwhile
            finally:
                self._writing.release()

    def start_writing(self) -> None:
        """Have the thread write what is queued now, while the caller does something else before its
        :meth:`wait` (another writer's sync: the two overlap instead of following each other)."""
        with self._lock:
            if self._items:
                self._urgent = True
                self._work.notify()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every item put so far is written (or failed); False when ``timeout`` passed first."""
        return self.wait(self._put, timeout) is None

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then end the thread; later items are dropped."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._work.notify()
        self._thread.join(timeout)

    def _write_batch(self, last: bool) -> None:
        """Take what is queued (all of it when ``last``) and write it; called with the write lock held."""
        with self._lock:
            count = len(self._items) if last or self.max_batch is None else min(len(self._items), self.max_batch)
            items = [self._items.popleft() for _ in range(count)]
            self._oldest_at = time.monotonic()  # (what is left came during the batch, at the latest)
        failed = None
        try:
            self._write(items, last)
        except WriteFailed as exc:  # the owner has said what it means
            failed = str(exc)
        except Exception as exc:
            log.exception("%s: writing %d item(s) failed", self._thread.name, len(items))
            failed = f"{type(exc).__name__}: {exc}"
        with self._lock:
            if failed is not None and items:
                self._failed.append((self._done + 1, self._done + len(items), failed))
            if failed is not None and self._idle:  # a waiter's write failed: the owner's retry may be due
                self._work.notify()  # sooner than the idle thread's timeout, which it reads again now
            self._done += len(items)

    def _run(self) -> None:
        """Write what nobody waits for: items still queued ``linger`` after they came; nothing when
        ``timeout()`` passed (the owner's periodic work)."""
        while True:
            with self._lock:
                due = False
                if not self._items and not self.closed:
                    self._idle = True
                    timeout = self._timeout()
                    if not self.wake:
                        timeout = self.linger if timeout is None else min(timeout, self.linger)
                    due = not self._work.wait(timeout)
                    self._idle = False
                    if due and self._items:  # (not waking: an item came meanwhile, not the owner's time)
                        due = False
                if not due and not self.closed:
                    if self._items and not self._urgent:
                        self._work.wait(max(0.0, self._oldest_at + self.linger - time.monotonic()))
                    urgent, self._urgent = self._urgent, False
                    if not self._items and not self.closed:
                        continue  # their waiters took them (a command writes its own: no hand-over)
                    if not urgent and not self.closed and time.monotonic() < self._oldest_at + self.linger:
                        continue  # taken meanwhile, and new ones came: theirs, unless they linger too
                last = self.closed
            with self._writing:
                self._write_batch(last)
            if last:
                return


_datasync = getattr(os, "fdatasync", os.fsync)


class Syncer:
    """Syncs a file to the disk at most every ``interval`` seconds after it was written, on a thread of
    its own: a writer that answers once written to the kernel never waits for the disk.

    The file is opened by ``path`` for each sync (a sync through any descriptor of a file is one of the
    file), so a file replaced by a rename, or removed, needs nothing from its writer."""

    def __init__(self, name: str, path: str, interval: float = 0.05, on_synced: Callable[[Any], None] | None = None):
        self.path = path
        self.interval = interval
        self.on_synced = on_synced  # called after a sync with the last mark given to written() before it
        self.syncs = 0
        self._mark: Any = None
        self._written = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def written(self, mark: Any = None) -> None:
        """The file was written: sync it within ``interval`` (then ``on_synced(mark)``, the last mark given)."""
        if mark is not None:
            self._mark = mark
        self._written.set()

    def close(self) -> None:
        """Sync what was written, then end the thread."""
        self._closed = True
        self._written.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._closed:
            self._written.wait()
            if not self._closed:
                time.sleep(self.interval)  # the writes of the interval share this sync
            self._written.clear()
            mark = self._mark  # (what was written before now: the sync below covers it)
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # (SQLite's write-ahead log is removed once checkpointed at close)
            except OSError as exc:
                log.warning("cannot sync %s: %s", self.path, exc.strerror or exc)
                continue
            try:
                _datasync(fd)  # (the data and the size, not the times: no metadata commit for a write in place)
                self.syncs += 1
                if self.on_synced is not None and mark is not None:
                    self.on_synced(mark)
            except OSError as exc:
                log.warning("cannot sync %s: %s", self.path, exc.strerror or exc)
            finally:
                os.close(fd)
