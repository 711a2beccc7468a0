"""The module state machine and the stop ladder on plain processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from shmooze.hosting.moduleprocess import TRANSITIONS, ModuleBroken, ModuleProcess, State
from shmooze.moduletype import ModuleType
from shmooze.system import ladder, procutil
from shmooze.system.ioloop import IOLoop, pidfd
from tests.helpers import gone, wait_for

IGNORE_TERM = ("import signal, sys, time\n"
               "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
               "print('ready', flush=True)\n"
               "time.sleep(60)\n")


def spawn(argv, **kw) -> subprocess.Popen:
    """A process in its own session (like a module), so its pid is its group id."""
    return subprocess.Popen(argv, start_new_session=True, stdin=kw.pop("stdin", subprocess.DEVNULL), **kw)


def ready(proc: subprocess.Popen) -> subprocess.Popen:
    assert proc.stdout.readline().strip() == b"ready"
    proc.stdout.close()
    return proc


@pytest.fixture
def procs():
    """Processes a test starts; killed (group and all) and reaped at the end whatever happened."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
        p.wait(5)


# -- the state machine -------------------------------------------------------------


@pytest.fixture
def loop():
    lp = IOLoop("test-io")
    yield lp
    lp.stop()


def handle(loop) -> ModuleProcess:
    return ModuleProcess(ModuleType("t", ("true",)), "uid-1", loop)


def test_transitions_table_shape():
    states = set(State)
    assert {a for a, _ in TRANSITIONS} | {b for _, b in TRANSITIONS} == states
    # every live state can reach stopping, and stopped is final
    for s in (State.STARTING, State.INITIALIZING, State.RUNNING):
        assert (s, State.STOPPING) in TRANSITIONS
    assert not [t for t in TRANSITIONS if t[0] is State.STOPPED]
    assert all(isinstance(why, str) and why for why in TRANSITIONS.values())


@pytest.mark.parametrize("start", list(State))
@pytest.mark.parametrize("new", list(State))
def test_transitions_are_enforced(loop, start, new):
    m = handle(loop)
    m.state = start
    if (start, new) in TRANSITIONS:
        # Inside: each transition of the state machine, alone: the table's enforcement.
        m._enter(new)  # noqa: SLF001
        assert m.state is new
    else:
        with pytest.raises(RuntimeError, match="no transition"):
            m._enter(new)  # noqa: SLF001
        assert m.state is start


def test_happy_path_and_alive(loop):
    m = handle(loop)
    assert m.alive
    for s in (State.INITIALIZING, State.RUNNING):
        # Inside: the states' liveness, entered one by one.
        m._enter(s)  # noqa: SLF001
        assert m.alive
    m._enter(State.STOPPING)  # noqa: SLF001
    assert not m.alive
    m._enter(State.STOPPED)  # noqa: SLF001
    assert not m.alive


def test_stop_without_a_process_and_twice(loop):
    m = handle(loop)
    assert m.stop("test") == ladder.EXITED
    assert m.state is State.STOPPED and m.wait_stopped(0)
    assert m.stop("again") == ladder.EXITED  # later callers get the recorded rung
    snap = m.snapshot()
    assert snap["state"] == "stopped" and snap["ended_by"] == "exited" and snap["reason"] == "test"


def test_commands_need_a_running_module(loop):
    m = handle(loop)
    with pytest.raises(ModuleBroken, match="is starting"):
        m.call("play")
    m.stop("test")
    with pytest.raises(ModuleBroken, match="is stopped"):
        m.call("play")


def test_start_failure_of_a_missing_program(loop):
    m = ModuleProcess(ModuleType("t", ("/nonexistent/program",)), "uid-2", loop)
    with pytest.raises(Exception, match="failed to start: cannot run"):
        m.start({})
    assert m.state is State.STOPPED and m.start_failed


# -- the ladder on plain processes ---------------------------------------------------


def test_already_exited_process(procs):
    p = spawn(["true"])
    procs.append(p)
    wait_for(lambda: p.poll() is not None, 5)
    asked = []
    assert ladder.stop_ladder(p, lambda: asked.append(1), 0.2, 0.2) == ladder.EXITED
    assert asked == []  # nothing to ask


def test_exit_on_request_is_rung_rm(procs):
    p = spawn(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    procs.append(p)
    t0 = time.monotonic()
    assert ladder.stop_ladder(p, p.stdin.close, 5, 5) == ladder.RM
    assert time.monotonic() - t0 < 2
    assert p.returncode == 0
    # the caller may name the first rung: "exited" when the module was leaving on its own
    q = spawn(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    procs.append(q)
    assert ladder.stop_ladder(q, q.stdin.close, 5, 5, first_rung=ladder.EXITED) == ladder.EXITED


@pytest.mark.parametrize("use_pidfd", [False, True])
def test_sleep_is_terminated(procs, use_pidfd):
    p = spawn(["sleep", "60"])
    procs.append(p)
    fd = pidfd(p.pid) if use_pidfd else None
    try:
        t0 = time.monotonic()
        assert ladder.stop_ladder(p, None, 0.2, 5, pidfd=fd) == ladder.SIGTERM
        assert time.monotonic() - t0 < 2
    finally:
        if fd is not None:
            os.close(fd)
    assert p.returncode == -signal.SIGTERM
    assert gone(p.pid)


@pytest.mark.parametrize("use_pidfd", [False, True])
def test_term_ignoring_process_is_killed(procs, use_pidfd):
    p = ready(spawn([sys.executable, "-c", IGNORE_TERM], stdout=subprocess.PIPE))
    procs.append(p)
    fd = pidfd(p.pid) if use_pidfd else None
    try:
        t0 = time.monotonic()
        assert ladder.stop_ladder(p, None, 0.2, 0.2, pidfd=fd) == ladder.SIGKILL
        assert time.monotonic() - t0 < 2
    finally:
        if fd is not None:
            os.close(fd)
    assert p.returncode == -signal.SIGKILL


def group_script(child_code: str) -> str:
    """A leader that starts a child in its group, prints the child's pid and waits for EOF."""
    return ("import subprocess, sys\n"
            f"c = subprocess.Popen([sys.executable, '-c', {child_code!r}], stdout=subprocess.PIPE)\n"
            "c.stdout.readline()\n"
            "print(c.pid, flush=True)\n"
            "sys.stdin.read()\n")


def test_group_members_are_stopped_with_the_leader(procs):
    """The leader exits on request; its child ignoring SIGTERM is swept (SIGTERM, then SIGKILL)."""
    p = spawn([sys.executable, "-c", group_script(IGNORE_TERM)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    procs.append(p)
    child = int(p.stdout.readline())
    p.stdout.close()
    assert os.getpgid(child) == p.pid
    assert set(procutil.group_members(p.pid)) == {p.pid, child}
    assert ladder.stop_ladder(p, p.stdin.close, 5, 5) == ladder.RM
    wait_for(lambda: gone(child), 5, what="the group member to end")
    assert procutil.group_members(p.pid) == []


def test_group_members_are_terminated_with_a_terminated_leader(procs):
    child_code = "import time\nprint('ready', flush=True)\ntime.sleep(60)\n"
    leader = ("import subprocess, sys, time\n"
              f"c = subprocess.Popen([sys.executable, '-c', {child_code!r}], stdout=subprocess.PIPE)\n"
              "c.stdout.readline()\n"
              "print(c.pid, flush=True)\n"
              "time.sleep(60)\n")
    p = spawn([sys.executable, "-c", leader], stdout=subprocess.PIPE)
    procs.append(p)
    child = int(p.stdout.readline())
    p.stdout.close()
    t0 = time.monotonic()
    assert ladder.stop_ladder(p, None, 0.2, 5) == ladder.SIGTERM  # SIGTERM went to the whole group
    assert time.monotonic() - t0 < 2
    wait_for(lambda: gone(child), 5, what="the group member to end")


def test_sweep_group_of_an_exited_leader(procs):
    """A leader that had already exited: its group is still swept."""
    p = spawn([sys.executable, "-c", group_script(IGNORE_TERM)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    procs.append(p)
    child = int(p.stdout.readline())
    p.stdout.close()
    p.stdin.close()
    wait_for(lambda: p.poll() is not None, 5)
    assert not gone(child)
    assert ladder.stop_ladder(p, None, 0.2, 0.2) == ladder.EXITED
    wait_for(lambda: gone(child), 5, what="the orphaned group member to end")
    assert ladder.sweep_group(p.pid) == 0


@pytest.mark.parametrize("use_pidfd", [False, True])
def test_many_ladders_at_once_each_rung_recorded_and_waits_not_added_up(procs, use_pidfd):
    """stop_ladders: one that exits on request, three that wait for SIGTERM and one that ignores it, on one
    thread; each gets its own rung, the waits run together (one after another would take 3 x 1 s more),
    each group is heard as it ends (the quick one first, the SIGKILLed one last) and every group is swept."""
    asking = spawn([sys.executable, "-c", group_script(IGNORE_TERM)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    child = int(asking.stdout.readline())
    asking.stdout.close()
    sleepers = [spawn(["sleep", "60"]) for _ in range(3)]
    stubborn = ready(spawn([sys.executable, "-c", IGNORE_TERM], stdout=subprocess.PIPE))
    everyone = [asking, *sleepers, stubborn]
    procs.extend(everyone)
    fds = [pidfd(p.pid) if use_pidfd else None for p in everyone]
    asked, heard, ended = [], [], []
    stops = [ladder.Stopping(p, 1.0, 1.0, pidfd=fd, tag=i,
                             ask=lambda i=i: asked.append(i), hear=lambda i=i: heard.append((i, list(asked))))
             for i, (p, fd) in enumerate(zip(everyone, fds))]
    stops[0].hear = asking.stdin.close  # (it exits once asked)
    try:
        t0 = time.monotonic()
        ladder.stop_ladders(stops, kill_timeout=5, ended=lambda group: ended.append([s.tag for s in group]))
        took = time.monotonic() - t0
    finally:
        for fd in fds:
            if fd is not None:
                os.close(fd)
    assert [s.rung for s in stops] == [ladder.RM, ladder.SIGTERM, ladder.SIGTERM, ladder.SIGTERM, ladder.SIGKILL]
    assert asked == [0, 1, 2, 3, 4]
    assert [i for i, _ in heard] == [1, 2, 3, 4] and all(seen == [0, 1, 2, 3, 4] for _, seen in heard)  # all asked first
    assert 2.0 <= took < 4.0, took  # rm wait and SIGTERM wait of 1 s each, together
    assert ended[0] == [0] and ended[-1] == [4] and sorted(sum(ended, [])) == [0, 1, 2, 3, 4]
    assert [p.returncode for p in sleepers] == [-signal.SIGTERM] * 3 and stubborn.returncode == -signal.SIGKILL
    wait_for(lambda: gone(child), 5, what="the group member of the one that exited on request to end")


def test_wait_exit(procs):
    p = spawn(["sleep", "60"])
    procs.append(p)
    t0 = time.monotonic()
    assert ladder.wait_exit(p, 0.1) is False
    assert 0.05 < time.monotonic() - t0 < 1
    p.terminate()
    assert ladder.wait_exit(p, 5) is True
    assert p.returncode == -signal.SIGTERM


def test_io_loop_runs_every_call_from_many_threads(loop):
    """call_soon wakes the loop only when no call is waiting already: none is left waiting for a wake-up."""
    import threading

    ran_all: list[bool] = []

    def caller() -> None:
        for _ in range(300):
            ran = threading.Event()
            loop.call_soon(ran.set)
            loop.call_soon(lambda: None)  # (a second call while the first waits: no wake-up of its own)
            if not ran.wait(5):
                ran_all.append(False)
                return
        ran_all.append(True)

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert ran_all == [True] * 4


def test_io_loop_removes_closed_and_rewrapped_objects(loop):
    """A closed stream is found without its fd, a raw fd through a new wrapper; the fds can be watched again."""
    import threading

    from shmooze.hosting.moduleprocess import _FdObject

    def on_loop(fn):
        done, out = threading.Event(), []
        loop.call_soon(lambda: (out.append(fn()), done.set()))
        assert done.wait(5)
        return out[0]

    r, w = os.pipe()
    stream = os.fdopen(r, "rb", buffering=0)
    r2, w2 = os.pipe()
    on_loop(lambda: (loop.add_reader(stream, lambda: None), loop.add_reader(_FdObject(r2), lambda: None)))
    stream.close()  # closed while watched: its fd number is free again
    on_loop(lambda: (loop.remove(stream), loop.remove(_FdObject(r2)), loop.remove(stream)))
    # Inside: no registration left behind: the loop's own tables.
    assert on_loop(lambda: (len(loop._channels), len(loop._fds), len(loop._selector.get_map()))) == (0, 0, 1)  # noqa: SLF001
    again = os.fdopen(os.dup(w), "wb", buffering=0)  # may reuse the closed stream's fd number
    on_loop(lambda: loop.add_reader(again, lambda: None))
    on_loop(lambda: loop.remove(again))
    again.close()
    for fd in (w, r2, w2):
        os.close(fd)
