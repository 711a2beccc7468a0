"""The state journal: what a queue or pool needs to rebuild itself after a restart.

A journal is an append-only file of JSON lines. The first line is a snapshot of
every module in place (uid, type, init ``args``, queue module or background,
last parameters, client key); each later line is one change (``add``, ``rm``,
``order``, ``params``). Why a plain file rather than SQLite: a write torn by
SIGKILL or a power cut can only damage the last line, which reading drops (the
command log's SQLite file, truncated, is unreadable as a whole); replay needs
no schema; and the writer appends and fsyncs, nothing more.

Commands never wait for the disk: :class:`Journal` methods put the change on an
in-memory queue (under the service's lock, so the order on disk is the order of
the changes) and return. One writer thread applies changes to its own copy of
the state and appends them within a few milliseconds (from then on a crash of the
service loses nothing), fsyncs at most every ``fsync_interval`` (50 ms: what a
power cut can lose), and rewrites the file as one
snapshot when it has grown to several times the state. Parameter updates are
coalesced: at most one line per module every ``params_interval`` seconds,
carrying its full parameters as the service last heard them.

A write that fails (a full disk) loses nothing while the service runs: the writer's copy of the
state already holds the change, so it is kept in memory and the writer tries again with backoff
to write the whole state as one snapshot; the failure and the recovery are reported to the
service's :class:`shmooze.storage.Health` (its ``status`` problem, a gauge, one log line each).
A service whose journal cannot be written at start (the disk full) starts anyway and writes it
once it can.

Reading tolerates damage: a torn last line is dropped; an unreadable line stops
the replay there; either way the damaged file is kept aside (``NAME.bad-TIME``)
with a warning in the log, and the service starts from what was readable (empty,
when nothing was).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

from shmooze import storage
from shmooze.batchwriter import BatchWriter

log = logging.getLogger(__name__)

FORMAT = 1
SUFFIX = ".journal"

Entry = dict[str, Any]  # {"uid", "type", "args", "kind": "module"|"background", "parameters", "key"?, "time"}


# -- where journals live ----------------------------------------------------------------

def journal_dir(settings: Any) -> str | None:
    """The folder of the services' journals, or None when journals are off.

    ``journal_path`` when set; else the folder of ``log_database_path``; else ``run_path``;
    else a folder under ``$XDG_STATE_HOME`` (``~/.local/state``) named after the settings
    file: never under /tmp unless the settings say so. ``"journal": false`` turns it off.
    """
    if settings.get("journal", True) is False:
        return None
    for key in ("journal_path", "log_database_path", "run_path"):
        value = settings.get(key)
        if value:
            return str(value) if key != "log_database_path" else os.path.dirname(os.path.abspath(value))
    path = getattr(settings, "path", "<memory>")
    if not path or path.startswith("<"):
        return None  # settings made in code, with no file to name a folder after
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:12]
    return os.path.join(state, "shmooze", digest)


def journal_file(settings: Any, service: str) -> str | None:
    """The journal of one service, or None when journals are off."""
    folder = journal_dir(settings)
    return None if folder is None else os.path.join(folder, service + SUFFIX)


def clear(settings: Any) -> list[str]:
    """Forget every service's saved state (``shmooze stop --clear``); return the files removed."""
    removed = []
    for name in settings.service_names():
        path = journal_file(settings, name)
        if path and os.path.exists(path):
            os.unlink(path)
            removed.append(path)
    return removed


# -- reading ----------------------------------------------------------------------------

class _State:
    """Modules in place, in order, as the journal's lines describe them."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def apply(self, record: dict[str, Any]) -> None:
        op = record["op"]
        if op == "snapshot":
            self.entries = {e["uid"]: dict(e) for e in record["entries"]}
        elif op == "add":
            entry = dict(record["entry"])
            if entry["kind"] == "background":
                for uid in [u for u, e in self.entries.items() if e["kind"] == "background"]:
                    del self.entries[uid]
            self.entries[entry["uid"]] = entry
        elif op == "rm":
            for uid in record["uids"]:
                self.entries.pop(uid, None)
        elif op == "order":
            first = set(record["uids"])
            named = [self.entries[u] for u in record["uids"] if u in self.entries]
            rest = [e for e in self.entries.values() if e["uid"] not in first]
            self.entries = {e["uid"]: e for e in named + rest}
        elif op == "params":
            known = self.entries.get(record["uid"])
            if known is not None:
                known["parameters"] = record["parameters"]
        else:
            raise ValueError(f"unknown record {op!r}")

    def snapshot(self) -> dict[str, Any]:
        return {"op": "snapshot", "format": FORMAT, "time": time.time(), "entries": list(self.entries.values())}


def read(path: str) -> tuple[list[Entry], str | None]:
    """Replay a journal: the entries in order, and what was wrong with the file (None when nothing)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return [], None
    except OSError as exc:
        return [], f"cannot read it ({exc.strerror or exc}): starting empty"
    state = _State()
    lines = data.split(b"\n")
    torn = lines.pop()  # what follows the last newline: empty unless the last write was torn
    problem = None
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            state.apply(record)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            what = "the last record is damaged" if number == len(lines) and not torn else \
                f"record {number} of {len(lines)} is unreadable ({type(exc).__name__}): the records after it are lost"
            problem = what
            break
    if torn and problem is None:
        problem = f"the last record was torn ({len(torn)} bytes): that change is lost"
    return list(state.entries.values()), problem


# -- writing ----------------------------------------------------------------------------

_SYNC = object()  # queued by flush(): write and fsync everything now


class Journal:
    """The journal of one service: read on creation, then appended by a writer thread."""

    def __init__(self, path: str, service: str, *, params_interval: float = 0.5, fsync: bool = True,
                 compact_min: int = 1000, group_window: float = 0.005,
                 fsync_interval: float = 0.05, health: storage.Health | None = None):
        self.path = path
        self.health = health if health is not None else storage.Health()
        self.health.watch("journal")
        self.service = service
        self.params_interval = params_interval
        self.fsync = fsync
        self.compact_min = compact_min
        self.group_window = group_window
        self.fsync_interval = fsync_interval
        self._unsynced = False
        self._synced_at = 0.0
        self._behind = 0  # changes in the state but not on disk, after a failed write (0: not failing)
        self._retry_at = 0.0
        self._pending_records = 0  # those of the batch being written
        entries, problem = read(path)
        if problem is not None:
            aside = f"{path}.bad-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
            try:
                os.replace(path, aside)
                kept = f"the damaged file is kept as {aside}"
            except OSError as exc:
                kept = f"the damaged file could not be moved aside: {exc}"
            log.warning("%s journal %s: %s; restoring %d module(s) from what was readable; %s",
                        service, path, problem, len(entries), kept)
        #: What the journal held when the service started: the modules to restore, in order.
        self.recovered: list[Entry] = [dict(e) for e in entries]
        self.problem = problem
        self._state = _State()
        self._state.entries = {e["uid"]: e for e in entries}
        self._file: Any = None
        self._lines = 0
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._rewrite()
        except OSError as exc:  # (a full disk) the writer writes the state once it can
            self._failed(exc, len(entries) or 1)
        # Parameter changes: the latest getter per uid, set without a lock or a wake-up (a dict store is
        # atomic), collected by the writer at most every params_interval.
        self._dirty: dict[str, Callable[[], dict[str, Any]]] = {}
        # ... and those of modules whose ``add`` has not reached the writer yet (kept a few seconds).
        self._unplaced: dict[str, tuple[Callable[[], dict[str, Any]], float]] = {}
        self._params_due = 0.0
        self.writes = 0
        self.compactions = 0
        self._writer = BatchWriter(f"{service}-journal", self._write_batch, timeout=self._idle_time,
                                   gather=group_window)  # a burst gathers: one write and one fsync for all

    # -- what the service records (never blocks on the disk) ----------------------------

    def added(self, uid: str, type: str, args: dict[str, Any], kind: str = "module", key: str | None = None,
              parameters: Callable[[], dict[str, Any]] | None = None) -> None:
        """A module was placed (``kind`` ``background`` replaces the background)."""
        entry: Entry = {"uid": uid, "type": type, "args": args, "kind": kind, "parameters": {}, "time": time.time()}
        if key is not None:
            entry["key"] = key
        self._put(("add", entry, parameters))

    def removed(self, uids: list[str]) -> None:
        if uids:
            self._put(("rm", list(uids)))

    def ordered(self, uids: list[str]) -> None:
        """The queue's modules are now in this order."""
        self._put(("order", list(uids)))

    def parameters(self, uid: str, current: Callable[[], dict[str, Any]]) -> None:
        """A module's parameters changed; ``current()`` gives them all (called later, by the writer)."""
        if not self.closed:
            self._dirty[uid] = current

    @property
    def closed(self) -> bool:
        return self._writer.closed

    def _put(self, item: Any) -> None:
        self._writer.put(item)

    # -- the writer thread ----------------------------------------------------------------

    def _idle_time(self) -> float:
        """How long the writer may wait for a change before parameters or an fsync are due."""
        timeout = self.params_interval
        if self._dirty or self._unplaced:
            timeout = max(0.0, self._params_due - time.monotonic())
        if self._unsynced:
            timeout = min(timeout, max(0.0, self._synced_at + self.fsync_interval - time.monotonic()))
        if self._behind:
            timeout = min(timeout, max(0.0, self._retry_at - time.monotonic()))
        return timeout

    def _write_batch(self, items: list[Any], last: bool) -> None:
        now = last or any(i is _SYNC for i in items)  # write and fsync everything now
        try:
            self._write([i for i in items if i is not _SYNC], flush_params=now or time.monotonic() >= self._params_due,
                        retry=last)
            if self._unsynced and (now or time.monotonic() >= self._synced_at + self.fsync_interval):
                os.fsync(self._file.fileno())
                self._unsynced, self._synced_at = False, time.monotonic()
        except Exception as exc:  # (ValueError: what a bug may raise) kept in the state, retried
            if not isinstance(exc, OSError):
                log.exception("%s journal %s: write failed", self.service, self.path)
            self._failed(exc, self._pending_records)
        if last and self._behind:
            self.health.lose("journal", self._behind, f"{self.service} stopped before its journal {self.path} "
                             "could be written; a restart restores the state written before")
        if last and self._file is not None:
            self._file.close()
            self._file = None

    def _failed(self, exc: BaseException, records: int) -> None:
        """A write failed: the state holds ``records`` more changes than the disk; try again later."""
        self._behind += records
        self._unsynced = False  # (the snapshot that follows is fsynced)
        self._retry_at = time.monotonic() + self.health.failed("journal", self.path, exc, self._behind)

    def _write(self, items: list[Any], flush_params: bool, retry: bool = False) -> None:
        self._pending_records = 0
        records = []
        for item in items:
            op = item[0]
            if op == "add":
                entry = item[1]
                if item[2] is not None:
                    entry["parameters"] = item[2]()
                record = {"op": "add", "entry": entry}
            elif op == "rm":
                record = {"op": "rm", "uids": item[1]}
            else:
                record = {"op": "order", "uids": item[1]}
            self._state.apply(record)
            records.append(record)
        if flush_params and (self._dirty or self._unplaced):
            now = time.monotonic()
            for uid in list(self._dirty):
                self._unplaced[uid] = (self._dirty.pop(uid), now + 5.0)
            for uid, (current, until) in list(self._unplaced.items()):
                if uid in self._state.entries:
                    record = {"op": "params", "uid": uid, "parameters": current()}
                    self._state.apply(record)
                    records.append(record)
                    del self._unplaced[uid]
                elif until < now:  # never placed (its start failed) or already gone
                    del self._unplaced[uid]
            self._params_due = time.monotonic() + self.params_interval
        self._pending_records = len(records)
        if self._behind:  # a write failed before: the whole state, as one snapshot, when the retry is due
            if time.monotonic() < self._retry_at and not retry:
                self._behind += len(records)
                self.health.waiting("journal", self._behind)
                return
            self._rewrite()
            self.health.written("journal", self._behind + len(records))
            self._behind = 0
            return
        if not records:
            return
        if self._lines + len(records) > max(self.compact_min, 4 * len(self._state.entries)):
            self._rewrite()
            self.compactions += 1
            return
        data = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)
        self._file.write(data)
        self._file.flush()  # in the kernel now: a crash of this process loses nothing
        self._unsynced = self.fsync  # on the disk within fsync_interval (see _writer)
        self._lines += len(records)
        self.writes += 1

    def _rewrite(self) -> None:
        """Replace the file with one snapshot of the state (a new file renamed over the old one)."""
        old, self._file = self._file, None
        if old is not None:
            try:
                old.close()
            except OSError:
                pass  # what it still held (a write that failed) is in the snapshot
        tmp = f"{self.path}.tmp-{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                f.write(json.dumps(self._state.snapshot(), separators=(",", ":")).encode() + b"\n")
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)  # (a full disk: give back what the attempt took)
            raise
        if self.fsync:
            _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        self._file = open(self.path, "ab")
        self._lines = 1
        self._unsynced = False

    # -- control --------------------------------------------------------------------------

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every change recorded so far is written (parameters included); False when that
        took longer than ``timeout`` or the writes failed (the disk full: see :attr:`health`)."""
        self._put(_SYNC)
        return self._writer.flush(timeout) and not self._behind

    def close(self) -> None:
        """Write what is pending and stop recording: later changes (the service stopping) are not kept."""
        self._writer.close()

    def status(self) -> dict[str, Any]:
        return {"path": self.path, "modules": len(self._state.entries), "pending": self._writer.pending,
                "writes": self.writes, "compactions": self.compactions, "recovered": len(self.recovered),
                "problem": self.problem, "unwritten": self._behind}


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
