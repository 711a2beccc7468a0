"""The state journal: what a queue or pool needs to rebuild itself after a restart.

A journal is an append-only file of records, each framed as a JSON text sequence (RFC 7464) with
a checksum: ``RS CRC32 SP JSON LF``, where ``RS`` is the byte 0x1E, which JSON never holds raw.
Record 0 heads the file (``snapshot``: format, time, how many modules follow); then one ``add``
per module in place (uid, type, init ``args``, queue module or background, last parameters, client
key); then one record per change (``add``, ``rm``, ``order``, ``params``). Every record carries its
number ``n`` (0, 1, 2, ... within the file). Why a plain file rather than SQLite: a reader can
resynchronise at the next ``RS`` after any damage, whatever byte offset was torn or overwritten,
so damage loses the damaged records only, and the numbers say exactly which (the command log's
SQLite file, damaged, is unreadable as a whole); replay needs no schema; and the writer appends
and syncs, nothing more.

Commands wait for the journal, together: :class:`Journal` methods put the change on an in-memory
queue (under the service's lock, so the order on disk is the order of the changes) and return; the
service answers a command once :meth:`Journal.sync` says its changes are kept: the waiting command
applies every change queued to the journal's own copy of the state and appends them in one write
(group commit; :class:`shmooze.hosting.batchwriter.BatchWriter`). With ``durability`` ``fsync`` (the
default) it syncs the file once for all of them before their commands are answered; with ``write``
they are kept once written to the kernel (a crash of the service loses nothing acknowledged) and
the file is synced at most every ``fsync_interval`` (50 ms: what a power cut can lose). The file is rewritten
as one snapshot when it has grown to several
times the state. Parameter updates, which no command waits for, are coalesced: at most one record
per module every ``params_interval`` seconds, carrying its full parameters as the service last
heard them.

A write that fails (a full disk) loses nothing while the service runs: the writer's copy of the
state already holds the change, the commands waiting for it are answered that it is not kept, and
the writer tries again with backoff to write the whole state as one snapshot. The failure and the
recovery are reported to the service's :class:`shmooze.system.storage.Health` (its ``status`` problem, a
gauge, one log line as the failures begin and one as they end). A service whose journal cannot be
written at start (the disk full) starts anyway and writes it once it can.

Reading tolerates damage: a damaged record is skipped and the replay goes on at the next one; the
problem says exactly which records were lost (a module of the snapshot, a change, the last record
torn); the damaged file is kept aside (``NAME.bad-TIME``) with a warning in the log. Journals of
the first format (plain JSON lines) are still read, then rewritten in this one.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import os
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from shmooze.hosting.batchwriter import BatchWriter, Syncer, WriteFailed
from shmooze.hosting.lifecycle import Placed, Removed, Reordered, Restored, Subscriber, Updated
from shmooze.system import private, storage

if TYPE_CHECKING:
    from shmooze.settings import Settings

log = logging.getLogger(__name__)

FORMAT = 2
SUFFIX = ".journal"
RS = b"\x1e"  # starts every record; json.dumps escapes it inside strings (ensure_ascii)
#: ``durability``: answered once synced to the disk, or once written to the kernel.
FSYNC, WRITE = "fsync", "write"
DURABILITY = (FSYNC, WRITE)

Entry = dict[str, Any]  # {"uid", "type", "args", "kind": "module"|"background", "parameters", "key"?, "time"}


# -- where journals live ----------------------------------------------------------------

def journal_dir(settings: Settings) -> str | None:
    """The folder of the services' journals, or None when journals are off.

    ``journal_path`` when set; else the folder of ``log_database_path``; else ``run_path``;
    else a folder under ``$XDG_STATE_HOME`` (``~/.local/state``) named after the settings
    file: never under /tmp unless the settings say so. ``"journal": false`` turns it off.
    """
    if not settings.journal:
        return None
    if settings.journal_path:
        return settings.journal_path
    if settings.log_database_path:
        return os.path.dirname(os.path.abspath(settings.log_database_path))
    if settings.run_path:
        return settings.run_path
    path = settings.path
    if not path or path.startswith("<"):
        return None  # settings made in code, with no file to name a folder after
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:12]
    return os.path.join(state, "shmooze", digest)


def journal_file(settings: Settings, service: str) -> str | None:
    """The journal of one service, or None when journals are off."""
    folder = journal_dir(settings)
    return None if folder is None else os.path.join(folder, service + SUFFIX)


def clear(settings: Settings) -> list[str]:
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
        #: Command-log rows carried by the journal (``log`` records), in order: see :meth:`Journal.log`.
        self.log_rows: list[list[Any]] = []

    def apply(self, record: dict[str, Any]) -> None:
        op = record["op"]
        if op == "snapshot":  # the head of a file (format 1 held the entries; format 2 adds them after it)
            self.entries = {e["uid"]: dict(e) for e in record.get("entries", [])}
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
        elif op == "log":  # no module state: a command-log row kept here until its log has it
            self.log_rows.append(list(record["row"]))
        else:
            raise ValueError(f"unknown record {op!r}")

    def snapshot(self) -> list[dict[str, Any]]:
        """The records of a new file: its head, then one ``add`` per module."""
        head = {"op": "snapshot", "format": FORMAT, "time": time.time(), "count": len(self.entries)}
        return [head] + [{"op": "add", "entry": e} for e in self.entries.values()]


def frame(n: int, record: dict[str, Any]) -> bytes:
    """One record as it is written: ``RS CRC32 SP JSON LF``."""
    body = json.dumps({"n": n, **record}, separators=(",", ":")).encode()
    return b"%s%08x %s\n" % (RS, zlib.crc32(body), body)


def _parse(line: bytes) -> dict[str, Any] | None:
    """A framed record's JSON (without RS and LF), or None when damaged."""
    crc, _, body = line.partition(b" ")
    try:
        if len(crc) != 8 or int(crc, 16) != zlib.crc32(body):
            return None
        record = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("n"), int) else None


def read(path: str) -> tuple[list[Entry], str | None]:
    """Replay a journal: the entries in order, and what was wrong with the file (None when nothing)."""
    state, problem = read_state(path)
    return list(state.entries.values()), problem


def read_state(path: str) -> tuple[_State, str | None]:
    """Replay a journal: its modules and command-log rows, and what was wrong with the file (None when nothing)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return _State(), None
    except OSError as exc:
        return _State(), f"cannot read it ({exc.strerror or exc}): starting empty"
    if data.startswith(b"{"):
        return _read_lines(data)
    return _read_records(data.rstrip(b"\0"))  # (the zeroed space kept ahead of the writes: see RESERVE)


def _read_records(data: bytes) -> tuple[_State, str | None]:
    state = _State()
    missing: list[int] = []  # numbers of records lost between good ones
    damaged: list[tuple[int, int]] = []  # (offset, length) of bytes that are no record
    tail = 0  # damaged pieces after the last good record: the records torn at the end
    expected, count, good, offset = 0, None, 0, 0
    for piece in data.split(RS):
        at, offset = offset, offset + len(piece) + 1
        if not piece and at == 0:
            continue  # before the first RS
        line, lf, rest = piece.partition(b"\n")
        record = _parse(line) if lf else None
        if record is not None and record["n"] >= expected:
            try:
                state.apply(record)
            except (ValueError, KeyError, TypeError, AttributeError):
                record = None
        if record is None:
            damaged.append((at - 1, len(piece) + 1) if at else (0, len(piece)))  # (from its RS)
            tail += 1
            continue
        missing.extend(range(expected, record["n"]))
        expected, tail, good = record["n"] + 1, 0, good + 1
        if record["op"] == "snapshot":
            count = record.get("count")
        if rest:  # bytes after a record's LF, before the next RS: a record whose RS was overwritten
            damaged.append((at + len(line) + 1, len(rest)))
            tail += 1
    if not damaged and not missing:
        return state, None
    return state, _loss(missing, count, tail, damaged, good)


def _loss(missing: list[int], count: int | None, tail: int, damaged: list[tuple[int, int]], good: int) -> str:
    """Exactly what a damaged journal lost, for the log and ``status``."""
    def what(n: int) -> str:
        if n == 0:
            return "record 1, the head (it held no module)"
        if count is None:
            return f"record {n + 1} (a module of the snapshot or a change)"
        return f"record {n + 1} (module {n} of the snapshot)" if n <= count else f"record {n + 1} (a change)"

    size = sum(length for _, length in damaged)
    where = f"{size} damaged byte(s) from offset {damaged[0][0]}" if damaged else "no damaged byte"
    parts = [what(n) for n in missing[:20]] + ([f"{len(missing) - 20} more"] if len(missing) > 20 else [])
    if not good:
        return f"no readable record ({size} bytes): starting empty"
    if not missing and tail:
        return f"the last record was torn ({size} bytes): that change is lost; the {good} before it were replayed"
    if tail:
        parts.append(f"the last {tail} record(s), torn")
    lost = len(missing) + tail
    return (f"{lost} record(s) lost: {', '.join(parts)} ({where}); the other {good} record(s) were replayed, "
            "the records after the damage included")


def _read_lines(data: bytes) -> tuple[_State, str | None]:
    """A journal of format 1: a snapshot line, then one JSON line per change."""
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
    return state, problem


# -- writing ----------------------------------------------------------------------------

_SYNC = object()  # queued by flush(): write and fsync everything now (parameters included)
#: Zeroed bytes kept written ahead of the last record. A record is written over them, so its sync
#: (fdatasync) flushes data only: the file's size and blocks do not change, which spares the
#: filesystem's metadata commit (on ext4, 0.07 ms against 2-6 ms a sync on a shared machine).
#: A reader ignores the zeros at the end.
RESERVE = 64 * 1024
#: How soon the writer's thread writes what no command waits for (it looks that often, woken by nobody).
LINGER = 0.05


class Records:
    """What a service records in a journal, on a file or in etcd: each change queued for the journal's
    writer (``_writer``, a :class:`BatchWriter`), never blocking on the storage; parameters kept as the
    latest getter per uid (``_dirty``), collected by the writer."""

    _writer: BatchWriter
    _dirty: dict[str, Callable[[], dict[str, Any]]]

    def added(self, uid: str, type: str, args: dict[str, Any], kind: str = "module", key: str | None = None,
              parameters: Callable[[], dict[str, Any]] | None = None) -> None:
        """A module was placed (``kind`` ``background`` replaces the background)."""
        entry: Entry = {"uid": uid, "type": type, "args": args, "kind": kind, "parameters": {}, "time": time.time()}
        if key is not None:
            entry["key"] = key
        self._writer.put(("add", entry, parameters))

    def removed(self, uids: list[str]) -> None:
        if uids:
            self._writer.put(("rm", list(uids)))

    def ordered(self, uids: list[str]) -> None:
        """The queue's modules are now in this order."""
        self._writer.put(("order", list(uids)))

    def parameters(self, uid: str, current: Callable[[], dict[str, Any]]) -> None:
        """A module's parameters changed; ``current()`` gives them all (called later, by the writer)."""
        if not self.closed:
            self._dirty[uid] = current

    @property
    def closed(self) -> bool:
        return self._writer.closed

    @property
    def tickets(self) -> int:
        """Changes recorded so far: pass it to :meth:`sync` as ``since`` before making a change."""
        return self._writer.tickets

    def sync(self, since: int = 0, timeout: float = 30.0) -> str | None:
        """Block until every change recorded so far is kept (group commit: one write and one sync serve
        every change that gathered meanwhile). None when those recorded after ``since`` are; else why
        not (the write failed, the journal is closed, ``timeout`` passed)."""
        return self._writer.wait(since, timeout)


class Journal(Records):
    """The journal of one service: read on creation, then appended by the commands that wait for it
    (or its writer's thread: what nobody waits for).

    ``durability``: ``fsync`` (a change is kept once synced to the disk) or ``write`` (once written
    to the kernel; synced within ``fsync_interval``). See :meth:`sync`."""

    def __init__(self, path: str, service: str, *, params_interval: float = 0.5, durability: str = FSYNC,
                 compact_min: int = 1000, fsync_interval: float = 0.05, health: storage.Health | None = None):
        if durability not in DURABILITY:
            raise ValueError(f"durability must be one of {', '.join(DURABILITY)}, not {durability!r}")
        self.path = path
        self.service = service
        self.health = health if health is not None else storage.Health()
        self.health.watch("journal")
        self.params_interval = params_interval
        self.durability = durability
        self.compact_min = compact_min
        self.fsync_interval = fsync_interval
        self._unsynced = False
        self._rewrite_due = False  # a write failed: the file is rewritten whole from the state
        self._behind = 0  # changes in the state but not on disk (while _rewrite_due)
        self._retry_at = 0.0
        state, problem = read_state(path)
        entries = list(state.entries.values())
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
        #: The command-log rows the file held (see :meth:`log`): handed to the command log, which adds
        #: those it does not have (numbered from 1: see :meth:`log_kept`).
        self.recovered_log: list[list[Any]] = state.log_rows
        self._state = _State()
        self._state.entries = {e["uid"]: e for e in entries}
        self._logged: Callable[[list[tuple[int, list[Any]]]], None] | None = None  # see carry_log
        self._log_kept = 0  # the rows up to this number are in the command log: a rewrite leaves them out
        # The rows not known to be in the command log yet, by number (those recovered kept until it says so).
        self._log_rows: collections.OrderedDict[int, list[Any]] = collections.OrderedDict(
            enumerate(state.log_rows, 1))
        self._log_seq = len(state.log_rows)  # the number of the last command-log row recorded
        self._file: Any = None
        self._n = 0  # the number of the next record in the file
        self._end = 0  # where the next record is written (the zeroed space follows it: RESERVE)
        self._size = 0  # the file's size: written zeros from _end on
        try:
            private.private_state(path)  # its folder 0700 when made here; an old file that others could read, 0600
            self._rewrite()
        except OSError as exc:  # (a full disk) the state is in memory: the writer tries again
            self._failed(exc, len(entries))
        # Parameter changes: the latest getter per uid, set without a lock or a wake-up (a dict store is
        # atomic), collected by the writer at most every params_interval.
        self._dirty: dict[str, Callable[[], dict[str, Any]]] = {}
        # ... and those of modules whose ``add`` has not reached the writer yet (kept a few seconds).
        self._unplaced: dict[str, tuple[Callable[[], dict[str, Any]], float]] = {}
        self._params_due = 0.0
        self.writes = 0
        self.syncs = 0
        self.compactions = 0
        # (write) Synced within fsync_interval, on a thread of its own: writes never wait for the disk.
        # (fsync) Also what syncs the batches that hold only rows of commands that change nothing kept (log()).
        self._syncer = Syncer(f"{service}-journal-sync", path, fsync_interval)
        # A command writes its changes and rows itself, in one batch (no hand-over to another thread); the
        # changes that arrive while a write (and its sync) run make the next batch. An rm's record is written
        # by the thread at once (removed()), beside the modules' stop: its answer finds the sync done.
        # A change that nobody waits for (a module leaving on its own) is written within LINGER.
        self._writer = BatchWriter(f"{service}-journal", self._write_batch, timeout=self._idle_time, linger=LINGER,
                                   wake=False)

    # -- what the service records beyond Records (never blocks on the disk) --------------------

    def removed(self, uids: list[str]) -> None:
        if uids:
            self._writer.put(("rm", list(uids)))
            # Written and synced now, on the thread, while the modules stop (milliseconds): an rm's command
            # row was recorded before its removal, so the two share this write and sync.
            self._writer.start_writing()

    def carry_log(self, logged: Callable[[list[tuple[int, list[Any]]]], None]) -> None:
        """Carry a command log's rows (:meth:`log`): ``logged`` gets each batch written, numbered, and
        the command log says with :meth:`log_kept` which it has committed."""
        self._logged = logged

    def log(self, row: list[Any], synced: bool = True) -> int:
        """A command-log row (JSON values only), kept with the changes (in the same write and sync) until
        the command log has it: its ticket for :meth:`sync`. Not ``synced``: the row of a command that
        changes nothing the journal keeps (``tell_module``), kept as that command's effects are: written
        before :meth:`sync` returns, synced within ``fsync_interval`` (with the next sync at the latest)."""
        return self._writer.put(("log", row, synced))

    def log_kept(self, seq: int) -> None:
        """The command log has committed its rows up to number ``seq``: a rewrite leaves them out."""
        self._log_kept = max(self._log_kept, seq)

    # -- writing (the write lock held) ----------------------------------------------------------------

    def _idle_time(self) -> float:
        """How long the writer may wait for a change before parameters or a rewrite are due."""
        timeout = self.params_interval
        if self._dirty or self._unplaced:
            timeout = max(0.0, self._params_due - time.monotonic())
        if self._rewrite_due:  # try again with backoff until the disk takes it
            timeout = min(timeout, max(0.0, self._retry_at - time.monotonic()))
        return timeout

    def _write_batch(self, items: list[Any], last: bool) -> None:
        changes = [i for i in items if i is not _SYNC]
        now = last or len(changes) < len(items)  # write and fsync everything now
        try:
            if self._rewrite_due and not (now or changes or time.monotonic() >= self._retry_at):
                return  # (parameters wait in _dirty: written with the state at the next try)
            self._write(changes, flush_params=now or time.monotonic() >= self._params_due)
            lazy = self.durability == WRITE or all(i[0] == "log" and not i[2] for i in changes)
            if self._unsynced and lazy and not now:
                self._syncer.written()
            elif self._unsynced:
                _datasync(self._file.fileno())  # one for every change of the batch: their commands wait
                self.syncs += 1
            self._unsynced = False
        except OSError as exc:  # the state holds the changes: the whole of it is written at the next try
            self._failed(exc, len(changes))
            if last and self._behind:
                self.health.lose("journal", self._behind)
                log.error("%s journal %s: %d change(s) could not be written and are lost: the service stopped "
                          "first; a restart restores the state written before", self.service, self.path, self._behind)
            raise WriteFailed(f"the journal {self.path} cannot be written ({storage.describe(exc)}); the service "
                              "holds the change and writes it once there is space") from None
        finally:
            if last and self._file is not None:
                if not self._rewrite_due:  # the zeroed space is for writes to come: none will
                    with contextlib.suppress(OSError):
                        os.ftruncate(self._file.fileno(), self._end)
                        os.fsync(self._file.fileno())
                self._file.close()
                self._file = None

    def _failed(self, exc: OSError, changes: int) -> None:
        """A write failed: the state holds ``changes`` more changes than the disk; try again later."""
        self._rewrite_due = True
        self._behind += changes
        self._retry_at = time.monotonic() + self.health.failed("journal", self.path, exc, self._behind)

    def _write(self, items: list[Any], flush_params: bool) -> None:
        records = []
        logged: list[tuple[int, list[Any]]] = []  # command-log rows, numbered
        for item in items:
            op = item[0]
            if op == "add":
                entry = item[1]
                if item[2] is not None:
                    entry["parameters"] = item[2]()
                record = {"op": "add", "entry": entry}
            elif op == "rm":
                record = {"op": "rm", "uids": item[1]}
                for uid in item[1]:  # its parameters' getter holds the whole module (process, buffers): let go
                    self._dirty.pop(uid, None)
                    self._unplaced.pop(uid, None)
            elif op == "log":
                self._log_seq += 1
                self._log_rows[self._log_seq] = item[1]
                logged.append((self._log_seq, item[1]))
                records.append({"op": "log", "row": item[1]})
                continue
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
        if logged and self._logged is not None:  # to the command log's own writer (it retries what fails)
            self._logged(logged)
        if self._rewrite_due:  # a write failed: the state, these changes and those of failed writes included
            private.private_state(self.path)  # (its folder, when a full disk kept it from being made at start)
            self._rewrite()
            self._rewrite_due = False
            self.health.written("journal", self._behind + len(items))
            self._behind = 0
            return
        if not records:
            return
        self._forget_kept_rows()
        if self._n + len(records) > max(self.compact_min, 4 * (len(self._state.entries) + len(self._log_rows))):
            self._rewrite()
            self.compactions += 1
            return
        data = b"".join(frame(self._n + i, r) for i, r in enumerate(records))
        fd = self._file.fileno()
        if self._end + len(data) > self._size:  # more zeroed space first, synced: later syncs flush data only
            more = RESERVE + len(data)
            _write_all(fd, bytes(more), self._size)
            os.fsync(fd)
            self._size += more
        _write_all(fd, data, self._end)  # in the kernel now: a crash of this process loses nothing
        self._end += len(data)
        self._unsynced = True
        self._n += len(records)
        self.writes += 1

    def _forget_kept_rows(self) -> None:
        """Drop the command-log rows the log has (:meth:`log_kept`): a rewrite leaves them out."""
        while self._log_rows and next(iter(self._log_rows)) <= self._log_kept:
            self._log_rows.popitem(last=False)

    def _rewrite(self) -> None:
        """Replace the file with one snapshot of the state (a new file, synced, renamed over the old one)."""
        old, self._file = self._file, None
        if old is not None:
            with contextlib.suppress(OSError):
                old.close()  # (unbuffered: nothing held back to lose)
        tmp = f"{self.path}.tmp-{os.getpid()}"
        self._forget_kept_rows()
        records = self._state.snapshot() + [{"op": "log", "row": row} for row in self._log_rows.values()]
        data = b"".join(frame(n, r) for n, r in enumerate(records))
        try:
            with _open_private(tmp, os.O_TRUNC) as f:
                f.write(data + bytes(RESERVE))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        self._file = _open_private(self.path, 0)  # unbuffered: a failed write keeps nothing back
        self._n = len(records)
        self._end, self._size = len(data), len(data) + RESERVE
        self._unsynced = False

    # -- control --------------------------------------------------------------------------

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every change recorded so far is written and synced (parameters included); False when
        that took longer than ``timeout`` or the disk did not take it (see :attr:`health`)."""
        self._writer.put(_SYNC)
        return self._writer.flush(timeout) and not self._rewrite_due

    def close(self) -> None:
        """Write what is pending and stop recording: later changes (the service stopping) are not kept."""
        self._writer.close()
        self._syncer.close()

    def status(self) -> dict[str, Any]:
        return {"path": self.path, "modules": len(self._state.entries), "pending": self._writer.pending,
                "writes": self.writes, "syncs": self.syncs + self._syncer.syncs,
                "compactions": self.compactions, "recovered": len(self.recovered), "problem": self.problem,
                "durability": self.durability, "unwritten": self._behind, "log_kept": self._log_kept}


_datasync = getattr(os, "fdatasync", os.fsync)  # the data and the size, not the times


class JournalRecorder(Subscriber):
    """A host's modules' lifecycle, into its journal (``journal()``: the host's, None when it keeps none).

    It hears places, removals and orders with the host's table lock held, so the journal's order is
    the table's; what it records never blocks on the disk (the host's answer waits for the sync)."""

    def __init__(self, journal: Callable[[], Journal | None]):
        self.journal = journal

    def placed(self, event: Placed) -> None:
        journal = self.journal()
        if journal is None:
            return
        journal.removed([m.uid for m in event.displaced])
        if not event.restarted:  # (a restarted module is in the journal still, under its uid)
            module = event.module
            journal.added(module.uid, module.type.name, event.args, event.kind, event.key, module.get_parameters)

    def removed(self, event: Removed) -> None:
        journal = self.journal()
        if journal is not None:
            journal.removed([m.uid for m in event.modules])

    def reordered(self, event: Reordered) -> None:
        journal = self.journal()
        if journal is not None:
            journal.ordered(event.order)

    def restored(self, event: Restored) -> None:
        journal = self.journal()
        if journal is not None:
            journal.removed(event.dropped)

    def updated(self, event: Updated) -> None:
        journal = self.journal()
        if journal is not None and event.cmd != "rm":  # (a module leaving is removed by the host)
            journal.parameters(event.module.uid, event.module.get_parameters)


def _write_all(fd: int, data: bytes, offset: int) -> None:
    """``pwrite(2)`` until all of ``data`` is written at ``offset`` (a write may take part of it)."""
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


def _open_private(path: str, flags: int) -> Any:
    """An unbuffered binary file for writing, 0600 when made, never through a link."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | flags, 0o600)
    return os.fdopen(fd, "wb", buffering=0)  # (the mode truncates nothing: os.open did what flags say)


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
