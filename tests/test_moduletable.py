"""The module table's transitions and the placement policies, on module handles that are never spawned.

Each test moves handles through the states of shmooze.hosting.moduletable (starting, placed, told,
stopping, out) and checks what every view of the table says at each step.
"""

from __future__ import annotations

import pytest

from shmooze.hosting.moduleprocess import ModuleProcess
from shmooze.hosting.moduletable import ModuleTable
from shmooze.moduletype import ModuleType
from shmooze.pool import PoolSet
from shmooze.queue import QueueOrder
from shmooze.system.ioloop import IOLoop

TYPE = ModuleType("t", ("true",))


@pytest.fixture
def handles():
    loop = IOLoop("moduletable-test")
    yield lambda *uids: [ModuleProcess(TYPE, uid, loop) for uid in uids]
    loop.stop()


def uids(modules):
    return [m.uid for m in modules]


def test_a_module_goes_through_every_state_and_each_view_follows(handles):
    table = ModuleTable(PoolSet())
    a, b = handles("a", "b")
    table.starting(a)
    assert uids(table.live()) == ["a"] and table.placed() == [] and table.find("a") is None
    table.started(a)  # init answered: in no state until it is placed
    assert table.live() == []
    assert table.place(a, "module", restarted=False) == []  # (it displaced nothing)
    table.starting(b)
    assert uids(table.placed()) == ["a"] and uids(table.live()) == ["a", "b"] and table.find("a") is a
    # Placed and told nothing: the pool's rule tells it play, once.
    assert table.orders() == [(a, "play")]
    table.told(table.orders())
    assert a.told == "play" and table.orders() == []
    a.refused = 3
    assert table.take_out(["a", "nobody", "a"]) == [a]  # unknown and repeated uids are skipped
    assert table.find("a") is None and table.placed() == [] and uids(table.stopping()) == ["a"]
    assert table.take_out(["a"]) == []  # taken out once
    table.stopped(a)
    assert table.stopping() == [] and table.refused_before == 3


def test_the_table_refuses_starts_when_full_or_closing(handles):
    table = ModuleTable(PoolSet())
    a, b = handles("a", "b")
    table.starting(a)
    table.started(a)
    table.place(a, "module", restarted=False)
    table.starting(b)
    assert table.refusal(3) is None
    assert table.refusal(2) == "already holds 2 modules, its limit"  # placed and starting both count
    assert table.close() is False and table.closing
    assert table.close() is True  # a second stop learns that the first runs
    assert table.refusal(3) == "is stopping"


def test_uids_are_new_each_time_and_differ_between_tables():
    first, second = ModuleTable(PoolSet()), ModuleTable(PoolSet())
    made = [first.new_uid() for _ in range(3)] + [second.new_uid()]
    assert len(set(made)) == 4


def test_queue_order_plays_the_top_and_the_background_only_when_empty(handles):
    order = QueueOrder()
    table = ModuleTable(order)
    one, two, bg, bg2 = handles("one", "two", "bg", "bg2")
    for module, kind in ((one, "module"), (two, "module"), (bg, "background")):
        assert table.place(module, kind, restarted=False) == []
    assert uids(table.placed()) == ["one", "two", "bg"]
    assert table.orders() == [(one, "play")]
    table.told(table.orders())
    # A new background displaces the old one, which is taken out; a restarted one finds no place once
    # another background is set, and a restarted queue entry never does.
    assert table.place(bg2, "background", restarted=False) == [bg]
    assert uids(table.stopping()) == ["bg"] and table.find("bg") is None and order.background is bg2
    assert table.place(bg, "background", restarted=True) is None and table.find("bg") is None
    assert table.place(one, "module", restarted=True) is None and uids(order.entries) == ["one", "two"]
    assert order.move_first([two]) == ["two", "one"]
    assert table.orders() == [(one, "suspend"), (two, "play")]
    table.told(table.orders())
    table.take_out(["one", "two"])
    assert table.orders() == [(bg2, "play")]  # the queue is empty: the background plays


def test_restored_modules_go_before_those_added_meanwhile(handles):
    new, old1, old2, bg_new, bg_old = handles("new", "old1", "old2", "bg-new", "bg-old")
    queue, pool = ModuleTable(QueueOrder()), ModuleTable(PoolSet())
    queue.place(new, "module", restarted=False)
    queue.place(bg_new, "background", restarted=False)
    assert queue.place_restored([old1, old2], bg_old) == [bg_old]  # a background set meanwhile stays
    assert uids(queue.placed()) == ["old1", "old2", "new", "bg-new"] and queue.find("bg-old") is None
    assert queue.find("old2") is old2 and queue.orders()[0] == (old1, "play")  # restored, told nothing yet
    pool.place(new, "module", restarted=False)
    assert pool.place_restored([old1, old2], bg_old) == [bg_old]  # a pool has no background
    assert uids(pool.placed()) == ["old1", "old2", "new"]
    assert [(m.uid, cmd) for m, cmd in pool.orders()] == [("new", "play"), ("old1", "play"), ("old2", "play")]
