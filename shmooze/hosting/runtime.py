"""What a host's module processes need while they run: :class:`ModuleRuntime`.

It is made when the host boots (the first module or ``start``): the I/O thread of every module
stream, the containment of the modules (:mod:`shmooze.system.containment`), the orphan guard
(:mod:`shmooze.system.watchdog`), the reaper of orphaned descendants, the threads that send play/suspend,
and the threads of the stop ladders (a few, each ladder waiting at most :data:`LADDER_SLOW` for one).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from typing import Any, Callable

from shmooze.errors import CommandError
from shmooze.hosting.moduleprocess import ModuleProcess
from shmooze.hosting.moduletable import ModuleTable
from shmooze.hosting.placement import Orders
from shmooze.moduletype import ModuleType
from shmooze.system import procutil
from shmooze.system.containment import MODULE_VAR, Containment
from shmooze.system.elastic import ElasticPool
from shmooze.system.ioloop import IOLoop
from shmooze.system.limits import Limits
from shmooze.system.watchdog import OWNER_VAR, Watchdog

log = logging.getLogger(__name__)

#: Threads that run stop ladders at once, while each is quick (a ladder's usual end: the module answers
#: ``rm`` and exits within a few ms, tens on a busy machine); a ladder waiting longer than LADDER_SLOW
#: seconds (a module ignoring ``rm``: its ladder waits seconds) gives its place to a new thread.
LADDER_THREADS = 8
LADDER_SLOW = 0.25


class ModuleRuntime:
    """``token`` marks the host's modules (for the guard); ``tick`` is called twice a second (the reaper's
    round); ``table``: the host's modules, whose lock also guards the orphan guard (see :meth:`watch`)."""

    def __init__(self, name: str, token: str, table: ModuleTable, tick: Callable[[], None], *,
                 containment: str = "auto", limits: str = "auto"):
        procutil.become_subreaper()
        self.name, self.token, self.table, self.tick = name, token, table, tick
        self.loop = IOLoop(f"{name}-io")
        self.containment = Containment(token, containment, limits=limits)
        self.commands = concurrent.futures.ThreadPoolExecutor(32, thread_name_prefix=f"{name}-cmd")
        self._watchdog = Watchdog(token, self.containment.folder)
        # Stop ladders (and the host's other work off the request path): a few threads, not one per ladder.
        self._ladders = ElasticPool(LADDER_THREADS, LADDER_SLOW)
        self._work: set[concurrent.futures.Future] = set()  # what in_thread runs now
        self._work_lock = threading.Lock()
        self._closed = threading.Event()
        self._ended = False  # modules ended since the heap was last trimmed
        self._reaper = threading.Thread(target=self._reap_loop, name=f"{name}-reaper", daemon=True)
        self._reaper.start()

    def module(self, mtype: ModuleType, uid: str, env: dict[str, str], **options: Any) -> ModuleProcess:
        """The handle of a new module (``options``: :class:`ModuleProcess`'s), in a box of its own (a cgroup
        or its process group), marked for the guard, which watches it once it is spawned."""
        try:
            box = self.containment.box(uid, Limits.of(mtype))
        except OSError as exc:
            raise CommandError(f"cannot make the cgroup of module {uid}: {exc.strerror or exc}") from None
        return ModuleProcess(mtype, uid, self.loop, env={OWNER_VAR: self.token, MODULE_VAR: uid, **env}, box=box,
                             on_spawn=self.watch, **options)

    def send(self, orders: Orders, told: Callable[[ModuleProcess, str], Any]) -> list[ModuleProcess]:
        """Send play/suspend orders concurrently (``told`` after each that succeeded); return the modules
        that failed theirs."""
        if not orders:
            return []
        if len(orders) == 1:  # (one add to a pool) sent from this thread: no pool thread to wake or to make
            futures = {_run_now(orders[0][0].call, orders[0][1]): orders[0]}
        else:
            futures = {self.commands.submit(m.call, cmd): (m, cmd) for m, cmd in orders}
        failed = []
        for future, (module, cmd) in futures.items():
            try:
                future.result()
                told(module, cmd)
            except CommandError as exc:
                log.warning("module %s (%s) failed %s: %s", module.uid, module.type.name, cmd, exc)
                failed.append(module)
        return failed

    def watch(self, pgid: int) -> None:
        """A module's process group, for the guard to kill if the host dies (under the table's lock: the
        reaper replaces a dead guard and tells it every module under that lock too)."""
        with self.table.lock:
            self._watchdog.watch(pgid)

    def forget(self, pgid: int) -> None:
        """A module has ended: its group is no longer the guard's, and the heap is trimmed soon after."""
        with self.table.lock:
            self._watchdog.forget(pgid)
            self._ended = True

    @property
    def watchdog_pid(self) -> int:
        return self._watchdog.proc.pid

    def in_thread(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        """Run ``fn(*args)`` on a thread of the ladders' pool: a stop ladder never waits more than
        :data:`LADDER_SLOW` behind another (see :class:`~shmooze.system.elastic.ElasticPool`)."""
        future = self._ladders.submit(fn, *args)
        with self._work_lock:
            self._work.add(future)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: concurrent.futures.Future) -> None:
        with self._work_lock:
            self._work.discard(future)

    def close(self, stop: Callable[[list[ModuleProcess], str, bool], None]) -> None:
        """Stop every module of the table, all at once (with ``stop``, its host's one stop path), wait
        for the work in threads, then close the guard (it sweeps what escaped the ladders, by cgroup and by
        token), the containment, the threads and the I/O thread."""
        modules = self.table.live()
        log.info("%s stopping: %d module(s)", self.name, len(modules))
        if modules:
            concurrent.futures.wait([self.in_thread(stop, modules, "service stopping", True)])
        for m in self.table.stopping():
            m.wait_stopped()
        with self._work_lock:
            pending = list(self._work)
        concurrent.futures.wait(pending)
        self._closed.set()
        self._watchdog.close()
        self.containment.close()
        self.commands.shutdown(wait=False)
        self.loop.stop()
        procutil.reap_orphans(())

    def _reap_loop(self) -> None:
        while not self._closed.wait(0.5):
            with self.table.lock:
                live = self.table.live() + self.table.stopping()
                managed = [m.pid for m in live if m.pid]
                guard = self._watchdog
                if guard.proc.poll() is not None and not self.table.closing:
                    # The guard was killed: start another and tell it every module still here.
                    log.warning("%s: the orphan guard (pid %d) died; starting a new one", self.name, guard.proc.pid)
                    self._watchdog = guard = Watchdog(self.token, self.containment.folder)
                    for module in live:
                        if module.pid:
                            guard.watch(module.pid)
            managed.append(guard.proc.pid)
            procutil.reap_orphans(managed)
            self.tick()
            self._trim()

    def _trim(self) -> None:
        """Once modules have ended and none is stopping, give the heap's free pages back (a few ms at most,
        at most twice a second)."""
        with self.table.lock:
            if not self._ended or self.table.stopping():
                return
            self._ended = False
        procutil.trim_heap()


def _run_now(fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
    """``fn(*args)`` run here, as a done future (as a pool would hand it back)."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    try:
        future.set_result(fn(*args))
    except BaseException as exc:  # noqa: BLE001 - handed to whoever reads the future
        future.set_exception(exc)
    return future
