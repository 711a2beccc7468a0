"""The pool service in-process: every module runs at once, each told ``play`` right after ``init``."""

from __future__ import annotations

import pytest

from shmooze.pool import Pool
from shmooze.system import ladder
from tests.helpers import gone, wait_for
from tests.test_queue import mtype


@pytest.fixture
def make_pool(make_host):
    """Build started pools (see the make_host fixture in tests/conftest.py)."""
    return lambda modules, **options: make_host(Pool, modules, **options)


def test_pool_commands(make_pool):
    p = make_pool([mtype("b"), mtype("a")])
    assert p.ok("modules_available") == ["a", "b"]
    cmds = set(p.ok("commands"))
    assert {"modules_available", "add", "rm", "pool", "tell_module", "ask_module"} <= cmds
    assert not {"set_bg", "mv", "queue", "bg", "tell_background", "ask_background"} & cmds
    assert p.ok("pool") == []


def test_every_module_plays_after_init(make_pool):
    p = make_pool([mtype("rec", "--record"), mtype("other", "--record")])
    uids = [p.add("rec"), p.add("other"), p.add("rec")]
    for uid in uids:
        assert p.log(uid) == ["init", "play"]
    assert {m["told"] for m in p.live().values()} == {"play"}
    # removing one changes nothing for the others
    p.ok("rm", uids=[uids[0]])
    assert p.log(uids[1]) == ["init", "play"]
    assert p.log(uids[2]) == ["init", "play"]
    assert p.ended(uids[0])["ended_by"] == ladder.RM


def test_pool_listing_tell_ask_rm(make_pool):
    p = make_pool([mtype("a"), mtype("b")])
    a1 = p.add("a")
    b1 = p.add("b")
    a2 = p.add("a")
    pids = {u: p.wait_param(u, "pid") for u in (a1, b1, a2)}
    assert p.ok("pool") == [{"uid": a1, "type": "a"}, {"uid": b1, "type": "b"}, {"uid": a2, "type": "a"}]
    assert p.ok("pool", parameters={"a": ["pid", "nope"]}) == [
        {"uid": a1, "type": "a", "parameters": {"pid": pids[a1]}},
        {"uid": b1, "type": "b"},
        {"uid": a2, "type": "a", "parameters": {"pid": pids[a2]}},
    ]
    assert p.ok("tell_module", uid=b1, cmd="echo", args={"z": None}) == {"z": None}
    assert p.ok("ask_module", uid=a2, parameters=["pid"]) == {"pid": pids[a2]}
    assert "no module with uid 'x'" in p.err("tell_module", uid="x", cmd="echo")
    assert "no module with uid 'x'" in p.err("ask_module", uid="x", parameters=[])
    assert "unknown module type 'c'" in p.err("add", type="c")
    p.ok("rm", uids=[b1, "unknown"])
    assert gone(pids[b1])
    assert [e["uid"] for e in p.ok("pool")] == [a1, a2]


def test_pool_module_failing_play_is_removed(make_pool):
    p = make_pool([mtype("good"), mtype("frozen", "--freeze-after-init", command_timeout=0.3)])
    good = p.add("good")
    frozen = p.add("frozen")  # init answered; play then fails
    assert [e["uid"] for e in p.ok("pool")] == [good]
    snap = p.ended(frozen)
    assert snap["ended_by"] == ladder.SIGTERM and "failed play/suspend" in snap["reason"]
    wait_for(lambda: gone(snap["pid"]), 5)


def test_pool_module_leaving_and_broken(make_pool):
    p = make_pool([mtype("leaver", "--exit-after", "0.2"), mtype("crashy", "--crash-mid-command"),
                   mtype("good")])
    good = p.add("good")
    leaver = p.add("leaver")
    crashy = p.add("crashy")
    assert "failed and was removed" in p.err("tell_module", uid=crashy, cmd="crash")
    assert p.ended(crashy)["ended_by"] == ladder.EXITED
    assert p.ended(leaver)["ended_by"] == ladder.EXITED
    wait_for(lambda: [e["uid"] for e in p.ok("pool")] == [good], 5)


def test_pool_stop_stops_everything(make_pool):
    p = make_pool([mtype("good"), mtype("immortal", "--ignore-term")])
    uids = [p.add("good"), p.add("immortal"), p.add("good")]
    pids = [p.wait_param(u, "pid") for u in uids]
    p.svc.stop()
    rungs = {s["uid"]: s["ended_by"] for s in p.svc.status()["ended"]}
    assert rungs == {uids[0]: ladder.RM, uids[1]: ladder.SIGKILL, uids[2]: ladder.RM}
    for pid in pids:
        assert gone(pid)
    assert "stopping" in p.err("add", type="good")
