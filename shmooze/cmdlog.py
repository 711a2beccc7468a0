"""The command log: every state-changing command and module update, in SQLite.

Writes never slow a command down: :meth:`CommandLog.record` puts the row on an
in-memory queue and returns; one writer thread inserts what has gathered in one
transaction. Applications read history with :meth:`CommandLog.history`.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import threading
import time
from typing import Any

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
"""

_STOP = object()


class CommandLog:
    """An append-only SQLite log, written by a background thread."""

    def __init__(self, path: str, service: str):
        self.path = path
        self.service = service
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        with self._connect() as db:
            db.executescript(SCHEMA)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._written = threading.Condition()
        self._enqueued = 0
        self._done = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._writer, name=f"{service}-cmdlog", daemon=True)
        self._thread.start()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
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
        with self._written:
            self._enqueued += 1
        self._queue.put(row)

    def _writer(self) -> None:
        db = self._connect()
        try:
            while True:
                first = self._queue.get()
                if first is _STOP:
                    return
                rows = [first]
                stop = False
                while len(rows) < 5000:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop = True
                        break
                    rows.append(item)
                try:
                    db.execute("BEGIN")
                    db.executemany("INSERT INTO log (time, service, namespace, uid, type, cmd, input, output) "
                                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                    db.execute("COMMIT")
                except sqlite3.Error:
                    log.exception("command log: %d row(s) lost", len(rows))
                    self.dropped += len(rows)
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                with self._written:
                    self._done += len(rows)
                    self._written.notify_all()
                if stop:
                    return
        finally:
            db.close()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything recorded so far is on disk."""
        deadline = time.monotonic() + timeout
        with self._written:
            target = self._enqueued
            while self._done < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._written.wait(remaining)
        return True

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(10)

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
