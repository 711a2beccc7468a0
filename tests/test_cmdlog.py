"""The command log in SQLite: what a scripted session leaves in it, and the history command."""

import json
import os
import sqlite3
import time

from shmooze.hosting.cmdlog import CommandLog
from shmooze.moduletype import python_module
from shmooze.protocol import Command
from shmooze.queue import Queue
from tests.apps import MISBEHAVE, TYPES


def rows(path):
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT namespace, uid, type, cmd, input, output FROM log ORDER BY id").fetchall()
    finally:
        db.close()


def test_record_is_queued_and_flushed(tmp_path):
    clog = CommandLog(str(tmp_path / "sub" / "log.db"), "queue")
    for i in range(1000):
        clog.record("client-queue", str(i), {"cmd": "add", "args": {"type": "t", "args": {"n": i}}}, {"uid": str(i)},
                    "t")
    assert clog.flush()
    assert clog.count() == 1000
    hist = clog.history(limit=3)
    assert [h["uid"] for h in hist] == ["999", "998", "997"]
    assert hist[0]["command"]["args"]["args"] == {"n": 999}
    clog.record("client-queue", None, {"cmd": "bad", "args": {"x": {1, 2}}}, None)  # not JSON: dropped, no raise
    assert clog.dropped == 1
    clog.close()


def test_scripted_session(tmp_path):
    path = str(tmp_path / "log.db")
    q = Queue(TYPES, backgrounds=[python_module("bg", MISBEHAVE, "--record", rm_timeout=0.5, term_timeout=0.5)],
              log_module_updates=True)
    q.command_log = CommandLog(path, "queue")
    q.start()
    try:
        a = q.dispatch(Command("add", {"type": "good", "args": {"title": "first"}}))["result"]["uid"]
        b = q.dispatch(Command("add", {"type": "shout", "args": {"text": "hey"}}))["result"]["uid"]
        bg = q.dispatch(Command("set_bg", {"type": "bg"}))["result"]["uid"]
        assert q.dispatch(Command("tell_module", {"uid": b, "cmd": "shout"}))["result"] == "HEY"
        assert q.dispatch(Command("tell_background", {"uid": bg, "cmd": "echo", "args": {"x": 1}}))["success"]
        q.dispatch(Command("mv", {"uids": [b]}))
        q.dispatch(Command("rm", {"uids": [a, b]}))
        q.dispatch(Command("queue"))  # read-only: not logged
        history = q.dispatch(Command("history", {"limit": 10}))["result"]
        assert [h["uid"] for h in history] == [b, a]
        assert history[0]["type"] == "shout" and history[0]["args"] == {"text": "hey"}
        only = q.dispatch(Command("history", {"type": "good"}))["result"]
        assert [h["uid"] for h in only] == [a]
        assert "limit must be" in q.dispatch(Command("history", {"limit": -1}))["error"]
    finally:
        q.stop()
    got = rows(path)
    client = [(ns, uid, cmd) for ns, uid, ty, cmd, _, _ in got if ns == "client-queue"]
    assert client == [("client-queue", a, "add"), ("client-queue", b, "add"), ("client-queue", bg, "set_bg"),
                      ("client-queue", b, "tell_module"), ("client-queue", bg, "tell_background"),
                      ("client-queue", None, "mv"), ("client-queue", None, "rm")]
    add_row = next(r for r in got if r[3] == "add")
    assert json.loads(add_row[4]) == {"cmd": "add", "args": {"type": "good", "args": {"title": "first"}}}
    assert json.loads(add_row[5]) == {"uid": a}
    tell = next(r for r in got if r[3] == "tell_module")
    assert json.loads(tell[5]) == "HEY" and tell[2] == "shout"
    updates = [(uid, ty, cmd) for ns, uid, ty, cmd, _, _ in got if ns == "module-update"]
    assert (a, "good", "set_parameters") in updates and (b, "shout", "set_parameters") in updates


def test_history_without_a_log_is_a_clear_error():
    q = Queue(TYPES)
    answer = q.dispatch(Command("history"))
    assert answer["success"] is False and "log_database_path" in answer["error"]
    q.stop()


def test_parameter_updates_are_not_logged_unless_asked(tmp_path):
    path = str(tmp_path / "log.db")
    logged = python_module("logged", MISBEHAVE, "--record", rm_timeout=0.5, term_timeout=0.5, log_updates=True)
    leaver = python_module("leaver", MISBEHAVE, "--record", "--exit-after", "0.5", rm_timeout=0.5, term_timeout=0.5)
    q = Queue([leaver, logged])
    q.command_log = CommandLog(path, "queue")
    q.start()
    try:
        quiet = q.dispatch(Command("add", {"type": "leaver"}))["result"]["uid"]  # leaves: an rm update, logged
        loud = q.dispatch(Command("add", {"type": "logged"}))["result"]["uid"]
        deadline = time.monotonic() + 10
        while q.dispatch(Command("queue"))["result"] != [{"uid": loud, "type": "logged"}]:
            assert time.monotonic() < deadline, "the module that left is still in the queue"
            time.sleep(0.02)
    finally:
        q.stop()
    updates = [(uid, cmd, json.loads(inp)["cmd"]) for ns, uid, ty, cmd, inp, _ in rows(path) if ns == "module-update"]
    assert (loud, "set_parameters", "set_parameters") in updates
    assert all(uid != quiet for uid, cmd, _ in updates if cmd == "set_parameters")
    assert (quiet, "rm", "rm") in updates


def test_retention_by_age_and_size(tmp_path):
    path = str(tmp_path / "log.db")
    clog = CommandLog(path, "queue", max_age=3600, max_bytes=300_000)
    for i in range(200):
        clog.record("client-queue", str(i), {"cmd": "add", "args": {"n": i}}, None)
    assert clog.flush()
    db = sqlite3.connect(path, isolation_level=None)  # autocommit, like the writer's own connection
    db.execute("UPDATE log SET time = time - 7200 WHERE CAST(uid AS INTEGER) < 150")  # two hours old
    assert clog.prune(db) == 150
    assert sorted(int(r[0]) for r in db.execute("SELECT uid FROM log")) == list(range(150, 200))
    for i in range(200, 6200):  # ~ 2 MB of rows, past the size limit
        clog.record("client-queue", str(i), {"cmd": "add", "args": {"text": "x" * 300, "n": i}}, None)
    assert clog.flush()
    clog.prune(db)
    used = (db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0])
    assert used * db.execute("PRAGMA page_size").fetchone()[0] <= 300_000
    newest = db.execute("SELECT MAX(CAST(uid AS INTEGER)), COUNT(*) FROM log").fetchone()
    assert newest[0] == 6199 and 100 < newest[1] < 1000  # the oldest went, the newest stayed
    assert os.path.getsize(path) < 1_000_000  # the file itself shrank (incremental vacuum)
    db.close()
    clog.close()
