"""Nothing lost across a restart: the journal, restoring a queue and a pool, client keys, epochs."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest

from shmooze.events import ChangeLog, epoch_base
from shmooze.hosting.journal import Journal, journal_dir, read
from shmooze.moduletype import ModuleType, python_module
from shmooze.pool import Pool
from shmooze.protocol import Command
from shmooze.queue import Queue
from shmooze.settings import Settings
from tests.apps import SHOUT
from tests.helpers import gone, wait_for

KEEPER = str(Path(__file__).resolve().parent / "modules" / "keeper.py")
FAST = {"rm_timeout": 0.5, "term_timeout": 0.5}
TYPES = [python_module("keep", KEEPER, **FAST), python_module("original", KEEPER, "--original", **FAST),
         python_module("once", KEEPER, restore=False, **FAST)]
BACKGROUNDS = [python_module("bgkeep", KEEPER, **FAST)]


def call(service, _cmd, **args):
    answer = service.dispatch(Command(_cmd, args))
    assert answer["success"], answer
    return answer.get("result")


def make_queue(path, **options) -> Queue:
    q = Queue(TYPES, BACKGROUNDS, journal=str(path), **options)
    q.start()
    wait_for(lambda: not q.restoring, 60, what="the restore to end")
    return q


def snapshot(q):
    return [m["uid"] for m in call(q, "queue")], (call(q, "bg") or {}).get("uid")


def params(q, uid):
    return call(q, "ask_module", uid=uid, parameters=["args", "restored", "env", "original", "step"])


# -- the journal file -------------------------------------------------------------------------

def test_journal_replays_adds_moves_removals_and_parameters(tmp_path):
    path = str(tmp_path / "q.journal")
    j = Journal(path, "queue", params_interval=0.01)
    for uid in "abcd":
        j.added(uid, "keep", {"n": uid}, key=f"k-{uid}")
    j.added("bg1", "bgkeep", {}, "background")
    j.added("bg2", "bgkeep", {"second": True}, "background")  # replaces bg1
    j.ordered(["c", "a", "b", "d"])
    j.removed(["b"])
    j.parameters("a", lambda: {"x": 1})
    j.parameters("a", lambda: {"x": 2})
    j.parameters("zz", lambda: {"y": 1})  # not in place: dropped
    assert j.flush()
    j.close()
    entries, problem = read(path)
    assert problem is None
    assert [(e["uid"], e["kind"]) for e in entries] == [("c", "module"), ("a", "module"), ("d", "module"),
                                                        ("bg2", "background")]
    assert entries[1]["parameters"] == {"x": 2} and entries[1]["args"] == {"n": "a"} and entries[1]["key"] == "k-a"
    assert entries[3]["args"] == {"second": True}
    again = Journal(path, "queue")  # reading rewrites the file as one snapshot
    assert [e["uid"] for e in again.recovered] == ["c", "a", "d", "bg2"]
    again.close()
    assert len(Path(path).read_bytes().splitlines()) == 1 + 4  # the head, then one record per module


def test_journal_compacts_under_a_chatty_module(tmp_path):
    path = str(tmp_path / "q.journal")
    j = Journal(path, "queue", params_interval=0.0, compact_min=50)
    j.added("a", "keep", {})
    for i in range(2000):
        j.parameters("a", lambda i=i: {"i": i})
        if i % 10 == 0:
            j.ordered(["a"])
    assert j.flush()
    j.close()
    assert len(Path(path).read_bytes().splitlines()) <= 50
    entries, _ = read(path)
    assert entries[0]["parameters"] == {"i": 1999}


def test_torn_journal_loses_only_the_last_change(tmp_path, caplog):
    path = tmp_path / "q.journal"
    j = Journal(str(path), "queue")
    for uid in "abc":
        j.added(uid, "keep", {})
    assert j.flush()
    j.close()
    data = path.read_bytes()
    path.write_bytes(data[:-7])  # a write torn by SIGKILL: the last line is cut
    with caplog.at_level(logging.WARNING, logger="shmooze.hosting.journal"):
        j = Journal(str(path), "queue")
    assert [e["uid"] for e in j.recovered] == ["a", "b"]
    assert "the last record was torn" in caplog.text and "kept as" in caplog.text
    kept = [p for p in tmp_path.iterdir() if ".bad-" in p.name]
    assert len(kept) == 1 and kept[0].read_bytes() == data[:-7]
    j.close()
    assert [e["uid"] for e in read(str(path))[0]] == ["a", "b"]


def test_unreadable_journal_starts_empty_and_is_kept_aside(tmp_path, caplog):
    path = tmp_path / "q.journal"
    path.write_bytes(b"\x00\xffnot a journal at all\n{\"op\": \"add\"}\n")
    with caplog.at_level(logging.WARNING, logger="shmooze.hosting.journal"):
        q = make_queue(path)
    try:
        assert snapshot(q) == ([], None)
        assert "no readable record (37 bytes): starting empty" in caplog.text
        assert any(".bad-" in p.name for p in tmp_path.iterdir())
        uid = call(q, "add", type="keep")["uid"]  # and it works
        assert snapshot(q) == ([uid], None)
    finally:
        q.stop()


def test_journal_location_from_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    file_settings = tmp_path / "settings.json"
    assert journal_dir(Settings({"ports": {"q": 1}, "journal_path": "/srv/j"})) == "/srv/j"
    assert journal_dir(Settings({"ports": {"q": 1}, "log_database_path": "/var/lib/app/log.db"})) == "/var/lib/app"
    assert journal_dir(Settings({"ports": {"q": 1}, "run_path": "/run/app"})) == "/run/app"
    default = journal_dir(Settings({"ports": {"q": 1}}, str(file_settings)))
    assert default.startswith(str(tmp_path / "state" / "shmooze")) and not default.startswith("/tmp/shmooze")
    assert journal_dir(Settings({"ports": {"q": 1}, "journal": False, "run_path": "/x"})) is None


# -- restoring ----------------------------------------------------------------------------------

def test_queue_comes_back_with_uids_order_background_and_last_parameters(tmp_path):
    path = tmp_path / "queue.journal"
    q = make_queue(path)
    try:
        uids = [call(q, "add", type="keep", args={"n": i})["uid"] for i in range(4)]
        original = call(q, "add", type="original", args={"title": "old api"})["uid"]
        once = call(q, "add", type="once")["uid"]
        bg = call(q, "set_bg", type="bgkeep", args={"b": 1})["uid"]
        call(q, "mv", uids=[uids[2], original])
        call(q, "rm", uids=[uids[3]])
        call(q, "tell_module", uid=uids[0], cmd="set", args={"step": 7})
        order, _ = snapshot(q)
        assert order == [uids[2], original, uids[0], uids[1], once]
        assert q.journal.flush()
        old_pids = [m["pid"] for m in call(q, "status")["modules"]]
    finally:
        q.stop()
    assert all(gone(p) for p in old_pids)

    q = make_queue(path)
    try:
        assert snapshot(q) == ([uids[2], original, uids[0], uids[1]], bg)  # "once" has restore=False
        first = params(q, uids[0])
        assert first["args"] == {"n": 0} and first["env"] == "1"
        assert first["restored"] == {"uid": uids[0], "parameters": {"args": {"n": 0}, "restored": None,
                                                                    "env": None, "step": 7}}
        assert params(q, original) == {"args": {"title": "old api"}, "original": True}  # same init as ever
        assert call(q, "ask_background", uid=bg, parameters=["args"]) == {"args": {"b": 1}}
        new = call(q, "add", type="keep")["uid"]
        assert new not in uids and snapshot(q)[0][-1] == new
        events = call(q, "changes", since=0)["events"]
        assert any(e["kind"] == "restored" and e["uids"][:4] == [uids[2], original, uids[0], uids[1]]
                   for e in events)
    finally:
        q.stop()


def test_restore_hook_and_a_type_that_is_gone(tmp_path):
    path = tmp_path / "queue.journal"
    q = make_queue(path)
    try:
        keep = call(q, "add", type="keep", args={"keep": True})["uid"]
        drop = call(q, "add", type="keep", args={"keep": False})["uid"]
        orphan = call(q, "add", type="original")["uid"]
        assert q.journal.flush()
    finally:
        q.stop()
    seen = []

    def hook(entry):
        seen.append(entry["uid"])
        return entry["args"].get("keep", True)

    q = Queue(TYPES[:1], BACKGROUNDS, journal=str(path), restore_hook=hook)  # "original" is no more
    q.start()
    try:
        wait_for(lambda: not q.restoring, 60)
        assert snapshot(q) == ([keep], None)
        assert seen == [keep, drop] and orphan not in seen
        assert q.journal.flush()
    finally:
        q.stop()
    assert [e["uid"] for e in read(str(path))[0]] == [keep]  # what was not restored is forgotten


def test_stopping_keeps_the_queue_but_removing_forgets(tmp_path):
    path = tmp_path / "queue.journal"
    q = make_queue(path)
    try:
        a = call(q, "add", type="keep")["uid"]
        b = call(q, "add", type="keep")["uid"]
        call(q, "rm", uids=[a])
    finally:
        q.stop()  # the modules leave as the service stops: that is not a removal
    q = make_queue(path)
    try:
        assert snapshot(q) == ([b], None)
    finally:
        q.stop()


def test_pool_restores_200_modules(tmp_path):
    path = tmp_path / "pool.journal"
    shout = ModuleType("shout", ("bash", SHOUT), **FAST)
    pool = Pool([shout], journal=str(path), restore_concurrency=16)
    pool.start()
    try:
        uids = [None] * 200

        def add(i):
            uids[i] = call(pool, "add", type="shout", args={"text": f"n{i}"})["uid"]

        for start in range(0, 200, 20):
            threads = [threading.Thread(target=add, args=(i,)) for i in range(start, start + 20)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        order = [m["uid"] for m in call(pool, "pool")]
        assert sorted(order) == sorted(uids) and len(order) == 200
        assert pool.journal.flush(10)
    finally:
        pool.stop()
    pool = Pool([shout], journal=str(path), restore_concurrency=16)
    pool.start()
    try:
        wait_for(lambda: not pool.restoring, 120, interval=0.1, what="200 modules to be restored")
        assert [m["uid"] for m in call(pool, "pool")] == order
        status = call(pool, "status")
        assert len(status["modules"]) == 200 and all(m["state"] == "running" for m in status["modules"])
        assert call(pool, "tell_module", uid=order[123], cmd="shout") == next(
            f"N{i}" for i, u in enumerate(uids) if u == order[123])
    finally:
        pool.stop()


# -- client keys ---------------------------------------------------------------------------------

def test_a_repeated_key_answers_the_first_result(tmp_path):
    path = tmp_path / "queue.journal"
    q = make_queue(path, key_window=600)
    try:
        results = []
        threads = [threading.Thread(target=lambda: results.append(call(q, "add", type="keep", key="k1")))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len({r["uid"] for r in results}) == 1 and len(call(q, "queue")) == 1
        bg = call(q, "set_bg", type="bgkeep", key="b1")
        assert call(q, "set_bg", type="bgkeep", key="b1") == bg and call(q, "bg")["uid"] == bg["uid"]
        other = call(q, "add", type="keep", key="k2")
        assert other != results[0] and len(call(q, "queue")) == 2
        failed = q.dispatch(Command("add", {"type": "nope", "key": "k3"}))
        assert not failed["success"]
        assert call(q, "add", type="keep", key="k3")  # a failed first try is not remembered
        assert "key must be" in q.dispatch(Command("add", {"type": "keep", "key": ""}))["error"]
        assert q.journal.flush()
    finally:
        q.stop()
    q = make_queue(path)  # the keys survive a restart: a retry sent to the new instance
    try:
        assert call(q, "add", type="keep", key="k1") == results[0]
        assert len(call(q, "queue")) == 3
    finally:
        q.stop()


def test_python_client_sends_a_key_with_add(monkeypatch):
    from shmooze.client import Batch, ServiceClient, with_key

    assert "key" in with_key("add", {"type": "keep"}) and "key" in with_key("set_bg", {"type": "bg"})
    assert with_key("add", {"type": "keep", "key": "mine"})["key"] == "mine"
    assert "key" not in with_key("add", {"n": 1}) and "key" not in with_key("rm", {"uids": []})
    sent = []

    class Flaky:
        def post(self, url, payload, timeout):
            sent.append(json.loads(json.dumps(payload)))
            if len(sent) == 1:
                from shmooze.errors import Timeout
                raise Timeout("no answer")
            return {"success": True, "result": {"uid": "u1"}}

    svc = ServiceClient("http://x/queue", "queue", transport=Flaky())
    assert svc.add(type="keep") == {"uid": "u1"}
    assert len(sent) == 2 and sent[0] == sent[1] and sent[0]["args"]["key"]  # the retry carries the same key
    batch = Batch(svc)
    item = batch.add("add", {"type": "keep"})
    assert item.args["key"]


# -- epochs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("old_version", ["low", "high", "current"])
def test_versions_from_an_earlier_instance_always_reset(old_version):
    before = ChangeLog(base=epoch_base(1_800_000_000.0))
    for _ in range(5000 if old_version == "high" else 3):
        before.publish("x")
    seen = {"low": before.base + 1, "high": before.version, "current": before.version}[old_version]
    after = ChangeLog(base=epoch_base(1_800_000_002.0))  # restarted two seconds later
    for _ in range(10_000):  # the new instance is busier than the old one ever was
        after.publish("y")
    answer = after.since(seen)
    assert answer["reset"] is True and answer["version"] == after.version
    assert after.since(0)["version"] == after.version and "reset" in after.since(0)  # 10 000 > 1000 kept
    fresh = ChangeLog(base=epoch_base())
    fresh.publish("z")
    assert [e["kind"] for e in fresh.since(0)["events"]] == ["z"]  # 0: from the start of this instance
    assert fresh.since(fresh.version) == {"version": fresh.version, "events": []}
    assert fresh.version < 2 ** 53  # JavaScript holds it exactly


def test_service_versions_carry_the_epoch():
    q = Queue(TYPES)
    try:
        status = call(q, "status")
        assert status["epoch"] >= epoch_base() - 60_000_000 and status["change_version"] == status["epoch"]
    finally:
        q.stop()
