"""The queue service in-process: its commands, the play/suspend rule, and misbehaving modules.

Modules are tests/modules/misbehave.py (flags select the misbehaviour) and the
bash module examples/modules/shout.sh. Ladder times are small so a stuck module
costs well under a second; every wait is bounded (tests.helpers.wait_for).
"""

from __future__ import annotations

import logging
import os
import threading
import time

import pytest
from werkzeug.serving import make_server

from shmooze.client import ServiceClient
from shmooze.errors import ServiceError
from shmooze.http.jsonapp import service_app
from shmooze.moduletype import ModuleType
from shmooze.system import ladder
from tests.helpers import ROOT, gone, wait_for

MISBEHAVE = str(ROOT / "tests" / "modules" / "misbehave.py")
SHOUT = str(ROOT / "examples" / "modules" / "shout.sh")


def mtype(name: str, *flags: str, **options) -> ModuleType:
    """A misbehave.py module type with a fast ladder."""
    opts = {"rm_timeout": 0.3, "term_timeout": 0.3, "command_timeout": 1.0, **options}
    return ModuleType(name, ("python3", MISBEHAVE, *flags), **opts)


def assert_gone(*pids):
    for pid in pids:
        assert pid, "no pid recorded"
        wait_for(lambda pid=pid: gone(pid), 5, what=f"pid {pid} to end")


# -- the commands of section 6 -----------------------------------------------------


def test_available_lists(make_queue):
    q = make_queue([mtype("b"), mtype("a")], [mtype("bg1"), mtype("bg0")])
    assert q.ok("modules_available") == ["a", "b"]
    assert q.ok("backgrounds_available") == ["bg0", "bg1"]
    assert {"add", "set_bg", "rm", "mv", "queue", "bg", "tell_module", "tell_background", "ask_module",
            "ask_background", "modules_available", "backgrounds_available"} <= set(q.ok("commands"))


def test_add_tell_ask_queue_and_rm(make_queue):
    q = make_queue([mtype("good"), mtype("other")])
    a = q.add("good")
    b = q.ok("add", type="other")["uid"]  # args default to {}
    assert isinstance(a, str) and isinstance(b, str) and a != b
    pid_a = q.wait_param(a, "pid")
    assert q.ok("tell_module", uid=a, cmd="echo", args={"x": [1, "two"]}) == {"x": [1, "two"]}
    assert q.ok("tell_module", uid=a, cmd="echo") == {}
    assert q.ok("ask_module", uid=a, parameters=["pid", "nothing"]) == {"pid": pid_a}
    assert q.ok("ask_module", uid=a, parameters=[]) == {}
    # the module's own error answer comes back as an error; the module stays
    assert "unknown command: do_nope" in q.err("tell_module", uid=a, cmd="nope")
    assert q.order() == [a, b]
    # parameters only for the types named in the request
    assert q.ok("queue") == [{"uid": a, "type": "good"}, {"uid": b, "type": "other"}]
    listed = q.ok("queue", parameters={"good": ["pid", "missing"]})
    assert listed == [{"uid": a, "type": "good", "parameters": {"pid": pid_a}}, {"uid": b, "type": "other"}]
    assert q.ok("queue", parameters={"nosuchtype": ["pid"]}) == [{"uid": a, "type": "good"},
                                                                 {"uid": b, "type": "other"}]
    # rm ignores unknown uids; returns once the process is stopped
    assert q.ok("rm", uids=["no-such-uid", a]) is None
    assert gone(pid_a)
    assert q.ended(a)["ended_by"] == ladder.RM
    assert q.order() == [b]
    assert q.ok("rm", uids=["no-such-uid"]) is None
    assert q.ok("rm", uids=[]) is None
    assert q.order() == [b]


def test_error_cases(make_queue):
    q = make_queue([mtype("good")], [mtype("bgtype")])
    err = q.err("add", type="nosuch")
    assert "unknown module type 'nosuch'" in err and "good" in err
    assert "unknown background type 'good'" in q.err("set_bg", type="good")
    assert "unknown module type 'bgtype'" in q.err("add", type="bgtype")
    assert "no module with uid 'zzz'" in q.err("tell_module", uid="zzz", cmd="echo")
    assert "no module with uid 'zzz'" in q.err("ask_module", uid="zzz", parameters=["pid"])
    assert "no background" in q.err("tell_background", uid="zzz", cmd="echo")
    assert "no background" in q.err("ask_background", uid="zzz", parameters=[])
    assert q.ok("bg") is None
    # argument checking by the dispatcher
    assert "missing argument 'type'" in q.err("add")
    assert "'uids'" in q.err("rm", uids="abc")
    uid = q.add("good")
    bg = q.ok("set_bg", type="bgtype")["uid"]
    # a queued module is not reachable as the background and the other way round
    assert "not the current background" in q.err("tell_background", uid=uid, cmd="echo")
    assert "not the current background" in q.err("ask_background", uid=uid, parameters=["pid"])
    assert "no module with uid" in q.err("tell_module", uid=bg, cmd="echo")
    assert "no module with uid" in q.err("ask_module", uid=bg, parameters=["pid"])
    # mv with unknown uids changes nothing
    assert q.ok("mv", uids=["nope", bg]) is None
    assert q.order() == [uid]
    # nothing failed to start, nothing ended
    assert q.svc.status()["ended"] == []


def test_set_bg_replaces_and_stops_the_old_background(make_queue):
    q = make_queue([mtype("good")], [mtype("bgtype"), mtype("bgother")])
    first = q.ok("set_bg", type="bgtype", args={})["uid"]
    pid1 = q.wait_param(first, "pid", bg=True)
    assert q.ok("bg") == {"uid": first, "type": "bgtype"}
    assert q.ok("bg", parameters={"bgtype": ["pid"]}) == {"uid": first, "type": "bgtype",
                                                          "parameters": {"pid": pid1}}
    assert q.ok("tell_background", uid=first, cmd="echo", args={"a": 1}) == {"a": 1}
    assert q.ok("ask_background", uid=first, parameters=["pid"]) == {"pid": pid1}
    second = q.ok("set_bg", type="bgother")["uid"]
    assert second != first
    assert q.ok("bg") == {"uid": second, "type": "bgother"}
    assert q.ok("bg", parameters={"bgtype": ["pid"]}) == {"uid": second, "type": "bgother"}
    assert "not the current background" in q.err("tell_background", uid=first, cmd="echo")
    assert q.ended(first)["ended_by"] == ladder.RM
    assert_gone(pid1)
    # the background is not in the queue and rm reaches it
    assert q.ok("queue") == []
    pid2 = q.wait_param(second, "pid", bg=True)
    q.ok("rm", uids=[second])
    assert q.ok("bg") is None
    assert_gone(pid2)


def test_uids_are_unique_for_the_life_of_the_service(make_queue):
    q = make_queue([mtype("good")], [mtype("bgtype")])
    seen = set()
    for _ in range(3):
        uid = q.add("good")
        seen.add(uid)
        q.ok("rm", uids=[uid])
    seen.add(q.ok("set_bg", type="bgtype")["uid"])
    q.err("add", type="nosuch")
    seen.add(q.add("good"))
    assert len(seen) == 5


# -- the queue rule ----------------------------------------------------------------


def test_queue_rule_top_plays_others_suspended_background_when_empty(make_queue):
    q = make_queue([mtype("rec", "--record")], [mtype("bgrec", "--record")])
    bg = q.ok("set_bg", type="bgrec")["uid"]
    assert q.log(bg, bg=True) == ["init", "play"]  # the queue is empty: the background plays
    a = q.add("rec")
    assert q.log(a) == ["init", "play"]
    assert q.log(bg, bg=True) == ["init", "play", "suspend"]
    b = q.add("rec")
    c = q.add("rec")
    assert q.log(b) == ["init"]  # never played: nothing to suspend
    assert q.log(c) == ["init"]
    assert q.log(a) == ["init", "play"]  # unchanged: nothing sent
    assert q.order() == [a, b, c]
    told = {uid: m["told"] for uid, m in q.live().items()}
    assert told == {a: "play", b: None, c: None, bg: "suspend"}

    # mv: the named first, in that order, the others after in their old order
    q.ok("mv", uids=[c, a])
    assert q.order() == [c, a, b]
    assert q.log(c) == ["init", "play"]
    assert q.log(a) == ["init", "play", "suspend"]
    assert q.log(b) == ["init"]
    assert q.log(bg, bg=True) == ["init", "play", "suspend"]

    # a mv that keeps the top sends nothing
    q.ok("mv", uids=[c, b])
    assert q.order() == [c, b, a]
    q.ok("mv", uids=[c])
    assert q.order() == [c, b, a]
    assert q.log(c) == ["init", "play"]
    assert q.log(a) == ["init", "play", "suspend"]
    assert q.log(b) == ["init"]

    q.ok("mv", uids=[a, "unknown", a])
    assert q.order() == [a, c, b]
    assert q.log(a) == ["init", "play", "suspend", "play"]
    assert q.log(c) == ["init", "play", "suspend"]
    assert q.log(b) == ["init"]

    # rm of the top: the next one plays
    q.ok("rm", uids=[a])
    assert q.order() == [c, b]
    assert q.log(c) == ["init", "play", "suspend", "play"]
    assert q.log(b) == ["init"]
    # rm of a module below the top: nothing is sent to the top
    q.ok("rm", uids=[b])
    assert q.order() == [c]
    assert q.log(c) == ["init", "play", "suspend", "play"]
    assert q.log(bg, bg=True) == ["init", "play", "suspend"]
    # the queue empties: the background plays again
    q.ok("rm", uids=[c])
    assert q.order() == []
    assert q.log(bg, bg=True) == ["init", "play", "suspend", "play"]
    # a new background while the queue is empty plays at once; the old one got rm
    bg2 = q.ok("set_bg", type="bgrec")["uid"]
    assert q.log(bg2, bg=True) == ["init", "play"]
    assert q.ended(bg)["ended_by"] == ladder.RM
    # and a new background while the queue is not empty does not play
    d = q.add("rec")
    assert q.log(bg2, bg=True) == ["init", "play", "suspend"]
    bg3 = q.ok("set_bg", type="bgrec")["uid"]
    assert q.log(bg3, bg=True) == ["init"]
    assert q.log(d) == ["init", "play"]


def test_module_failing_play_is_removed_and_the_rule_reapplied(make_queue):
    q = make_queue([mtype("rec", "--record"), mtype("frozen", "--freeze-after-init", "--record",
                                                    command_timeout=0.3)])
    a = q.add("rec")
    f = q.add("frozen")
    fpid = q.wait_param(f, "pid")
    assert q.order() == [a, f]
    q.ok("mv", uids=[f])  # f must play (and cannot), a is suspended
    assert q.order() == [a]
    assert q.log(a) == ["init", "play", "suspend", "play"]
    snap = q.ended(f)
    assert snap["ended_by"] == ladder.SIGTERM and not snap["start_failed"]
    assert "failed play/suspend" in snap["reason"]
    assert_gone(fpid)


def test_frozen_module_on_top_added_then_removed(make_queue):
    q = make_queue([mtype("frozen", "--freeze-after-init", command_timeout=0.3)])
    uid = q.add("frozen")  # init answered: add succeeds; play then fails
    assert q.order() == []
    snap = q.ended(uid)
    assert snap["ended_by"] == ladder.SIGTERM
    assert_gone(snap["pid"])


# -- misbehaving modules -----------------------------------------------------------


def test_no_connect(make_queue):
    q = make_queue([mtype("noconn", "--no-connect", connect_timeout=0.5)])
    t0 = time.monotonic()
    err = q.err("add", type="noconn")
    assert "did not connect" in err
    assert time.monotonic() - t0 < 5
    snap = q.ended(type="noconn")
    assert snap["start_failed"] is True and snap["ended_by"] == ladder.SIGTERM
    assert snap["state"] == "stopped"
    assert_gone(snap["pid"])
    assert q.ok("queue") == [] and q.live() == {}


def test_no_init_answer(make_queue):
    q = make_queue([mtype("mute", "--no-init-answer", init_timeout=0.5)])
    err = q.err("add", type="mute")
    assert "no answer to init" in err
    snap = q.ended(type="mute")
    assert snap["start_failed"] is True
    assert snap["ended_by"] == ladder.RM  # exits at the end of its command stream
    assert_gone(snap["pid"])
    assert q.ok("queue") == []


def test_init_error(make_queue):
    q = make_queue([mtype("bad", "--init-error")])
    err = q.err("add", type="bad")
    assert "init failed (--init-error)" in err
    snap = q.ended(type="bad")
    assert snap["start_failed"] is True and snap["ended_by"] in (ladder.RM, ladder.EXITED)
    assert_gone(snap["pid"])
    assert q.ok("queue") == []


def test_ignore_rm_is_terminated(make_queue):
    q = make_queue([mtype("stubborn", "--ignore-rm")])
    uid = q.add("stubborn")
    pid = q.wait_param(uid, "pid")
    q.ok("rm", uids=[uid])
    assert gone(pid)
    snap = q.ended(uid)
    assert snap["ended_by"] == ladder.SIGTERM and snap["returncode"] == -15
    assert q.ok("queue") == []


def test_ignore_term_is_killed(make_queue):
    q = make_queue([mtype("immortal", "--ignore-term")])
    uid = q.add("immortal")
    pid = q.wait_param(uid, "pid")
    q.ok("rm", uids=[uid])
    assert gone(pid)
    snap = q.ended(uid)
    assert snap["ended_by"] == ladder.SIGKILL and snap["returncode"] == -9


def test_freeze_after_init_tell_fails_and_module_is_removed(make_queue):
    q = make_queue([mtype("good"), mtype("frozen", "--freeze-after-init", command_timeout=0.3)])
    top = q.add("good")
    uid = q.add("frozen")  # below the top: told nothing yet
    pid = q.wait_param(uid, "pid")
    err = q.err("tell_module", uid=uid, cmd="echo")
    assert "failed and was removed" in err and "no answer" in err
    assert q.order() == [top]
    snap = q.ended(uid)
    assert snap["ended_by"] == ladder.SIGTERM
    assert_gone(pid)


def test_slow_command(make_queue):
    q = make_queue([mtype("slowok", "--slow-command", "0.05"),
                    mtype("slow", "--slow-command", "30", command_timeout=0.3)])
    ok = q.add("slowok")
    assert q.ok("tell_module", uid=ok, cmd="slow") == {"slept": 0.05}
    uid = q.add("slow")
    pid = q.wait_param(uid, "pid")
    t0 = time.monotonic()
    err = q.err("tell_module", uid=uid, cmd="slow")
    assert time.monotonic() - t0 < 2
    assert "no answer to do_slow within 0.3 s" in err
    assert q.order() == [ok]
    assert q.ended(uid)["ended_by"] == ladder.SIGTERM
    assert_gone(pid)
    assert "no module with uid" in q.err("tell_module", uid=uid, cmd="echo")


def test_crash_mid_command(make_queue):
    q = make_queue([mtype("crashy", "--crash-mid-command")])
    for _ in range(3):
        uid = q.add("crashy")
        pid = q.wait_param(uid, "pid")
        err = q.err("tell_module", uid=uid, cmd="crash")
        assert "failed and was removed" in err
        assert q.order() == []
        snap = q.ended(uid)
        assert snap["ended_by"] == ladder.EXITED and snap["returncode"] == 3
        assert_gone(pid)


def test_garbage_update_is_answered_and_module_stays(make_queue, caplog):
    q = make_queue([mtype("garbage", "--garbage", "--record")])
    with caplog.at_level(logging.WARNING, logger="shmooze.hosting.moduleprocess"):
        uid = q.add("garbage")
        assert q.wait_param(uid, "garbage_sent") is True
    assert any("bad update line" in r.getMessage() for r in caplog.records)
    # what the service answers such a line (the module never reads it)
    # Inside: a bad update line as the module's reader gets it: the module never reads the answer.
    answer = q.svc._find(uid)._apply_update(b"this is {not json")  # noqa: SLF001
    assert answer["success"] is False and "not JSON" in answer["error"]
    assert q.order() == [uid]
    # later updates still apply and commands still work
    assert q.log(uid) == ["init", "play"]
    assert q.ok("tell_module", uid=uid, cmd="echo", args={"k": 1}) == {"k": 1}
    assert q.live()[uid]["state"] == "running"


def test_flood_arrives_whole_and_service_stays_responsive(make_queue):
    q = make_queue([mtype("flood", "--flood", "10000"), mtype("good")])
    other = q.add("good")
    uid = q.add("flood")
    worst = 0.0
    deadline = time.monotonic() + 30
    while q.param(uid, "flood_done") is None:
        assert time.monotonic() < deadline, "flood did not finish"
        t0 = time.monotonic()
        q.ok("queue", parameters={"flood": ["flood"]})
        assert q.ok("tell_module", uid=other, cmd="echo", args={"n": 1}) == {"n": 1}
        worst = max(worst, time.monotonic() - t0)
    assert worst < 1.0
    assert q.ok("ask_module", uid=uid, parameters=["flood", "flood_done"]) == {"flood": 10000, "flood_done": 10000}
    assert q.ok("tell_module", uid=uid, cmd="echo", args={"after": True}) == {"after": True}
    q.ok("rm", uids=[uid])
    assert q.ended(uid)["ended_by"] == ladder.RM


def test_child_ignoring_term_is_stopped_with_the_module(make_queue):
    q = make_queue([mtype("parent", "--child-ignores-term")])
    uid = q.add("parent")
    pid = q.wait_param(uid, "pid")
    child = q.wait_param(uid, "child_pid")
    assert not gone(child)
    q.ok("rm", uids=[uid])
    assert q.ended(uid)["ended_by"] == ladder.RM
    assert gone(pid)
    assert_gone(child)


def test_exit_after_removes_itself(make_queue):
    q = make_queue([mtype("good"), mtype("leaver", "--exit-after", "0.3")])
    top = q.add("good")
    uid = q.add("leaver")
    pid = q.wait_param(uid, "pid")
    snap = q.ended(uid)
    assert snap["ended_by"] == ladder.EXITED and snap["returncode"] == 0
    assert "removed itself" in snap["reason"] or "module left" in snap["reason"]
    assert q.order() == [top]
    assert_gone(pid)


def test_exit_right_after_init_is_removed_even_below_the_top(make_queue):
    q = make_queue([mtype("good"), mtype("leaver", "--exit-after", "0")])
    top = q.add("good")
    for _ in range(5):
        uid = q.add("leaver")
        snap = q.ended(uid)
        assert snap["ended_by"] == ladder.EXITED
        wait_for(lambda: q.order() == [top], 5, what="the leaver to leave the queue")
        assert uid not in q.live()
        assert_gone(snap["pid"])


def test_connect_update_first(make_queue):
    q = make_queue([mtype("backwards", "--connect-update-first", "--record")])
    uid = q.add("backwards")
    assert q.log(uid) == ["init", "play"]
    assert q.ok("tell_module", uid=uid, cmd="echo", args={"a": "b"}) == {"a": "b"}
    pid = q.wait_param(uid, "pid")
    q.ok("rm", uids=[uid])
    assert q.ended(uid)["ended_by"] == ladder.RM
    assert gone(pid)


def test_shout_bash_module(make_queue):
    shout = ModuleType("shout", ("bash", SHOUT), rm_timeout=0.5, term_timeout=0.5)
    q = make_queue([shout, mtype("good")])
    uid = q.add("shout", text="hello wörld")
    assert q.ok("tell_module", uid=uid, cmd="shout") == "HELLO WöRLD"  # ASCII letters only
    assert q.ok("tell_module", uid=uid, cmd="shout", args={"text": "quiet"}) == "QUIET"
    wait_for(lambda: q.param(uid, "state") == "playing", 5, what="shout to play")
    assert q.param(uid, "text") == "hello wörld"
    other = q.add("good")
    q.ok("mv", uids=[other])
    wait_for(lambda: q.param(uid, "state") == "suspended", 5, what="shout to be suspended")
    pid = q.live()[uid]["pid"]
    q.ok("rm", uids=[uid])
    assert q.ended(uid)["ended_by"] == ladder.RM
    assert gone(pid)


# -- stopping ----------------------------------------------------------------------


def test_service_stop_stops_every_module_including_a_starting_one(make_queue):
    q = make_queue([mtype("good"), mtype("stubborn", "--ignore-term"),
                    mtype("noconn", "--no-connect", connect_timeout=20)],
                   [mtype("bgtype")])
    a = q.add("good")
    b = q.add("stubborn")
    bg = q.ok("set_bg", type="bgtype")["uid"]
    pids = {u: q.wait_param(u, "pid", bg=(u == bg)) for u in (a, b, bg)}
    answer = {}
    adder = threading.Thread(target=lambda: answer.update(q("add", type="noconn")))
    adder.start()
    starting = wait_for(lambda: [m for m in q.live().values() if m["type"] == "noconn" and m["pid"]], 10,
                        what="the module to be starting")[0]
    assert starting["state"] == "starting"
    t0 = time.monotonic()
    q.svc.stop()
    assert time.monotonic() - t0 < 5
    adder.join(10)
    assert not adder.is_alive()
    assert answer["success"] is False
    status = q.svc.status()
    assert status["stopping"] == []
    assert all(m["state"] == "stopped" for m in status["modules"])
    rungs = {s["uid"]: s["ended_by"] for s in status["ended"]}
    assert rungs[a] == ladder.RM and rungs[bg] == ladder.RM and rungs[b] == ladder.SIGKILL
    assert rungs[starting["uid"]] == ladder.SIGTERM
    assert_gone(*pids.values(), starting["pid"])
    assert "stopping" in q.err("add", type="good")


def test_stop_during_a_slow_init(make_queue, tmp_path):
    """A module that answers init after the service began stopping: add fails cleanly."""
    slow = tmp_path / "slowinit.py"
    slow.write_text(
        "import socket, sys, time\n"
        "host, cp, up = sys.argv[-3], int(sys.argv[-2]), int(sys.argv[-1])\n"
        "c = socket.create_connection((host, cp)); u = socket.create_connection((host, up))\n"
        "f = c.makefile('rb')\n"
        "f.readline(); time.sleep(0.4); c.sendall(b'{\"success\": true}\\n')\n"
        "while f.readline():\n"
        "    c.sendall(b'{\"success\": true}\\n')\n")
    q = make_queue([ModuleType("slowinit", ("python3", str(slow)), init_timeout=3, rm_timeout=1,
                               term_timeout=0.3)])
    answer = {}
    adder = threading.Thread(target=lambda: answer.update(q("add", type="slowinit")))
    adder.start()
    wait_for(lambda: [m for m in q.live().values() if m["state"] == "initializing"], 10,
             what="the module to be initializing")
    q.svc.stop()
    adder.join(10)
    assert not adder.is_alive()
    assert answer["success"] is False
    assert "failed to start: stopped while initializing" in answer["error"]
    snap = q.ended(type="slowinit")
    assert snap["state"] == "stopped"
    assert_gone(snap["pid"])


# -- over real HTTP: others are served during a slow ladder -------------------------


@pytest.fixture
def served(make_queue):
    def serve(*args, **kwargs):
        q = make_queue(*args, **kwargs)
        server = make_server("127.0.0.1", 0, service_app(q.svc), threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return q, f"http://127.0.0.1:{server.server_port}/"

    servers = []
    yield serve
    for server, thread in servers:
        server.shutdown()
        thread.join(5)
        server.server_close()


def test_clients_are_served_during_a_slow_ladder(served):
    q, url = served([mtype("immortal", "--ignore-term", rm_timeout=1, term_timeout=1), mtype("good")])
    client = ServiceClient(url, "queue", timeout=10)
    other = client.add(type="good")["uid"]
    uid = client.add(type="immortal")["uid"]
    pid = q.wait_param(uid, "pid")
    done = {}

    def remove():
        t0 = time.monotonic()
        done["result"] = ServiceClient(url, "queue", timeout=10).rm(uids=[uid])
        done["took"] = time.monotonic() - t0

    remover = threading.Thread(target=remove)
    remover.start()
    wait_for(lambda: [m for m in q.svc.status()["stopping"] if m["uid"] == uid], 5, what="the ladder to start")
    calls = 0
    while remover.is_alive():
        t0 = time.monotonic()
        listed = client.queue(_timeout=2)
        assert [e["uid"] for e in listed] == [other]
        assert client.tell_module(uid=other, cmd="echo", args={"i": calls}, _timeout=2) == {"i": calls}
        assert time.monotonic() - t0 < 0.5
        calls += 1
    remover.join()
    assert calls >= 5
    assert done["took"] >= 1.5  # rm waited for the whole ladder
    assert q.ended(uid)["ended_by"] == ladder.SIGKILL
    assert gone(pid)
    with pytest.raises(ServiceError, match="no module with uid"):
        client.tell_module(uid=uid, cmd="echo")


def test_os_pid_env(make_queue):
    """Modules run with the service's owner token and their uid in the environment."""
    q = make_queue([mtype("good")])
    uid = q.add("good")
    pid = q.wait_param(uid, "pid")
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
    assert env[b"SHMOOZE_MODULE_UID"] == uid.encode()
    assert b"SHMOOZE_OWNER" in env
    assert os.getpgid(pid) == pid  # its own process group: the ladder signals the group


def test_add_answers_after_the_parameters_the_module_set_before_answering_init(make_queue):
    """misbehave.py sets {"pid"} on its update stream, then answers init. The update stream is read
    by the I/O thread: while it is late (held here), the answer to add used to overtake the
    parameter, and an ask_module right after the add found none (the soak's "ask_module answered
    without the pid")."""
    q = make_queue([mtype("good", command_timeout=5.0)])  # (add waits up to this long for the I/O thread)
    loop = q.svc.loop
    for _ in range(2):
        held = threading.Event()
        loop.call_soon(lambda held=held: (held.set(), time.sleep(1.5)))  # the I/O thread busy while the module starts
        assert held.wait(5)
        uid = q.add("good")
        assert isinstance(q.param(uid, "pid"), int)
