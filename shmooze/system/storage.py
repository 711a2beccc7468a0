"""Storage health: whether a service can write what it keeps (its journal, its command log).

A full disk (``ENOSPC``, ``EDQUOT``, SQLite's "database or disk is full") is a state, not an error
per write. Each writer reports here when a write fails (:meth:`Health.failed`: how much it keeps in
memory to write later, how much it had to drop) and when writing works again
(:meth:`Health.written`). From that:

* the log says it twice per outage and per store: one warning when writes start failing (what is
  kept and retried, what is lost), one line when they work again (how long, what was written,
  what was lost meanwhile), never once per write;
* ``status`` has a ``problem`` (a sentence; None when all is well) and ``storage`` (the figures);
* metrics have ``shmooze_storage_failing`` (1 while a store cannot be written);
* the service refuses state-changing commands meanwhile (:attr:`Health.refusal`): a success answer
  is a promise that the change is kept, which it cannot make.

Writers retry on their own with :func:`backoff` delays, so the state ends when space returns.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import threading
import time
from typing import Any, Callable

log = logging.getLogger(__name__)

#: What "the disk is full" looks like to a writer.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: What a store keeps, in words (the log and ``problem`` count them).
UNITS = {"journal": "change(s)", "command log": "row(s)"}
#: Retry delays of a store that cannot be written: from FIRST_RETRY, doubling up to LAST_RETRY seconds.
FIRST_RETRY, LAST_RETRY = 0.25, 4.0


def is_full(exc: BaseException) -> bool:
    """Whether a write failed because the disk (or the user's quota) is full."""
    if isinstance(exc, OSError):
        return exc.errno in FULL_ERRNOS
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == 13 or "disk is full" in str(exc)  # SQLITE_FULL
    return False


def describe(exc: BaseException) -> str:
    """A failed write in a few words: "disk full (No space left on device)"."""
    what = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
    return f"disk full ({what})" if is_full(exc) else what


def backoff(failures: int) -> float:
    """Seconds to wait before the next attempt after ``failures`` failed ones in a row."""
    return min(LAST_RETRY, FIRST_RETRY * 2 ** max(0, failures - 1))


class _Store:
    """One thing a service writes, while it cannot be written."""

    def __init__(self, name: str, path: str):
        self.name = name
        self.path = path
        self.since = time.time()
        self.since_mono = time.monotonic()
        self.error = ""
        self.full = False
        self.failures = 0
        self.pending = 0  # kept in memory, written once the store can be
        self.lost = 0  # dropped during this outage

    def view(self) -> dict[str, Any]:
        return {"store": self.name, "path": self.path, "error": self.error, "full": self.full,
                "since": round(self.since, 3), "failures": self.failures, "pending": self.pending, "lost": self.lost}


class Health:
    """The storage health of one service: its stores that cannot be written now, and what was lost.

    ``on_change(problem)`` (optional) is called when a store starts or stops failing (the service
    publishes a change event, so a dashboard reads ``status`` again)."""

    def __init__(self, on_change: Callable[[str | None], Any] | None = None):
        self.on_change = on_change
        self._lock = threading.Lock()
        self._failing: dict[str, _Store] = {}
        #: Why state-changing commands are refused now (None: they are not). Read without a lock.
        self.refusal: str | None = None
        #: Items (changes, rows) each store had to drop since the service started.
        self.lost: dict[str, int] = {}
        #: Outages so far, per store.
        self.outages: dict[str, int] = {}
        self._stores: set[str] = set()

    def watch(self, store: str) -> None:
        """A store this service writes (its metrics show it from now on, failing or not)."""
        with self._lock:
            self._stores.add(store)

    def failed(self, store: str, path: str, exc: BaseException, pending: int, lost: int = 0) -> float:
        """A write of ``store`` failed: ``pending`` items are kept in memory to be written later,
        ``lost`` were dropped by this failure. Returns the seconds to wait before trying again."""
        with self._lock:
            self._stores.add(store)
            state = self._failing.get(store)
            began = state is None
            if state is None:
                state = self._failing[store] = _Store(store, path)
                self.outages[store] = self.outages.get(store, 0) + 1
            state.failures += 1
            state.error, state.full = describe(exc), is_full(exc)
            state.pending = pending
            state.lost += lost
            if lost:
                self.lost[store] = self.lost.get(store, 0) + lost
            delay = backoff(state.failures)
            self._update()
        if began:
            unit = UNITS.get(store, "item(s)")
            kept = f"{pending} {unit} kept in memory, to be written once it can be" if pending else "nothing waiting"
            dropped = f"; {lost} {unit} could not be kept and are lost" if lost else ""
            log.warning("%s %s cannot be written: %s; %s%s; retrying every %g-%g s, and refusing state-changing "
                        "commands until it works", store, path, state.error, kept, dropped, FIRST_RETRY, LAST_RETRY)
            self._tell()
        return delay

    def waiting(self, store: str, pending: int) -> None:
        """A failing store keeps ``pending`` items in memory now (more came while it waits to retry)."""
        state = self._failing.get(store)
        if state is not None:
            state.pending = pending

    def written(self, store: str, count: int = 0) -> None:
        """A write of ``store`` worked (``count`` items, those kept during an outage included)."""
        if store not in self._failing:  # the usual case: one dict lookup, no lock
            return
        with self._lock:
            state = self._failing.pop(store, None)
            self._update()
        if state is None:
            return
        unit = UNITS.get(store, "item(s)")
        lost = f"; {state.lost} {unit} were lost meanwhile (the oldest waiting, past what memory keeps)" \
            if state.lost else "; nothing was lost"
        log.warning("%s %s is written again after %.1f s (%d failed attempt(s)): %d %s kept in memory "
                    "meanwhile are on disk now%s", store, state.path, time.monotonic() - state.since_mono,
                    state.failures, count, unit, lost)
        self._tell()

    def lose(self, store: str, count: int) -> None:
        """``count`` items of ``store`` are lost for good (the service stopping with them unwritten: the
        store says which in its log)."""
        if count:
            with self._lock:
                self.lost[store] = self.lost.get(store, 0) + count

    @property
    def failing(self) -> bool:
        return bool(self._failing)

    def problem(self) -> str | None:
        """What is wrong, in one sentence (None when every store can be written)."""
        with self._lock:
            stores = list(self._failing.values())
        if not stores:
            return None
        parts = []
        for s in stores:
            since = time.strftime("%H:%M:%S", time.localtime(s.since))
            part = f"{s.name} {s.path} cannot be written ({s.error}) since {since}"
            if s.pending:
                part += f", {s.pending} {UNITS.get(s.name, 'item(s)')} kept in memory until it can be"
            if s.lost:
                part += f", {s.lost} lost"
            parts.append(part)
        return "; ".join(parts) + "; state-changing commands are refused until it works again"

    def status(self) -> dict[str, Any]:
        """``status``'s ``storage``: the stores failing now, items lost so far, outages so far."""
        with self._lock:
            failing = [s.view() for s in self._failing.values()]
            return {"failing": failing, "lost": dict(self.lost), "outages": dict(self.outages)}

    def gauges(self) -> list[tuple[str, str, str, dict[str, str], float]]:
        """Metrics of each store: whether it fails now, what it keeps waiting, what it lost."""
        with self._lock:
            names = sorted(self._stores | set(self._failing) | set(self.lost))
            out = []
            for name in names:
                state = self._failing.get(name)
                labels = {"store": name}
                out.append(("shmooze_storage_failing", "Whether a store of the service cannot be written now "
                            "(1: a full disk or another write error; state-changing commands are refused)",
                            "gauge", labels, 1.0 if state else 0.0))
                out.append(("shmooze_storage_full", "Whether a store fails because the disk or quota is full",
                            "gauge", labels, 1.0 if state and state.full else 0.0))
                out.append(("shmooze_storage_pending", "Items kept in memory until the store can be written",
                            "gauge", labels, float(state.pending if state else 0)))
                out.append(("shmooze_storage_lost", "Items a store could not keep, since the service started",
                            "counter", labels, float(self.lost.get(name, 0))))
        return out

    def _update(self) -> None:
        """(with the lock held) The refusal that goes with the stores failing now."""
        if not self._failing:
            self.refusal = None
            return
        what = ", ".join(f"its {s.name} ({s.path}) cannot be written: {s.error}" for s in self._failing.values())
        self.refusal = f"refused: the change could not be kept, {what}; try again once there is space"

    def _tell(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change(self.problem())
            except Exception:
                log.exception("reporting a storage change failed")
