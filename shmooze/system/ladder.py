"""The stop ladder: ask, wait, SIGTERM, wait, SIGKILL, reap; of one process or of many at once, on one
thread (:func:`stop_ladders`); every rung recorded.

A module runs in its own session, so its pid is also its process group id and
every signal goes to the whole group: processes the module started are stopped
with it.
"""

from __future__ import annotations

import logging
import select
import signal
import subprocess
import time
from typing import Any, Callable

from shmooze.system import procutil
from shmooze.system.ioloop import wait_readable

log = logging.getLogger(__name__)

#: The module had exited before anyone asked it to.
EXITED = "exited"
#: It exited after being asked (``rm`` and closed streams), within the first wait.
RM = "rm"
#: It exited after SIGTERM.
SIGTERM = "sigterm"
#: SIGKILL ended it.
SIGKILL = "sigkill"

RUNGS = (EXITED, RM, SIGTERM, SIGKILL)


def wait_exit(proc: subprocess.Popen, timeout: float, pidfd: int | None = None) -> bool:
    """Wait up to ``timeout`` seconds for the process to exit, and reap it; True if it did."""
    if proc.poll() is not None:
        return True
    if pidfd is not None:
        try:
            ready = wait_readable([pidfd], max(0.0, timeout))
        except (OSError, ValueError):
            ready = []
        if ready:
            proc.wait()
            return True
        return proc.poll() is not None
    try:
        proc.wait(max(0.0, timeout))
        return True
    except subprocess.TimeoutExpired:
        return False


def sweep_group(pgid: int, grace: float = 1.0) -> int:
    """End what is left of a process group after its leader: SIGTERM, wait ``grace``, SIGKILL.

    Returns how many processes were left.
    """
    left = procutil.group_members(pgid)
    if not left:
        return 0
    procutil.kill_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while procutil.group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.01)
    if procutil.group_members(pgid):
        procutil.kill_group(pgid, signal.SIGKILL)
    return len(left)


def stop_ladder(proc: subprocess.Popen, request: Callable[[], None] | None, rm_timeout: float,
                term_timeout: float, kill_timeout: float = 5.0, pidfd: int | None = None,
                first_rung: str = RM, sweep: Callable[[int, float], int] | None = None) -> str:
    """Stop one module process and its group; return the rung that ended it.

    ``request`` asks the module to go (sends ``rm``, closes its streams); it must be
    bounded in time. ``first_rung`` names an exit during the first wait: ``rm`` when
    we asked, ``exited`` when the module was leaving on its own. ``sweep(pgid, grace)``
    ends what the module left behind once its own process is gone (default: its
    process group; see :mod:`shmooze.system.containment`); after SIGKILL it gets no grace.
    """
    stop = Stopping(proc, rm_timeout, term_timeout, hear=request, pidfd=pidfd, first_rung=first_rung, sweep=sweep)
    stop_ladders([stop], kill_timeout)
    assert stop.rung is not None
    return stop.rung


class Stopping:
    """One process on its way down the ladder (see :func:`stop_ladders`). ``ask`` sends the request without
    waiting (``rm``), ``hear`` waits for its answer and closes the streams; both are optional and bounded in
    time. ``rung`` is set once the process has ended (and what it left was swept)."""

    __slots__ = ("proc", "rm_timeout", "term_timeout", "ask", "hear", "pidfd", "first_rung", "sweep", "rung",
                 "deadline", "tag")

    def __init__(self, proc: subprocess.Popen, rm_timeout: float, term_timeout: float, *,
                 ask: Callable[[], None] | None = None, hear: Callable[[], None] | None = None,
                 pidfd: int | None = None, first_rung: str = RM, sweep: Callable[[int, float], int] | None = None,
                 tag: Any = None):
        self.proc, self.rm_timeout, self.term_timeout = proc, rm_timeout, term_timeout
        self.ask, self.hear, self.pidfd, self.first_rung, self.sweep = ask, hear, pidfd, first_rung, sweep
        self.rung: str | None = None
        self.deadline = 0.0  # (monotonic) the end of its current wait
        self.tag = tag  # the caller's (its module)


def stop_ladders(stops: list[Stopping], kill_timeout: float = 5.0,
                 ended: Callable[[list[Stopping]], None] | None = None) -> None:
    """The stop ladder of many processes at once, on this thread, rung by rung: every request is sent,
    then each answer heard, then each process waited for, SIGTERM to those still there, and so on.

    Each process's waits are its own (from the end of its own request), so no ladder waits longer than
    alone; the processes end concurrently and are reaped as they end (one ``poll`` over their pidfds), not
    one thread each (a stop of hundreds of modules was mostly thread hand-overs). ``ended(stops)`` hears
    each group that ended together, swept, as soon as it has (then the rest go on).
    """
    def done(group: list[Stopping]) -> None:
        for stop in group:
            left = (stop.sweep or sweep_group)(stop.proc.pid, 0.0 if stop.rung == SIGKILL else 1.0)
            if left:
                log.info("pid %d left %d process(es) in its group; they were stopped", stop.proc.pid, left)
        if group and ended is not None:
            ended(group)

    going = []
    for stop in stops:
        if stop.proc.poll() is not None:
            stop.rung = EXITED
        else:
            going.append(stop)
    done([s for s in stops if s.rung is not None])
    for stop in going:
        if stop.ask is not None:
            stop.ask()
    for stop in going:
        if stop.hear is not None:
            stop.hear()
        stop.deadline = time.monotonic() + stop.rm_timeout
    going = _wait_all(going, None, done)
    for stop in going:
        procutil.kill_group(stop.proc.pid, signal.SIGTERM)
        stop.deadline = time.monotonic() + stop.term_timeout
    going = _wait_all(going, SIGTERM, done)
    for stop in going:
        procutil.kill_group(stop.proc.pid, signal.SIGKILL)
        stop.deadline = time.monotonic() + kill_timeout
    left = _wait_all(going, SIGKILL, done)
    for stop in left:
        log.error("pid %d survived SIGKILL for %.1f s (uninterruptible?)", stop.proc.pid, kill_timeout)
        stop.rung = SIGKILL
    done(left)


def _wait_all(stops: list[Stopping], rung: str | None, done: Callable[[list[Stopping]], None]) -> list[Stopping]:
    """Wait for each process until its own deadline, reaping it as it ends (its rung: ``rung``, or its
    first rung); ``done`` hears each group that ended together. The processes still there, in order."""
    def end(stop: Stopping) -> Stopping:
        stop.rung = rung or stop.first_rung
        return stop

    watched: dict[int, Stopping] = {}  # in the order of their deadlines: the first is the soonest
    for stop in sorted(stops, key=lambda s: s.deadline):
        if stop.pidfd is not None:  # (readable at once if it has ended)
            watched[stop.pidfd] = stop
        elif stop.proc.poll() is None:  # (no pidfd from this kernel: a wait of its own, as the ladder of one did)
            wait_exit(stop.proc, stop.deadline - time.monotonic())
    done([end(s) for s in stops if s.pidfd not in watched and s.proc.returncode is not None])
    poller = select.poll()
    for fd in watched:
        poller.register(fd, select.POLLIN)
    while watched:
        now = time.monotonic()
        fd, first = next(iter(watched.items()))
        soonest = first.deadline
        if soonest <= now:  # (the first whose wait is over: ended now, or left for the next rung)
            poller.unregister(fd)
            del watched[fd]
            if first.proc.poll() is not None:
                done([end(first)])
            continue
        try:
            events = poller.poll(max(1, int((soonest - now) * 1000 + 0.999)))
        except InterruptedError:
            continue
        group = []
        for fd, event in events:
            if fd not in watched:
                continue
            stop = watched.pop(fd)
            poller.unregister(fd)
            if event & select.POLLIN:  # (it ended: readable)
                stop.proc.wait()
            else:  # (not a pidfd any more: waited for without it)
                wait_exit(stop.proc, stop.deadline - time.monotonic())
            if stop.proc.returncode is not None:
                group.append(end(stop))
        done(group)
    return [s for s in stops if s.rung is None]
