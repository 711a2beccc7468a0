"""The command log in SQLite: what a scripted session leaves in it, and the history command."""

import json
import sqlite3

from shmooze.cmdlog import CommandLog
from shmooze.protocol import Command
from shmooze.queue import Queue
from shmooze.moduletype import python_module
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
    q = Queue(TYPES, backgrounds=[python_module("bg", MISBEHAVE, "--record", rm_timeout=0.5, term_timeout=0.5)])
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
