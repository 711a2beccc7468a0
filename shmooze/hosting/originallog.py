"""The command log as the original framework wrote it, for the readers written against it.

With the setting ``original_command_log`` (or ``Queue(modules, backgrounds, log_path)``), a queue or
pool also writes the original's rows into the SQLite file: table ``queue_log`` (a pool's:
``pool_log``) with columns ``pk, uid, namespace, timestamp, input_json, output_json`` (``timestamp``
in UTC as ``YYYY-MM-DD HH:MM:SS``, SQLite's ``CURRENT_TIMESTAMP``). Its namespaces are the original's:

- ``client-queue`` (``client-pool``): the client commands the original logged (queue: ``rm``, ``mv``,
  ``add``, ``set_bg``, ``tell_module``, ``tell_background``; pool: ``rm``, ``add``, ``tell_module``),
  the command as ``input_json`` and its whole answer as ``output_json``, failures too; ``uid`` null;
- ``queue-module`` (for a pool's modules too, as in the original): every command sent to a module
  (``init``, ``play``, ``suspend``, ``rm``, ``do_NAME``) and the module's whole answer, null when
  none came; ``uid`` the module's;
- ``module-instance``: every update line of a module (``set_parameters``, ``unset_parameters``,
  ``rm``) and the answer ``{"success": true}``.

Backgrounds are not in it (the original logged only the modules of ``add``). Rows older than the
command log's ``log_max_age_days`` are deleted, and the oldest ones while the file holds more than
``log_max_bytes``. It is written by a thread of its own: a command's answer never waits for it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from shmooze.hosting.batchwriter import BatchWriter
from shmooze.hosting.lifecycle import Answered, Commanded, Ended, Lifecycle, Subscriber, Updated
from shmooze.system import private

if TYPE_CHECKING:
    from shmooze.hosting.moduleprocess import ModuleProcess

log = logging.getLogger(__name__)

#: The client commands the original logged, per kind of host.
LOGGED_COMMANDS = {
    "queue": frozenset({"rm", "mv", "add", "set_bg", "tell_module", "tell_background"}),
    "pool": frozenset({"rm", "add", "tell_module"}),
}
SCHEMA = """CREATE TABLE IF NOT EXISTS {table} (
    pk INTEGER PRIMARY KEY,
    uid TEXT,
    namespace TEXT,
    timestamp DATETIME DEFAULT CURRENT_TIMESTAMP,
    input_json TEXT,
    output_json TEXT
);"""
UPDATE_ANSWER = {"success": True}


def utc_timestamp(at: float) -> str:
    """``at`` as SQLite's ``CURRENT_TIMESTAMP`` writes it (UTC)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))


class OriginalLogWriter:
    """One host's table of the original's command log, written in batches by a thread of its own."""

    def __init__(self, path: str, kind: str, max_age: float = 7 * 86400, max_bytes: int = 100_000_000,
                 prune_interval: float = 60.0):
        self.path, self.kind = path, kind
        self.table = f"{kind}_log"
        self.max_age, self.max_bytes, self.prune_interval = max_age, max_bytes, prune_interval
        self.pruned = self.lost = 0
        self._db: sqlite3.Connection | None = None
        self._next_prune = 0.0
        self._writer = BatchWriter(f"{kind}-original-log", self._write, self._idle_time, max_batch=5000)

    def record(self, uid: str | None, namespace: str, command: Any, answer: Any) -> None:
        """Queue one row; never blocks."""
        try:
            row = (uid, namespace, utc_timestamp(time.time()), json.dumps(command), json.dumps(answer))
        except (TypeError, ValueError):
            self.lost += 1
            return
        self._writer.put(row)

    def flush(self, timeout: float = 5.0) -> bool:
        return self._writer.flush(timeout)

    def close(self) -> None:
        self._writer.close()

    def _idle_time(self) -> float:
        return max(0.05, self._next_prune - time.monotonic())

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            private.private_state(self.path, ("-wal", "-shm"))
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(SCHEMA.format(table=self.table))
            self._db = db
        return self._db

    def _write(self, rows: list[Any], last: bool) -> None:
        try:
            db = self._open()
            if rows:
                db.execute("BEGIN")
                db.executemany(f"INSERT INTO {self.table} (uid, namespace, timestamp, input_json, output_json) "
                               "VALUES (?, ?, ?, ?, ?)", rows)
                db.execute("COMMIT")
            if time.monotonic() >= self._next_prune:
                self.prune(db)
                self._next_prune = time.monotonic() + self.prune_interval
        except (sqlite3.Error, OSError) as exc:  # (a full disk) the original's rows are a reader's aid: counted, not kept
            self.lost += len(rows)
            log.warning("original command log %s: %d row(s) lost: %s", self.path, len(rows), exc)
            if self._db is not None and self._db.in_transaction:
                self._db.execute("ROLLBACK")
        if last and self._db is not None:
            self._db.close()
            self._db = None

    def prune(self, db: sqlite3.Connection) -> int:
        """Delete rows older than ``max_age``, then the oldest while the file holds more than ``max_bytes``."""
        deleted = db.execute(f"DELETE FROM {self.table} WHERE timestamp < ?",
                             (utc_timestamp(time.time() - self.max_age),)).rowcount
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        used = (db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0])
        used *= page_size
        if used > self.max_bytes:
            rows = db.execute(f"SELECT COUNT(*) FROM {self.table}").fetchone()[0]
            drop = max(1, int(rows * (1 - 0.8 * self.max_bytes / used)))
            deleted += db.execute(f"DELETE FROM {self.table} WHERE pk IN "
                                  f"(SELECT pk FROM {self.table} ORDER BY pk LIMIT ?)", (drop,)).rowcount
        if deleted:
            self.pruned += deleted
            log.info("original command log %s: pruned %d old row(s)", self.path, deleted)
        return deleted


class OriginalLog(Subscriber):
    """A host's rows in the original's command log (see the module's docstring). ``writer`` gives the
    :class:`OriginalLogWriter` (None: the host writes no such log), read at each event: the settings set
    it after the host is made."""

    def __init__(self, writer: Callable[[], OriginalLogWriter | None]):
        self.writer = writer
        self._modules: set[str] = set()  # the uids of the modules whose commands are logged (not backgrounds)
        self._lock = threading.Lock()

    def answer_hook(self, lifecycle: Lifecycle) -> Callable[[ModuleProcess, dict[str, Any], Any], None] | None:
        """What a module started now calls with each command sent to it and its answer: publishes
        :class:`Commanded` (None while no original log is written: modules then publish nothing)."""
        if self.writer() is None:
            return None
        return lambda module, command, answer: lifecycle.publish(Commanded(module, command, answer))

    def close(self) -> None:
        writer = self.writer()
        if writer is not None:
            writer.close()

    def answered(self, event: Answered) -> None:
        writer = self.writer()
        if writer is not None and event.cmd in LOGGED_COMMANDS.get(writer.kind, ()):
            writer.record(None, f"client-{writer.kind}", {"cmd": event.cmd, "args": event.args}, event.answer)

    def commanded(self, event: Commanded) -> None:
        writer = self.writer()
        if writer is not None:
            with self._lock:
                self._modules.add(event.module.uid)
            writer.record(event.module.uid, "queue-module", event.command, event.answer)

    def updated(self, event: Updated) -> None:
        writer = self.writer()
        if writer is not None and event.module.uid in self._modules:
            writer.record(event.module.uid, "module-instance", {"cmd": event.cmd, "args": event.args}, UPDATE_ANSWER)

    def ended(self, event: Ended) -> None:
        with self._lock:
            self._modules.discard(event.module.uid)
