"""The command log: every state-changing command and module update, in SQLite.

:meth:`CommandLog.record` puts the row on an in-memory queue and returns; a service answers a
command once :meth:`CommandLog.sync` says its rows are committed: the waiting command inserts every
row queued in one transaction (group commit: the rows of the commands that arrived meanwhile share
it; :class:`shmooze.batchwriter.BatchWriter`), a writer thread what nobody waits for. ``durability`` ``fsync``
(the default) commits with SQLite's ``synchronous=FULL`` (synced to the disk); ``write`` with
``NORMAL`` (written to the kernel: a crash of the service loses nothing) and syncs the write-ahead
log at most every ``sync_interval`` (50 ms: what a power cut can lose). A row that cannot be
committed is named in the log (what, when, which module). Applications read history with
:meth:`CommandLog.history`.

The log stays small: the writer deletes rows older than ``max_age`` seconds and,
when the rows take more than ``max_bytes``, the oldest ones, checking after every
``prune_every`` rows and at least once a minute. Services record client commands
and modules leaving; modules' parameter updates only when asked (see
:class:`shmooze.host.ModuleHost`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from typing import Any

from shmooze import private
from shmooze.batchwriter import BatchWriter, Syncer, WriteFailed

log = logging.getLogger(__name__)

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
    output TEXT                  -- its result as JSON
);
CREATE INDEX IF NOT EXISTS log_cmd_time ON log (cmd, time);
CREATE INDEX IF NOT EXISTS log_uid ON log (uid);
CREATE INDEX IF NOT EXISTS log_time ON log (time);
"""
INSERT = "INSERT INTO log (time, service, namespace, uid, type, cmd, input, output) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"


class CommandLog:
    """An append-only SQLite log, written by a background thread, pruned by age and size."""

    def __init__(self, path: str, service: str, max_age: float = 7 * 86400, max_bytes: int = 100_000_000,
                 prune_every: int = 10_000, durability: str = "fsync", sync_interval: float = 0.05):
        self.path = path
        self.service = service
        private.private_state(path, ("-wal", "-shm"))  # folder 0700 when made here; old files 0600
        self.synchronous = "FULL" if durability == "fsync" else "NORMAL"
        # (NORMAL) The write-ahead log synced within sync_interval, on a thread of its own (SQLite has no call
        # for that short of a checkpoint; a sync of the file is one), so commits never wait for the disk.
        self._syncer = Syncer(f"{service}-cmdlog-sync", path + "-wal", sync_interval) \
            if self.synchronous == "NORMAL" else None
        self.max_age, self.max_bytes, self.prune_every = max_age, max_bytes, prune_every  # see prune()
        self.pruned = 0
        self._db = self._connect(auto_vacuum=True)  # the writer's connection (used on its thread only)
        self._db.executescript(SCHEMA)
        self.dropped = 0
        self._since_prune = 0
        self._next_prune = 0.0
        self._writer = BatchWriter(f"{service}-cmdlog", self._write,
                                   timeout=lambda: max(0.01, self._next_prune - time.monotonic()), max_batch=5000)

    def _connect(self, auto_vacuum: bool = False) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        if auto_vacuum:  # takes effect on a new file only (before WAL): then pruning shrinks the file
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        return db

    def record(self, namespace: str, uid: str | None, command: dict[str, Any], result: Any,
               type: str | None = None) -> None:
        """Queue one row; never blocks on the disk."""
        try:
            row = (time.time(), self.service, namespace, uid, type, str(command.get("cmd", "")),
                   json.dumps(command, separators=(",", ":")), json.dumps(result, separators=(",", ":")))
        except (TypeError, ValueError):
            self.dropped += 1
            return
        self._writer.put(row)

    @property
    def tickets(self) -> int:
        """Rows recorded so far: pass it to :meth:`sync` as ``since`` before recording."""
        return self._writer.tickets

    def start_writing(self) -> None:
        """Commit what is recorded on the writer's thread now (see :meth:`sync`): beside another sync."""
        self._writer.start_writing()

    def sync(self, since: int = 0, timeout: float = 30.0) -> str | None:
        """Block until every row recorded so far is committed; None when those after ``since`` are, else
        why not (the rows lost are named in the log)."""
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

    def _write(self, rows: list[Any], last: bool) -> None:
        """Under the write lock (a waiting command or the writer's thread): prune when due, insert ``rows``
        in one transaction."""
        if self._since_prune >= self.prune_every or time.monotonic() >= self._next_prune:
            try:
                self.prune(self._db)
            except sqlite3.Error:
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
            except sqlite3.Error as exc:
                self.dropped += len(rows)
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                named = "; ".join(f"{time.strftime('%H:%M:%S', time.localtime(r[0]))} {r[2]} {r[5]} {r[3] or ''}"
                                  for r in rows[:20]) + (f"; and {len(rows) - 20} more" if len(rows) > 20 else "")
                log.error("command log %s: %d row(s) lost (%s): %s", self.path, len(rows), exc, named)
                if last:
                    self._db.close()
                raise WriteFailed(f"the command log could not commit {len(rows)} row(s): {exc}") from None
            self._since_prune += len(rows)
            if self._syncer is not None:
                self._syncer.written()
        if last:
            self._db.close()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything recorded so far is on disk."""
        return self._writer.flush(timeout)

    def close(self) -> None:
        self._writer.close()
        if self._syncer is not None:
            self._syncer.close()

    def history(self, limit: int = 20, type: str | None = None, cmd: str = "add") -> list[dict[str, Any]]:
        """Newest first: the ``cmd`` rows of this service (``add`` by default), optionally of one type."""
        self.flush()
        sql = "SELECT time, uid, type, input, output FROM log WHERE service = ? AND cmd = ?"
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
        return [{"time": t, "uid": uid, "type": ty, "command": json.loads(inp), "result": json.loads(out)}
                for t, uid, ty, inp, out in rows]

    def count(self) -> int:
        self.flush()
        db = self._connect()
        try:
            return db.execute("SELECT COUNT(*) FROM log").fetchone()[0]
        finally:
            db.close()
