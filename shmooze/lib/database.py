"""The original framework's SQLite helper (``shmooze.lib.database``), with its names and behaviour.

``Database(filename=None, log_table=None)`` opens ``filename`` (by default the settings'
``log_database_path``, else an in-memory database); with ``log_table`` it makes that table in the
original's command log schema (``pk, uid, namespace, timestamp, input_json, output_json``) and
:meth:`Database.log` adds rows to it. Rows are :class:`sqlite3.Row` (see :func:`row_dict`).

One difference makes it fit the new services: commands run on several threads, so the connection is
shared by them (``check_same_thread=False``) and every call holds the connection's lock. As in the
original, :meth:`Database.execute` logs a :class:`sqlite3.OperationalError` (a missing table, say)
and returns None instead of raising.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from typing import Any

from shmooze import settings
from shmooze.errors import SettingsError
from shmooze.hosting.originallog import SCHEMA as LOG_SCHEMA

log = logging.getLogger(__name__)

TOP_TABLES = ("top_module", "top_module_item", "top_category", "top_item", "top_log_entry", "top_module_log_entry")
TOP_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS top_module (uuid TEXT, add_timestamp DATETIME);",
    "CREATE TABLE IF NOT EXISTS top_category (pk INTEGER PRIMARY KEY, slug TEXT, description TEXT);",
    "CREATE TABLE IF NOT EXISTS top_item (pk INTEGER PRIMARY KEY, canonical_id TEXT, category_pk INTEGER, "
    "requeue_command TEXT, url TEXT, description TEXT);",
    "CREATE TABLE IF NOT EXISTS top_item_module (pk INTEGER PRIMARY KEY, item_pk INTEGER, module_uuid TEXT);",
    "CREATE TABLE IF NOT EXISTS top_log_entry (pk INTEGER, uid TEXT, namespace TEXT, timestamp DATETIME, "
    "input_json TEXT, output_json TEXT);",
    "CREATE TABLE IF NOT EXISTS top_module_log_entry (pk INTEGER PRIMARY KEY, log_pk INTEGER, module_uuid TEXT, "
    "log_type TEXT);",
]


def row_dict(r: sqlite3.Row) -> dict[str, Any]:
    """A :class:`sqlite3.Row` as a dictionary."""
    return {k: r[k] for k in r.keys()}


def default_filename() -> str:
    """The settings' ``log_database_path``, else ``:memory:`` (as the original chose)."""
    try:
        return settings.current().log_database_path or ":memory:"
    except (SettingsError, OSError):
        return ":memory:"


class Database:
    def __init__(self, filename: str | None = None, log_table: str | None = None):
        if filename is None:
            filename = default_filename()
        self.lock = threading.RLock()
        self.conn = sqlite3.connect(filename, check_same_thread=False, timeout=10)
        self.conn.row_factory = sqlite3.Row
        self.log_table = log_table
        if self.log_table is not None:
            self.create_log_schema()

    def execute(self, _sql_command: str, **kwargs: Any) -> sqlite3.Cursor | None:
        with self.lock:
            try:
                return self.conn.execute(_sql_command, kwargs)
            except sqlite3.OperationalError as exc:
                log.warning("%s (in %s)", exc, " ".join(_sql_command.split())[:200])
                return None

    def execute_select(self, _sql_command: str, **kwargs: Any) -> sqlite3.Cursor | None:
        return self.execute(_sql_command, **kwargs)

    def commit(self) -> None:
        with self.lock:
            self.conn.commit()

    def log(self, uid: Any, namespace: str | None, command: Any, response: Any, raw: bool = False) -> None:
        """One row of the original's command log in ``log_table``."""
        input_json = command if raw else json.dumps(command)
        output_json = response if raw else json.dumps(response)
        with self.lock:
            self.execute(f"INSERT INTO {self.log_table} (uid, namespace, input_json, output_json) "
                         "VALUES (:uid, :nspace, :input_json, :output_json);",
                         uid=uid, nspace=namespace, input_json=input_json, output_json=output_json)
            self.commit()

    def create_log_schema(self) -> None:
        with self.lock:
            self.execute(LOG_SCHEMA.format(table=self.log_table))  # (the original's command log table)
            self.commit()

    def destroy_top_schema(self) -> None:
        with self.lock:
            for table in TOP_TABLES:
                self.execute(f"DROP TABLE IF EXISTS {table}")
            self.commit()

    def create_top_schema(self) -> None:
        """(Category --->) Item <---> Module <---> LogEntry, as the original made them."""
        with self.lock:
            for statement in TOP_SCHEMA:
                self.execute(statement)
            self.commit()
