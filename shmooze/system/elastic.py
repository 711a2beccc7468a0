"""A few threads for many short jobs, where a job that runs long gives its place to a new thread.

A service stops its modules on threads: each stop ladder waits for its module (an answer to ``rm``,
the exit) and may wait out timeouts of seconds for one that ignores it. A thread per ladder keeps
the ladders from waiting for each other, but 200 stopped at once then make 200 threads that fight
for the GIL: most of the service's CPU went to thread start-up and GIL hand-overs (futex wake-ups
and context switches), not to the ladders. :class:`ElasticPool` runs jobs on at most ``size``
threads while they are quick; a job still running after ``slow`` seconds no longer counts, so the
next job waits at most about ``slow`` behind ladders that wait out a module's timeouts.
"""

from __future__ import annotations

import _thread
import collections
import concurrent.futures
import threading
import time
from typing import Any, Callable

#: Seconds an idle thread waits for a job before it ends.
IDLE_SECONDS = 5.0


class ElasticPool:
    """Jobs run in order on up to ``size`` threads; a job running longer than ``slow`` seconds is not
    counted, so a job never waits much more than ``slow`` for a thread."""

    def __init__(self, size: int = 8, slow: float = 0.05):
        self.size, self.slow = size, slow
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._jobs: collections.deque[tuple[float, concurrent.futures.Future, Callable[..., Any], tuple]] = \
            collections.deque()
        self._threads = 0  # threads alive
        self._idle = 0  # of them, waiting for a job
        self._running: dict[int, float] = {}  # job number -> when it began (the jobs running now)
        self._numbers = 0
        self._watching = False  # a thread watches the queue for jobs that wait too long

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        """Run ``fn(*args)`` on one of the threads; its future."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        job = (time.monotonic(), future, fn, args)
        here = False
        with self._lock:
            self._jobs.append(job)
            if self._idle >= len(self._jobs):
                self._ready.notify()
            elif self._quick() < self.size:
                if not self._start(self._work) and self._threads == 0:
                    self._jobs.remove(job)  # no thread to be had (a process limit), none to take it: here
                    here = True
            elif not self._watching:
                self._watching = self._start(self._watch)
        if here:
            _run(future, fn, args)
        return future

    def _quick(self) -> int:
        """Threads busy with a job that began less than ``slow`` ago, or about to take one (lock held)."""
        now = time.monotonic()
        return self._threads - sum(1 for began in self._running.values() if now - began >= self.slow)

    def _start(self, target: Callable[[], None]) -> bool:
        """A bare (daemon) thread: no Thread object to make, nor a wait for it to run (lock held). False
        when there is no thread to be had (a process limit): the threads there take the job."""
        worker = target == self._work
        self._threads += worker
        try:
            _thread.start_new_thread(target, ())
            return True
        except RuntimeError:
            self._threads -= worker
            return False

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._jobs:
                    if self._threads > self.size:  # one started for a job that waited: no job now, it ends
                        self._threads -= 1
                        return
                    self._idle += 1
                    woken = self._ready.wait(IDLE_SECONDS)
                    self._idle -= 1
                    if not woken and not self._jobs:
                        self._threads -= 1
                        return
                _queued, future, fn, args = self._jobs.popleft()
                self._numbers += 1
                number = self._numbers
                self._running[number] = time.monotonic()
            try:
                _run(future, fn, args)
            finally:
                del future, fn, args  # an idle thread keeps nothing of its last job (a stopped module's handle)
                with self._lock:
                    del self._running[number]

    def _watch(self) -> None:
        """While jobs wait, start a thread for each one that has waited ``slow`` (less the threads about
        to take one: idle, or started and not yet there)."""
        while True:
            time.sleep(self.slow / 2)
            with self._lock:
                if not self._jobs:
                    self._watching = False
                    return
                late = time.monotonic() - self.slow
                overdue = 0
                for queued, *_ in self._jobs:  # (in the order they came: the overdue ones first)
                    if queued > late:
                        break
                    overdue += 1
                for _ in range(overdue - (self._threads - len(self._running))):
                    if not self._start(self._work):
                        break


def _run(future: concurrent.futures.Future, fn: Callable[..., Any], args: tuple) -> None:
    if future.set_running_or_notify_cancel():
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
            future.set_exception(exc)
