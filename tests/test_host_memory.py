"""A host's memory over many modules added and removed: what it keeps once they are gone is bounded."""

from __future__ import annotations

import gc
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shmooze.events import ChangeLog
from shmooze.moduletype import python_module
from tests.containment_apps import MISBEHAVE

ROUND = 20  # modules added at once (8 adds at a time), then removed by one rm


def _round(q) -> None:
    with ThreadPoolExecutor(8) as adds:
        uids = list(adds.map(lambda _i: q.add("good"), range(ROUND)))
    q.ok("rm", uids=uids)


def _traced() -> int:
    gc.collect()
    return sum(stat.size for stat in tracemalloc.take_snapshot().statistics("filename"))


def test_adding_and_removing_many_modules_does_not_grow_the_retained_heap(make_queue):
    """The Python heap after rounds of modules added and removed stays where the first rounds left it:
    nothing is kept per module once it is gone (bounded histories are full after the warm-up rounds:
    the change log is cut to 60 events, the recent ends to 10). (The RSS of a service does grow over
    the first rounds, by free memory that malloc and pymalloc keep, see bench/module_memory.py.)"""
    q = make_queue([python_module("good", MISBEHAVE)], keep_ended=10)
    q.svc.events = ChangeLog(keep=60)
    _round(q)
    tracemalloc.start()
    try:
        _round(q)
        _round(q)
        after_warmup = _traced()
        for _ in range(5):
            _round(q)
        grown = _traced() - after_warmup
    finally:
        tracemalloc.stop()
    # 100 modules added and removed after the warm-up: under 1 KiB each in all, where a module's handle
    # kept (with its process, streams and selector keys) costs 3 KiB and more. What grows is bounded, not
    # per module: the I/O loop's dicts of watched fds reach the size of their peak, the histories turn over
    # (rounds swing by 30 KiB either way); about one small object (60 bytes) per module is still unexplained.
    assert grown < 100 * 1024, f"the heap grew by {grown} bytes over 100 modules added and removed"
    assert q.ok("status")["modules"] == []


def test_removed_modules_are_let_go_at_once(make_queue, tmp_path):
    """Once removed, a module's handle (its process, streams, buffers) is let go at once: nothing keeps it
    until something else happens (the I/O loop kept the last calls it ran while it waited; with a journal,
    the module's pending parameters were kept 5 s more)."""
    from shmooze.hosting.moduleprocess import ModuleProcess
    from tests.helpers import wait_for

    keeper = str(Path(__file__).parent / "modules" / "keeper.py")
    q = make_queue([python_module("keeper", keeper)], journal=str(tmp_path / "queue.journal"))
    uids = [q.add("keeper", n=n) for n in range(10)]
    for uid in uids:
        q.wait_param(uid, "args")

    def alive() -> int:
        gc.collect()
        return sum(isinstance(o, ModuleProcess) for o in gc.get_objects())

    assert alive() >= 10
    q.ok("rm", uids=uids)
    wait_for(lambda: alive() == 0, 2, interval=0.1, what="the removed modules to be let go")


def test_removed_modules_are_freed_without_the_cycle_collector(make_queue):
    """A removed module's handle is freed as soon as the last reference goes, by reference counting: no
    cycle keeps it (its update channel's reader, a method of the handle, did), for a busy service collects
    its oldest generation seldom, and the served pool grew round after round by the handles it kept."""
    from shmooze.hosting.moduleprocess import ModuleProcess
    from tests.helpers import wait_for

    keeper = str(Path(__file__).parent / "modules" / "keeper.py")
    q = make_queue([python_module("keeper", keeper)])
    uids = [q.add("keeper", n=n) for n in range(10)]
    for uid in uids:
        q.wait_param(uid, "args")
    gc.collect()
    gc.disable()  # what is freed now is freed by reference counting alone
    try:
        assert sum(isinstance(o, ModuleProcess) for o in gc.get_objects()) >= 10
        q.ok("rm", uids=uids)
        wait_for(lambda: not any(isinstance(o, ModuleProcess) for o in gc.get_objects()), 5, interval=0.1,
                 what="the removed modules' handles to be freed without a collection")
    finally:
        gc.enable()
