"""The command log: every state-changing command and module update, in SQLite.

A service that keeps a journal keeps its rows there first (:meth:`CommandLog.keep_in`): a row is
written, and synced, in the same write and sync as the change it records (one write and one sync
per command, the cheapest the promise allows: :mod:`shmooze.hosting.journal`), and a command is
answered once that is done. The log's writer thread then inserts the rows into SQLite in batches
(every 50 ms, woken by nobody: no wake-up per command), off the commands' path, without syncing;
a thread syncs the log's write-ahead log and then tells the journal up to which row the log has
them on the disk, and the journal's next rewrite leaves those out. A journal read at start hands
back the rows it still holds; those the log does not have (a crash between the answer and the
insert or its sync) are inserted then, once. So a row is readable in SQLite within about 50 ms of
its command's answer (:meth:`CommandLog.history` and :meth:`CommandLog.count` wait for it).

Without a journal, :meth:`CommandLog.record` puts the row on an in-memory queue and returns; a service answers a
command once :meth:`CommandLog.sync` says its rows are committed: the waiting command inserts every
row queued in one transaction (group commit: the rows of the commands that arrived meanwhile share
it; :class:`shmooze.hosting.batchwriter.BatchWriter`), a writer thread what nobody waits for. ``durability`` ``fsync``
(the default) commits with SQLite's ``synchronous=FULL`` (synced to the disk); ``write`` with
``NORMAL`` (written to the kernel: a crash of the service loses nothing) and syncs the write-ahead
log at most every ``sync_interval`` (50 ms: what a power cut can lose). A row that cannot be
committed fails its command's answer and is kept for the next try (see below); a row lost is named
in the log (what, when, which module). Applications read history with
:meth:`CommandLog.history`.

The log stays small: the writer deletes rows older than ``max_age`` seconds and,
when the rows take more than ``max_bytes``, the oldest ones, checking after every
``prune_every`` rows and at least once a minute.

A write that fails (a full disk, a log that cannot be opened at start) keeps its rows in memory,
up to ``max_pending``, and the writer tries again with backoff; beyond that the oldest are dropped,
counted and named in the log. Both are reported to the service's :class:`shmooze.system.storage.Health`,
which logs one line when the failures start and one when writing works again.

Services record client commands and modules leaving; modules' parameter updates only when asked
(:class:`CommandRecorder`, which hears a host's lifecycle events).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from typing import Any, Callable, NoReturn

from shmooze.caller import UNKNOWN, current
from shmooze.errors import CommandError
from shmooze.hosting.batchwriter import BatchWriter, Syncer, WriteFailed
from shmooze.hosting.journal import Journal
from shmooze.hosting.lifecycle import Placed, Subscriber, Updated
from shmooze.system import private, storage

log = logging.getLogger(__name__)

#: Commands that change nothing a service keeps (a module's answer is the module's): their rows are
#: written before the answer and synced within the sync interval, not before (:meth:`Journal.log`).
UNKEPT_COMMANDS = frozenset({"tell_module", "tell_background"})

SCHEMA = """
CREATE TABLE IF NOT EXISTS log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,          -- seconds since the epoch
    service TEXT NOT NULL,       -- which service wrote it
    namespace TEXT NOT NULL,     -- which stream: client-queue, module-update, ...
    uid TEXT,                    -- the module concerned, when there is one
    type TEXT,                   -- its module type
    cmd TEXT NOT NULL,
    input TEXT NOT NULL,         -- the command as JSON
    output TEXT,                 -- its result as JSON
    caller TEXT                  -- who sent it (shmooze.caller); NULL: a module's own update, or a row from before
);
CREATE INDEX IF NOT EXISTS log_cmd_time ON log (cmd, time);
CREATE INDEX IF NOT EXISTS log_uid ON log (uid);
CREATE INDEX IF NOT EXISTS log_time ON log (time);
"""
INSERT = ("INSERT INTO log (time, service, namespace, uid, type, cmd, input, output, caller) "
          "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
#: Columns added since the first schema, each with its definition: a log made before gets them at open
#: (its old rows hold NULL there).
ADDED_COLUMNS = {"caller": "TEXT"}


def migrate(db: sqlite3.Connection) -> None:
    """Bring a log made by an earlier version up to :data:`SCHEMA` (columns added, nothing rewritten)."""
    have = {row[1] for row in db.execute("PRAGMA table_info(log)")}
    for name, definition in ADDED_COLUMNS.items():
        if name not in have:
            db.execute(f"ALTER TABLE log ADD COLUMN {name} {definition}")
            log.info("command log: added the column %r to an older log", name)


class CommandLog:
    """An append-only SQLite log, written by a background thread, pruned by age and size."""

    def __init__(self, path: str, service: str, max_age: float = 7 * 86400, max_bytes: int = 100_000_000,
                 prune_every: int = 10_000, durability: str = "fsync", sync_interval: float = 0.05,
                 health: storage.Health | None = None, max_pending: int = 100_000):
        self.path = path
        self.service = service
        self.synchronous = "FULL" if durability == "fsync" else "NORMAL"
        self._synchronous = self.synchronous  # the writer's connection's
        # (NORMAL) The write-ahead log synced within sync_interval, on a thread of its own (SQLite has no call
        # for that short of a checkpoint; a sync of the file is one), so commits never wait for the disk.
        self._syncer_interval = sync_interval
        self._syncer = Syncer(f"{service}-cmdlog-sync", path + "-wal", sync_interval) \
            if self.synchronous == "NORMAL" else None
        self.health = health if health is not None else storage.Health()
        self.health.watch("command log")
        self.max_age, self.max_bytes, self.prune_every = max_age, max_bytes, prune_every  # see prune()
        self.max_pending = max_pending
        self.pruned = 0
        self.dropped = 0
        self._db: sqlite3.Connection | None = None  # the writer's connection (used on its thread only)
        self._unwritten: list[Any] = []  # rows whose write failed, written at the next try
        self._retry_at = 0.0
        self._last_error = ""
        try:
            self._open()
        except (sqlite3.Error, OSError) as exc:  # (a full disk) the writer opens it once it can
            self._failed(exc, [])
        self._since_prune = 0
        self._next_prune = 0.0
        self.journal: Journal | None = None  # where rows are kept before they are inserted: keep_in
        # Items: rows, or (number in the journal, row) for those it keeps (see _insert).
        self._writer = BatchWriter(f"{service}-cmdlog", self._insert, timeout=self._idle_time, max_batch=5000)

    def _open(self) -> None:
        private.private_state(self.path, ("-wal", "-shm"))  # folder 0700 when made here; old files 0600
        db = self._connect(auto_vacuum=True)
        try:
            db.executescript(SCHEMA)
            migrate(db)
        except sqlite3.Error:
            db.close()
            raise
        self._db = db

    def _idle_time(self) -> float:
        due = self._retry_at if self._unwritten or self._db is None else self._next_prune
        return max(0.01, due - time.monotonic())

    def _failed(self, exc: BaseException, rows: list[Any]) -> None:
        """Writing ``rows`` failed: keep them (the newest ``max_pending``) for the next try."""
        self._unwritten.extend(rows)
        self._last_error = storage.describe(exc)
        lost = max(0, len(self._unwritten) - self.max_pending)
        if lost:
            self._lose(self._unwritten[:lost], f"more than {self.max_pending} rows waiting")
            del self._unwritten[:lost]
        self._retry_at = time.monotonic() + self.health.failed("command log", self.path, exc,
                                                               len(self._unwritten), lost)

    def _lose(self, rows: list[Any], why: str) -> None:
        """Rows that will never be written: counted, and named in the log."""
        if not rows:
            return
        self.dropped += len(rows)
        named = "; ".join(f"{time.strftime('%H:%M:%S', time.localtime(r[0]))} {r[2]} {r[5]} {r[3] or ''}"
                          for r in rows[:20]) + (f"; and {len(rows) - 20} more" if len(rows) > 20 else "")
        log.error("command log %s: %d row(s) lost (%s): %s", self.path, len(rows), why, named)

    def _connect(self, auto_vacuum: bool = False) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        if auto_vacuum:  # takes effect on a new file only (before WAL): then pruning shrinks the file
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        return db

    def record(self, namespace: str, uid: str | None, command: dict[str, Any], result: Any,
               type: str | None = None, caller: str | None = None, synced: bool = True) -> None:
        """Queue one row (``caller``: who sent the command, :mod:`shmooze.caller`); never blocks on the disk.
        Not ``synced``: the row of a command that changes nothing the service keeps (see :meth:`Journal.log`)."""
        try:
            row = (time.time(), self.service, namespace, uid, type, str(command.get("cmd", "")),
                   json.dumps(command, separators=(",", ":")), json.dumps(result, separators=(",", ":")), caller)
        except (TypeError, ValueError):
            self.dropped += 1
            return
        journal = self.journal
        if journal is not None and not journal.closed:
            journal.log(list(row), synced)  # (back to _carried once the journal has written it)
        else:  # (no journal, or the service stopping: its modules' last rows)
            self._writer.put(row)

    def keep_in(self, journal: Journal) -> None:
        """Keep rows in ``journal`` before they are inserted (see the module's docstring); first insert
        the rows it recovered that the log does not have."""
        journal.carry_log(self._carried)
        self.journal = journal
        # The journal keeps the rows until the log's are on the disk: its commits need not sync (NORMAL,
        # set by the writer), a thread syncs its write-ahead log and then tells the journal (_insert).
        if self._syncer is None:
            self._syncer = Syncer(f"{self.service}-cmdlog-sync", self.path + "-wal", self._syncer_interval)
        self._syncer.on_synced = journal.log_kept
        self._writer.pace(0.05, wake=False)  # nobody waits: one batch every 50 ms, no wake-ups
        self.synchronous = "NORMAL"
        if journal.recovered_log:
            rows = [tuple(r) for r in journal.recovered_log]
            try:
                have = self._have(rows)
            except (sqlite3.Error, OSError) as exc:  # (inserted all the same: a row twice beats a row lost)
                log.warning("command log %s: cannot check the journal's rows against it: %s", self.path, exc)
                have = set()
            missing = 0
            for n, row in enumerate(rows, 1):
                new = (row[0], row[5], row[6]) not in have
                missing += new
                self._writer.put((n, row if new else None))  # (None: the log has it; the journal may forget it)
            if missing:
                log.info("command log %s: %d row(s) kept in the journal were not in it (the service stopped "
                         "before they were inserted): inserting them", self.path, missing)
            self._writer.flush(30)

    def _carried(self, rows: list[tuple[int, list[Any]]]) -> None:
        """Rows the journal has written (numbered): insert them (nobody waits for that)."""
        for n, row in rows:
            self._writer.put((n, tuple(row)))

    def _have(self, rows: list[tuple[Any, ...]]) -> set[tuple[Any, ...]]:
        """Which of ``rows`` (this service's) the log holds, as (time, cmd, input)."""
        db = self._connect()
        try:
            found = db.execute("SELECT time, cmd, input FROM log WHERE service = ? AND time >= ?",
                               (self.service, min(r[0] for r in rows))).fetchall()
        finally:
            db.close()
        return {tuple(r) for r in found}

    @property
    def tickets(self) -> int:
        """Rows recorded so far: pass it to :meth:`sync` as ``since`` before recording."""
        return self.journal.tickets if self.journal is not None else self._writer.tickets

    def start_writing(self) -> None:
        """Commit what is recorded on the writer's thread now (see :meth:`sync`): beside another sync."""
        if self.journal is None:  # (kept in a journal: its sync is theirs)
            self._writer.start_writing()

    def sync(self, since: int = 0, timeout: float = 30.0) -> str | None:
        """Block until every row recorded so far is kept: in the journal (:meth:`keep_in`), else committed;
        None when those after ``since`` are, else why not (such rows are kept in memory and written at the
        next try; rows lost are named in the log)."""
        if self.journal is not None:
            return self.journal.sync(since, timeout)
        return self._writer.wait(since, timeout)

    def prune(self, db: sqlite3.Connection) -> int:
        """Delete rows past the age limit, then the oldest rows while the rest take more than ``max_bytes``."""
        deleted = db.execute("DELETE FROM log WHERE time < ?", (time.time() - self.max_age,)).rowcount
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        used = (db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0])
        used *= page_size
        if used > self.max_bytes:
            rows = db.execute("SELECT COUNT(*) FROM log").fetchone()[0]
            drop = max(1, int(rows * (1 - 0.8 * self.max_bytes / used)))  # down to 80 %: room before the next
            deleted += db.execute("DELETE FROM log WHERE id IN (SELECT id FROM log ORDER BY id LIMIT ?)",
                                  (drop,)).rowcount
        if deleted:
            db.executescript("PRAGMA incremental_vacuum;")  # (execute() would free one page only)
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the file shrinks at the checkpoint
            self.pruned += deleted
            log.info("command log %s: pruned %d old row(s)", self.path, deleted)
        return deleted

    def _insert(self, items: list[Any], last: bool) -> None:
        """Insert a batch (:meth:`_write`), then tell the journal up to which of its rows the log has
        them: committed, or lost for good (named in the log)."""
        carried = [n for n, _ in (i for i in items if isinstance(i[0], int))]
        rows = [i[1] if isinstance(i[0], int) else i for i in items]
        if self._db is not None and self.journal is not None and self._synchronous != self.synchronous:
            self._db.execute(f"PRAGMA synchronous={self.synchronous}")  # (kept in the journal: keep_in)
            self._synchronous = self.synchronous
        try:
            self._write([r for r in rows if r is not None], last)
        finally:
            if carried and self._syncer is not None and (not self._unwritten or last):
                self._syncer.written(max(carried))  # once synced, the journal may forget them

    def _write(self, rows: list[Any], last: bool) -> None:
        """Under the write lock (a waiting command or the writer's thread): prune when due, insert ``rows`` in
        one transaction. Rows that cannot be committed are kept for the next try, and the batch is failed
        (:class:`WriteFailed`)."""
        failing = bool(self._unwritten) or self._db is None
        if failing:  # try again when due (or when closing)
            if time.monotonic() < self._retry_at and not last:
                self._unwritten.extend(rows)
                self.health.waiting("command log", len(self._unwritten))
                if rows:
                    raise WriteFailed(f"the command log {self.path} cannot be written ({self._last_error}); its "
                                      "rows are kept in memory and written once it can be")
                return
            rows, self._unwritten = self._unwritten + rows, []
            try:
                if self._db is None:
                    self._open()
            except (sqlite3.Error, OSError) as exc:
                self._failed(exc, rows)
                self._failed_batch(exc, last)
        assert self._db is not None  # opened above
        if self._since_prune >= self.prune_every or time.monotonic() >= self._next_prune:
            try:
                self.prune(self._db)
            except sqlite3.Error as exc:
                if not storage.is_full(exc):  # (a full disk: the insert below says so)
                    log.exception("command log %s: pruning failed", self.path)
            self._since_prune, self._next_prune = 0, time.monotonic() + 60
        if rows:
            try:
                if len(rows) == 1:  # its own transaction: one call (a command waits for it), not three
                    self._db.execute(INSERT, rows[0])
                else:
                    self._db.execute("BEGIN")
                    self._db.executemany(INSERT, rows)
                    self._db.execute("COMMIT")
            except sqlite3.Error as exc:  # (a full disk) kept for the next try
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                self._failed(exc, rows)
                self._failed_batch(exc, last)
            self.health.written("command log", len(rows))
            self._since_prune += len(rows)
            if self._syncer is not None:
                self._syncer.written()
        elif failing:  # opened at last, with nothing to write
            self.health.written("command log")
        if last:
            self._db.close()

    def _failed_batch(self, exc: BaseException, last: bool) -> NoReturn:
        """End a batch whose rows are kept for the next try (lost, when the service is stopping)."""
        if last:
            if self._db is not None:
                self._db.close()
            self.health.lose("command log", len(self._unwritten))
            self._lose(self._unwritten, f"{self.service} stopped before its command log could be written")
            self._unwritten = []
        raise WriteFailed(f"the command log {self.path} cannot be written ({storage.describe(exc)}); its rows "
                          "are kept in memory and written once it can be") from None

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything recorded so far is committed (False when it could not be)."""
        if self.journal is not None and self.journal.sync(timeout=timeout) is not None:
            return False
        return self._writer.flush(timeout) and not self._unwritten and self._db is not None

    def close(self) -> None:
        self._writer.close()
        if self._syncer is not None:
            self._syncer.close()

    def history(self, limit: int = 20, type: str | None = None, cmd: str = "add") -> list[dict[str, Any]]:
        """Newest first: the ``cmd`` rows of this service (``add`` by default), optionally of one type.
        ``caller``: who sent it (``unknown`` for a row written before callers were recorded)."""
        self.flush()
        sql = "SELECT time, uid, type, input, output, caller FROM log WHERE service = ? AND cmd = ?"
        params: list[Any] = [self.service, cmd]
        if type is not None:
            sql += " AND type = ?"
            params.append(type)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(max(0, int(limit)))
        db = self._connect()
        try:
            rows = db.execute(sql, params).fetchall()
        finally:
            db.close()
        return [{"time": t, "uid": uid, "type": ty, "command": json.loads(inp), "result": json.loads(out),
                 "caller": who or UNKNOWN} for t, uid, ty, inp, out, who in rows]

    def logged_uids(self, uids: list[str], cmds: tuple[str, ...] = ("add", "set_bg")) -> set[str]:
        """Which of ``uids`` have a ``cmds`` row of this service (committed ones)."""
        found: set[str] = set()
        db = self._connect()
        try:
            for at in range(0, len(uids), 500):
                chunk = uids[at:at + 500]
                sql = (f"SELECT DISTINCT uid FROM log WHERE service = ? AND cmd IN ({','.join('?' * len(cmds))}) "
                       f"AND uid IN ({','.join('?' * len(chunk))})")
                found.update(uid for (uid,) in db.execute(sql, [self.service, *cmds, *chunk]))
        finally:
            db.close()
        return found

    def count(self) -> int:
        self.flush()
        db = self._connect()
        try:
            return db.execute("SELECT COUNT(*) FROM log").fetchone()[0]
        finally:
            db.close()


class CommandRecorder(Subscriber):
    """A host's rows in its command log: the client commands it runs (:meth:`command`), the modules
    they placed (``add``, ``set_bg``: on :class:`~shmooze.hosting.lifecycle.Placed`) and module updates
    (modules leaving; parameter updates when ``log_module_updates`` or the type's ``log_updates``).

    Its getters give the service's name, command log (None: it keeps none) and ``log_module_updates``,
    read at each row: the settings set them after the service is made."""

    def __init__(self, name: Callable[[], str], command_log: Callable[[], CommandLog | None],
                 log_module_updates: Callable[[], bool]):
        self.name, self.command_log, self.log_module_updates = name, command_log, log_module_updates

    def close(self) -> None:
        log = self.command_log()
        if log is not None:
            log.close()

    def command(self, cmd: str, args: dict[str, Any], result: Any = None, uid: str | None = None,
                type: str | None = None, caller: str | None = None) -> None:
        """A client command's row (namespace ``client-SERVICE``), naming its caller (by default the one
        the running command was sent by: :func:`shmooze.caller.current`)."""
        command_log = self.command_log()
        if command_log is not None:
            command_log.record(f"client-{self.name()}", uid, {"cmd": cmd, "args": args}, result, type,
                               caller or current(), synced=cmd not in UNKEPT_COMMANDS)

    def placed(self, event: Placed) -> None:
        if event.logged_as is not None:
            module = event.module
            self.command(event.logged_as, {"type": module.type.name, "args": event.args}, {"uid": module.uid},
                         module.uid, module.type.name, event.by)

    def updated(self, event: Updated) -> None:
        command_log, module = self.command_log(), event.module
        if command_log is not None and (event.cmd == "rm" or self.log_module_updates() or module.type.log_updates):
            command_log.record("module-update", module.uid, {"cmd": event.cmd, "args": event.args}, None,
                               module.type.name, synced=False)  # (kept as the parameters are: Journal.log)

    def journaled_adds(self, entries: list[dict[str, Any]]) -> None:
        """Every module in the journal was added; one whose ``add`` has no row (the worker died between
        the journal's sync and the row's commit, which durability ``fsync`` runs side by side) gets its
        row now: an add a client was told of is never missing from the log."""
        command_log = self.command_log()
        if command_log is None or not entries:
            return
        try:
            logged = command_log.logged_uids([e["uid"] for e in entries])
        except (sqlite3.Error, OSError) as exc:
            log.warning("%s: cannot check the command log for the restored modules' rows: %s", self.name(), exc)
            return
        for entry in entries:
            if entry["uid"] not in logged:
                log.info("%s: the command log had no row for the add of %s (%s): written now", self.name(),
                         entry["uid"], entry.get("type"))
                self.command("add" if entry.get("kind") == "module" else "set_bg",
                             {"type": entry.get("type"), "args": entry.get("args", {})}, {"uid": entry["uid"]},
                             entry["uid"], entry.get("type"))

    def history(self, limit: int, type: str | None) -> list[dict[str, Any]]:
        """The ``history`` command: modules added recently, newest first, optionally of one type."""
        command_log = self.command_log()
        if command_log is None:
            raise CommandError(f"{self.name()} keeps no command log (set log_database_path in the settings)")
        if limit < 0 or limit > 1000:
            raise CommandError("limit must be from 0 to 1000")
        return [{"uid": row["uid"], "type": row["type"], "args": row["command"]["args"].get("args", {}),
                 "time": row["time"]} for row in command_log.history(limit, type)]
