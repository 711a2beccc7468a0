"""A host's lifecycle events, with real module processes: what a subscriber hears, and in what order.

A recording subscriber is added after the host's own (journal, command log, operations figures,
restart policies, change events): when it hears an event, each of those has already done its part.
"""

from __future__ import annotations

import threading
import time

import pytest

from shmooze.hosting.lifecycle import Ended, Lifecycle, Placed, Removed, Started, StartFailed, Subscriber, Told, Updated
from shmooze.hosting.moduleprocess import ModuleProcess
from shmooze.moduletype import ModuleType
from shmooze.pool import Pool
from shmooze.queue import Queue
from shmooze.system.ioloop import IOLoop
from tests.helpers import ROOT, Driver, gone, wait_for

MISBEHAVE = str(ROOT / "tests" / "modules" / "misbehave.py")


def mtype(name: str, *flags: str) -> ModuleType:
    return ModuleType(name, ("python3", MISBEHAVE, *flags), rm_timeout=0.5, term_timeout=0.5, command_timeout=2.0)


class Recorder(Subscriber):
    """Every event it hears, with what the host's own subscribers had done by then."""

    def __init__(self, host):
        self.host = host
        self.heard: list[tuple[str, object, dict]] = []
        self.lock = threading.Lock()

    def _kinds_published(self, uid: str) -> set[str]:
        events = self.host.events.since(0)["events"]
        return {e["kind"] for e in events if e.get("uid") == uid}

    def _keep(self, event, **seen) -> None:
        with self.lock:
            self.heard.append((event.handler, event, seen))

    def started(self, event: Started) -> None:
        self._keep(event)

    def start_failed(self, event: StartFailed) -> None:
        self._keep(event)

    def placed(self, event: Placed) -> None:
        self._keep(event, journal_tickets=self.host.journal.tickets, changes=self._kinds_published(event.module.uid))

    def updated(self, event: Updated) -> None:
        self._keep(event, changes=self._kinds_published(event.module.uid))

    def told(self, event: Told) -> None:
        self._keep(event, changes=self._kinds_published(event.module.uid))

    def removed(self, event: Removed) -> None:
        self._keep(event, changes=self._kinds_published(event.modules[0].uid))

    def ended(self, event: Ended) -> None:
        ended = [snap["uid"] for snap in self.host.ops.ended_modules]
        self._keep(event, ended=ended, changes=self._kinds_published(event.module.uid))

    def of(self, uid: str) -> list[tuple[str, object, dict]]:
        with self.lock:
            return [(h, e, seen) for h, e, seen in self.heard
                    if uid in [m.uid for m in getattr(e, "modules", [getattr(e, "module", None)]) if m is not None]]


@pytest.fixture
def queue(tmp_path):
    host = Queue([mtype("m"), mtype("crash", "--crash-in-init")], [mtype("bg")],
                 journal=str(tmp_path / "queue.journal"))
    recorder = Recorder(host)
    host.lifecycle.subscribe(recorder)
    host.start()
    wait_for(lambda: not host.restoring, 10, what="the (empty) restore")
    yield Driver(host), recorder
    host.stop()


def test_the_hosts_subscribers_are_declared_in_one_order():
    names = [type(s).__name__ for s in Pool([mtype("m")]).lifecycle.subscribers]
    assert names == ["JournalRecorder", "CommandRecorder", "OriginalLog", "HostOps", "RestartPolicies", "ModuleChanges"]


def test_publish_calls_each_subscriber_in_order_with_only_its_own_methods():
    heard = []

    class First(Subscriber):
        def ended(self, event):
            heard.append(("first", event.rung))

    class Second(Subscriber):
        def ended(self, event):
            heard.append(("second", event.rung))

        def started(self, event):
            heard.append(("second started", event.kind))

    loop = IOLoop("lifecycle-test")
    try:
        module = ModuleProcess(mtype("m"), "u-1", loop)  # a handle, never spawned
        module.ended_by = "term"
        lifecycle = Lifecycle([First(), Second()])
        lifecycle.publish(Ended(module))
        lifecycle.publish(Started(module, {}, "module"))
    finally:
        loop.stop()
    assert heard == [("first", "term"), ("second", "term"), ("second started", "module")]


def test_a_module_is_started_placed_updated_removed_and_ended_with_its_rung(queue):
    d, recorder = queue
    journaled = d.svc.journal.tickets
    uid = d.add("m", x=1)  # answered once placed: its placed event was heard
    d.ok("rm", uids=[uid])  # answered once stopped: its end was heard
    heard = recorder.of(uid)
    handlers = [h for h, _, _ in heard]
    # misbehave.py sets its pid during init (an update before it is started), then nothing until rm.
    assert handlers == ["updated", "started", "placed", "told", "removed", "ended"], handlers
    by = {h: (event, seen) for h, event, seen in heard}
    updated, _ = by["updated"]
    assert updated.cmd == "set_parameters" and "pid" in updated.args["parameters"]
    assert "parameters" in by["updated"][1]["changes"]  # the change events came first
    started, _ = by["started"]
    assert started.args == {"x": 1} and started.kind == "module"
    placed, seen = by["placed"]
    assert placed.logged_as == "add" and not placed.restarted and placed.displaced == []
    assert seen["journal_tickets"] > journaled and "added" in seen["changes"]  # journaled and announced before
    told, seen = by["told"]
    assert told.cmd == "play" and "told" in seen["changes"]  # the only entry of the queue plays
    removed, seen = by["removed"]
    assert removed.reason == "rm" and "removed" in seen["changes"]
    ended, seen = by["ended"]
    assert ended.rung == "rm" == d.ended(uid)["ended_by"]  # it answered rm and left
    assert seen["ended"][-1] == uid and "stopped" in seen["changes"]  # recorded and announced before


def test_a_new_background_displaces_the_old_one_in_its_placed_event(queue):
    d, recorder = queue
    old = d.ok("set_bg", type="bg")["uid"]
    new = d.ok("set_bg", type="bg")["uid"]
    placed = next(e for h, e, _ in recorder.of(new) if h == "placed")
    assert [m.uid for m in placed.displaced] == [old] and placed.kind == "background"
    wait_for(lambda: any(h == "ended" for h, _, _ in recorder.of(old)), 10, what="the old background's end")
    ended = next(e for h, e, _ in recorder.of(old) if h == "ended")
    assert ended.module.stop_reason == "replaced by a new background" and ended.rung == "rm"


def test_a_start_that_fails_is_heard_as_failed_then_ended_never_placed(queue):
    d, recorder = queue
    assert "failed to start" in d.err("add", type="crash")
    with recorder.lock:
        heard = [(h, e) for h, e, _ in recorder.heard if h in ("start_failed", "ended", "placed", "started")]
    assert [h for h, _ in heard] == ["start_failed", "ended"]
    assert heard[1][1].rung == "exited" and heard[1][1].module.start_failed


def test_modules_removed_at_once_stop_together_each_with_its_rung(tmp_path):
    """One rm of four modules: one leaves on rm, one has a command in flight (answered, then rm), one
    ignores rm (SIGTERM), one ignores SIGTERM too (SIGKILL). Each ends with its own rung and its end heard
    once, the quick one's before the SIGKILLed one's; their waits run together, not one after another
    (rm and SIGTERM waits of 0.5 s, a command of 1.5 s: about 1.5 s together, 2.5 s or more in turn)."""
    host = Pool([mtype("m"), mtype("slow", "--record", "--slow-command", "1.5"), mtype("stubborn", "--ignore-rm"),
                 mtype("deaf", "--ignore-term")], journal=str(tmp_path / "pool.journal"))
    recorder = Recorder(host)
    host.lifecycle.subscribe(recorder)
    host.start()
    try:
        d = Driver(host)
        uids = {name: d.add(name) for name in ("m", "slow", "stubborn", "deaf")}
        pids = {name: host.table.find(uid).pid for name, uid in uids.items()}
        answer: list = []
        command = threading.Thread(target=lambda: answer.append(d.ok("tell_module", uid=uids["slow"], cmd="slow")))
        command.start()
        wait_for(lambda: "do_slow" in (d.param(uids["slow"], "log") or []), 10, what="the slow command in flight")
        t0 = time.monotonic()
        d.ok("rm", uids=list(uids.values()))
        took = time.monotonic() - t0
        command.join(10)
        assert answer == [{"slept": 1.5}]  # the command in flight got its answer before the module went
        rungs = {name: d.ended(uid)["ended_by"] for name, uid in uids.items()}
        assert rungs == {"m": "rm", "slow": "rm", "stubborn": "sigterm", "deaf": "sigkill"}, rungs
        assert took < 2.2, took
        ends = [event.module.uid for handler, event, _ in recorder.heard if handler == "ended"]
        assert sorted(ends) == sorted(uids.values())  # each end heard once
        assert ends.index(uids["m"]) < ends.index(uids["deaf"])
        assert all(gone(pid) for pid in pids.values())
    finally:
        host.stop()
