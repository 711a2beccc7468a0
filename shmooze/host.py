"""The base of services that hold modules: the queue and the pool.

It owns the I/O thread of all module streams, the threads that run stop
ladders (one each, so stops never wait for each other), the containment of its
modules (:mod:`shmooze.containment`), the orphan guard (:mod:`shmooze.watchdog`),
and the reaping of orphaned descendants. Subclasses decide where a module goes (:meth:`_attach`),
how it leaves (:meth:`_detach`) and what it should be told (:meth:`_orders`).

A module's life here, each step in one method: :meth:`_start_and_place` starts it and puts it in
place; :meth:`_remove` takes modules out of place (:meth:`_take_out`) and stops them
(:meth:`_stop_taken`); :meth:`_stop` is the one stop path of every module: its ladder, then its
end recorded. Placed modules are indexed by uid (``_modules``), so finding one never scans.
"""

from __future__ import annotations

import _thread
import collections
import concurrent.futures
import itertools
import logging
import os
import secrets
import sqlite3
import threading
import time
from typing import Any, Callable, Iterable

from shmooze import procutil, protocol
from shmooze.commands import command
from shmooze.containment import MODULE_VAR, Containment
from shmooze.errors import CommandError
from shmooze.ioloop import IOLoop
from shmooze.journal import FSYNC, Entry, Journal
from shmooze.limits import Limits
from shmooze.module import ModuleBroken, ModuleError, ModuleProcess
from shmooze.moduletype import ModuleType
from shmooze.ops import HostOps
from shmooze.service import Service
from shmooze.watchdog import OWNER_VAR, Watchdog

log = logging.getLogger(__name__)

#: Seconds a command concerning modules being restored waits for the restore before it gives up.
RESTORE_WAIT = 120.0


class _KeySlot:
    """The first answer to a client key (see :meth:`ModuleHost._once`)."""

    def __init__(self, result: Any = None, expires: float = float("inf")):
        self.done = threading.Event()
        self.result = result
        self.expires = expires
        if result is not None:
            self.done.set()


class ModuleHost(Service):
    """A service that starts, commands and stops module processes.

    ``journal`` (a path or a :class:`~shmooze.journal.Journal`): where the service keeps
    what it needs to restore its modules after a restart; :meth:`start` restores from it
    in the background. ``restore_hook(entry) -> bool`` decides per module whether it is
    restored (``entry``: uid, type, args, kind, parameters). ``key_window``: seconds for
    which a repeated client ``key`` of ``add`` / ``set_bg`` gets the first answer.
    ``log_module_updates``: every module's parameter updates go to the command log.

    Acknowledged means kept: a command that is not read-only is answered once the journal and the
    command log hold what it changed (:meth:`_dispatch`): synced to the disk (``durability``
    ``fsync``, the default) or written to the kernel (``write``); commands that touch modules being restored
    wait for the restore (:meth:`_after_restore_of`).
    """

    #: Which kinds of module a restart policy applies to ("module" or "background").
    restartable: tuple[str, ...] = ("module",)

    def __init__(self, modules: Iterable[ModuleType], *, max_modules: int = 1000, max_line: int = 1 << 20,
                 keep_ended: int = 100, journal: str | Journal | None = None,
                 restore_hook: Callable[[Entry], bool] | None = None, restore_concurrency: int = 8,
                 key_window: float = 600.0, log_module_updates: bool = False, containment: str = "auto",
                 check_peers: bool = True, durability: str = FSYNC):
        """``containment``: ``auto`` (a cgroup per module where possible), ``cgroup`` or ``process-group``;
        ``check_peers``: refuse connections to a module's ports from processes that are not the module."""
        super().__init__()
        self.types = _by_name(modules, "module")
        self.max_modules = max_modules
        self.max_line = max_line
        self.command_log: Any = None  # set by the application (see shmooze.cmdlog)
        self.journal: Journal | None = None  # set from settings by shmooze.serve, or given here
        self._journal_path = journal if isinstance(journal, str) else None
        if isinstance(journal, Journal):
            self.journal = journal
        self.restore_hook = restore_hook
        self.restore_concurrency = max(1, restore_concurrency)
        self.key_window = key_window
        self.log_module_updates = log_module_updates
        self.durability = durability  # of the journal made here (see shmooze.journal)
        self.restoring = False
        self._restored = threading.Event()  # set once the restore has ended (see _after_restore_of)
        self._restoring_uids: set[str] = set()
        self._restoring_keys: set[str] = set()
        self._restorer: threading.Thread | None = None
        self._keys: dict[str, _KeySlot] = {}
        self._keys_lock = threading.Lock()
        self._lock = threading.RLock()  # the service's lists of modules
        self._modules: dict[str, ModuleProcess] = {}  # every placed module, by uid
        self._untold: dict[str, ModuleProcess] = {}  # placed modules told nothing yet
        self._playing: dict[str, ModuleProcess] = {}  # placed modules last told play
        self._starting: dict[str, ModuleProcess] = {}
        self._stopping: dict[str, ModuleProcess] = {}
        self._ended: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep_ended)
        self._uid_prefix = secrets.token_hex(3)
        self._uid_counter = itertools.count(1)
        self._token = f"{os.getpid()}-{secrets.token_hex(8)}"
        self._closing = False
        self._stop_done = threading.Event()
        self._rule_lock = threading.Lock()  # one pass of the play/suspend rule at a time
        self._boot_lock = threading.Lock()
        self._booted = False
        self.loop: IOLoop | None = None
        self.containment_mode = containment
        self.limits_mode = "auto"  # where module limits go: auto, cgroup or rlimit (shmooze.containment)
        self.check_peers = check_peers
        self.containment: Containment | None = None
        self._background_work: set[concurrent.futures.Future] = set()
        self._refused_before = 0  # connections refused by modules that have ended
        self._commands_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._watchdog: Watchdog | None = None
        self._reaper: threading.Thread | None = None
        self.ops = HostOps(self, keep=keep_ended)  # output, figures, restarts (shmooze.ops)

    # -- life --------------------------------------------------------------------------

    def start(self) -> None:
        """Boot, then restore the journal's modules in the background (:meth:`after_restore` follows)."""
        self._boot()
        if self.journal is None and self._journal_path:
            self.journal = Journal(self._journal_path, self.name, durability=self.durability, health=self.storage)
        if self.journal is not None:
            self._restoring_uids = {e["uid"] for e in self.journal.recovered}
            self._restoring_keys = {e["key"] for e in self.journal.recovered if e.get("key")}
        self.restoring = True
        self._restorer = threading.Thread(target=self._restore, name=f"{self.name}-restore", daemon=True)
        self._restorer.start()

    def _boot(self) -> None:
        with self._boot_lock:
            if self._booted:
                return
            procutil.become_subreaper()
            self.loop = IOLoop(f"{self.name}-io")
            self.containment = Containment(self._token, self.containment_mode, limits=self.limits_mode)
            self._commands_pool = concurrent.futures.ThreadPoolExecutor(32, thread_name_prefix=f"{self.name}-cmd")
            self._watchdog = Watchdog(self._token, self.containment.folder)
            self._reaper = threading.Thread(target=self._reap_loop, name=f"{self.name}-reaper", daemon=True)
            self._reaper.start()
            self._booted = True

    def stop(self) -> None:
        """Stop every module through the ladder (all at once), then the guard and the I/O thread.

        A second caller waits for the first to finish."""
        if self.journal is not None:
            self.journal.close()  # what the service holds now is what it restores: not its stopping
        with self._lock:
            closing, self._closing = self._closing, True
        if closing:
            self._stop_done.wait()
            return
        try:
            if self._restorer is not None:  # it sees _closing, starts nothing more and stops what it started
                self._restorer.join(60)
            with self._lock:
                modules = self._all_modules()
            self._stop_all(modules)
        finally:
            self._stop_done.set()

    def _stop_all(self, modules: list[ModuleProcess]) -> None:
        if self._booted:
            log.info("%s stopping: %d module(s)", self.name, len(modules))
            threads = [threading.Thread(target=self._stop, args=(m, "service stopping", True)) for m in modules]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            with self._lock:
                stopping = list(self._stopping.values())
            for m in stopping:
                m.wait_stopped()
            with self._lock:
                pending = list(self._background_work)
            concurrent.futures.wait(pending)
            assert self._watchdog and self.containment and self._commands_pool and self.loop  # booted
            self._watchdog.close()  # it sweeps what escaped the ladders, by cgroup and by token
            self.containment.close()
            self._commands_pool.shutdown(wait=False)
            self.loop.stop()
            procutil.reap_orphans(())
        if self.command_log is not None:
            self.command_log.close()
        super().stop()

    def _reap_loop(self) -> None:
        while not self._stopped.wait(0.5):
            with self._lock:
                live = self._all_modules() + list(self._stopping.values())
                managed = [m.pid for m in live if m.pid]
                guard = self._watchdog
                assert guard is not None and self.containment is not None  # the reaper starts after booting
                if guard.proc.poll() is not None and not self._closing:
                    # The guard was killed: start another and tell it every module still here.
                    log.warning("%s: the orphan guard (pid %d) died; starting a new one", self.name, guard.proc.pid)
                    self._watchdog = guard = Watchdog(self._token, self.containment.folder)
                    for module in live:
                        if module.pid:
                            guard.watch(module.pid)
            managed.append(guard.proc.pid)
            procutil.reap_orphans(managed)
            self.ops.tick()

    def _watch(self, pgid: int) -> None:
        with self._lock:
            assert self._watchdog is not None  # modules spawn only once the host has booted
            self._watchdog.watch(pgid)

    def _in_thread(self, fn: Any, *args: Any) -> concurrent.futures.Future:
        """Run ``fn(*args)`` on a thread of its own: a stop ladder never queues behind another."""
        future: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                future.set_exception(exc)
            finally:
                with self._lock:
                    self._background_work.discard(future)

        with self._lock:
            self._background_work.add(future)
        try:
            # A bare thread (a daemon, as threading's would be): no Thread object, and no waiting here for
            # it to run first, which a burst of stops (rm of 200 modules) would pay once per module.
            _thread.start_new_thread(run, ())
        except RuntimeError:  # no thread to be had (process limit): do it here
            run()
        return future

    # -- what subclasses provide -------------------------------------------------------

    def _attach(self, module: ModuleProcess, kind: str, restarted: bool) -> list[ModuleProcess] | None:
        """Put a started module in its place (called with the lock held); return the modules it displaced
        (to be stopped), or None when it has no place (a restarted module no longer wanted there)."""
        raise NotImplementedError

    def _detach(self, module: ModuleProcess) -> None:
        """Take a placed module out of its place (called with the lock held)."""
        raise NotImplementedError

    def _placed(self) -> list[ModuleProcess]:
        """Every placed module, in order (called with the lock held)."""
        raise NotImplementedError

    def _orders(self) -> list[tuple[ModuleProcess, str]]:
        """Play/suspend commands that the rule asks for now (called with the lock held)."""
        return []

    def _after_change(self) -> None:
        """Apply the rule: send the play/suspend orders it asks for, remove modules that fail them, repeat."""
        with self._rule_lock:
            while True:
                with self._lock:
                    orders = self._orders()
                    for module, cmd in orders:
                        module.told = cmd
                        self._untold.pop(module.uid, None)
                        if cmd == "play":
                            self._playing[module.uid] = module
                        else:
                            self._playing.pop(module.uid, None)
                failed = self._send_all(orders)
                if not failed:
                    return
                self._remove([m.uid for m in failed], "failed play/suspend", send_rm=False, wait=False)

    # -- helpers -----------------------------------------------------------------------

    def _all_modules(self) -> list[ModuleProcess]:
        return self._placed() + list(self._starting.values())

    def _new_uid(self) -> str:
        return f"{self._uid_prefix}-{next(self._uid_counter)}"

    def _find(self, uid: str) -> ModuleProcess:
        module = self._modules.get(uid)
        if module is None:
            raise CommandError(f"no module with uid {uid!r}")
        return module

    def _spawn(self, types: dict[str, ModuleType], type: str, args: dict[str, Any], kind: str,
               uid: str | None = None, restored: dict[str, Any] | None = None) -> ModuleProcess:
        """Start a module of one of ``types``; it is running (init answered) when this returns.

        ``uid`` and ``restored`` start a module again after a restart (see :meth:`_restore`)."""
        self._boot()
        mtype = types.get(type)
        if mtype is None:
            raise CommandError(f"unknown {kind} type {type!r} (available: {', '.join(sorted(types)) or 'none'})")
        with self._lock:
            if self._closing:
                raise CommandError(f"{self.name} is stopping")
            if len(self._modules) + len(self._starting) >= self.max_modules:
                raise CommandError(f"{self.name} already holds {self.max_modules} modules, its limit")
            uid = uid or self._new_uid()
            env = {OWNER_VAR: self._token, MODULE_VAR: uid}
            if restored is not None:
                env["SHMOOZE_RESTORED"] = "1"
            assert self.containment is not None and self.loop is not None  # booted above
            try:
                box = self.containment.box(uid, Limits.of(mtype))
            except OSError as exc:
                raise CommandError(f"cannot make the cgroup of module {uid}: {exc.strerror or exc}") from None
            module = ModuleProcess(mtype, uid, self.loop, on_update=self._on_update, on_gone=self._on_gone,
                                   env=env, box=box, check_peers=self.check_peers, max_line=self.max_line,
                                   on_spawn=self._watch, on_output=self.ops.on_output)
            self._starting[uid] = module
        try:
            module.start(args, restored)
        except CommandError:
            self.ops.start_failed(mtype)
            self._stop(module, "start failed", send_rm=False)  # stopped already: this records its end
            raise
        finally:
            with self._lock:
                self._starting.pop(uid, None)
        self.ops.started(module, args, kind)
        return module

    def _spawn_restart(self, mtype: ModuleType, args: dict[str, Any], kind: str, uid: str) -> ModuleProcess:
        """Start a module again under its uid, as its restart policy asks (see :mod:`shmooze.ops`)."""
        return self._start_and_place({mtype.name: mtype}, mtype.name, args, kind, uid=uid)

    def _start_and_place(self, types: dict[str, ModuleType], type: str, args: dict[str, Any], kind: str,
                         key: str | None = None, uid: str | None = None,
                         logged_as: str | None = None) -> ModuleProcess:
        """The one placing sequence: start a module, put it in place and journal it, announce it, log the
        command (``logged_as``), stop what it displaced; then remove it at once if it already left, and
        apply the rule. ``uid``: a restart of that module, which may find no place (it is then stopped)."""
        module = self._spawn(types, type, args, kind, uid=uid)
        with self._lock:
            closing = self._closing
            displaced = None if closing else self._attach(module, kind, restarted=uid is not None)
            if displaced is not None:
                self._modules[module.uid] = self._untold[module.uid] = module
                displaced = self._take_out([m.uid for m in displaced])
                if self.journal is not None and uid is None:
                    self.journal.added(module.uid, type, args, kind, key, module.get_parameters)
        if displaced is None:
            self._stop(module, "service stopping" if closing else "rm", True)
            if uid is None:
                raise CommandError(f"{self.name} is stopping")
            return module
        if uid is not None:
            self.changed("added", uid=uid, type=type, restarted=True)
        else:
            self.changed("added" if kind == "module" else kind, uid=module.uid, type=type)
        if logged_as is not None:
            self._log_command(logged_as, {"type": type, "args": args}, {"uid": module.uid}, module.uid, type)
        self._stop_taken(displaced, f"replaced by a new {kind}", send_rm=True, wait=False)
        self._settle([module])
        return module

    def _settle(self, modules: list[ModuleProcess]) -> None:
        """Once modules are in place: remove those that left before (during init, or before they were
        placed, when :meth:`_on_gone` found nothing to remove), then apply the rule."""
        for module in modules:
            if module.gone_reason is not None:
                self._remove([module.uid], f"module left: {module.gone_reason}", send_rm=False, wait=False)
        self._after_change()

    # -- stopping ----------------------------------------------------------------------

    def _take_out(self, uids: Iterable[str]) -> list[ModuleProcess]:
        """Take modules out of place, out of the index and out of the journal (unknown uids are skipped)."""
        with self._lock:
            removed = [m for m in (self._modules.pop(uid, None) for uid in dict.fromkeys(uids)) if m is not None]
            for module in removed:
                self._detach(module)
                self._untold.pop(module.uid, None)
                self._playing.pop(module.uid, None)
                self._stopping[module.uid] = module
            if self.journal is not None:
                self.journal.removed([m.uid for m in removed])
        return removed

    def _remove(self, uids: Iterable[str], reason: str, send_rm: bool = True, wait: bool = True) -> None:
        """Take modules out of place and stop them (see :meth:`_stop_taken`)."""
        self._stop_taken(self._take_out(uids), reason, send_rm, wait)

    def _stop_taken(self, modules: list[ModuleProcess], reason: str, send_rm: bool, wait: bool) -> None:
        """:meth:`_stop` modules taken out of place, each on a thread of its own, and apply the rule again;
        with ``wait``, return once they are reaped."""
        if not modules:
            return
        self.changed_each("removed", [{"uid": m.uid, "type": m.type.name, "reason": reason} for m in modules])
        futures = [self._in_thread(self._stop, module, reason, send_rm) for module in modules]
        if wait:
            self._after_change()
            concurrent.futures.wait(futures)
        else:
            self._in_thread(self._after_change)

    def _stop(self, module: ModuleProcess, reason: str, send_rm: bool) -> None:
        """The one stop path: the module's ladder (once, whoever asks), then its end recorded, here only."""
        try:
            module.stop(reason, send_rm=send_rm)
        except Exception:
            log.exception("stopping module %s failed", module.uid)
        module.wait_stopped(60)
        with self._lock:
            self._stopping.pop(module.uid, None)
            if module.pid and self._watchdog is not None:
                self._watchdog.forget(module.pid)
            self._refused_before += module.refused
        self.ops.ended(module)
        self._ended.append(module.snapshot())
        self.ops.plan_restart(module)
        if not module.start_failed:
            self.changed("stopped", uid=module.uid, type=module.type.name, ended_by=module.ended_by)

    def _on_update(self, module: ModuleProcess, cmd: str, args: dict[str, Any]) -> None:
        """An update line from a module (I/O thread): publish it, journal it, log it if asked."""
        if cmd == "set_parameters":
            self.changed("parameters", uid=module.uid, set=args.get("parameters", {}))
        elif cmd == "unset_parameters":
            self.changed("parameters", uid=module.uid, unset=args.get("parameters", []))
        if self.journal is not None and cmd != "rm":
            self.journal.parameters(module.uid, module.get_parameters)
        if self.command_log is not None and (cmd == "rm" or self.log_module_updates or module.type.log_updates):
            self.command_log.record("module-update", module.uid, {"cmd": cmd, "args": args}, None,
                                    module.type.name)

    def _on_gone(self, module: ModuleProcess, reason: str) -> None:
        """The module is leaving on its own (I/O thread): remove it without blocking this thread."""
        self._remove([module.uid], f"module left: {reason}", send_rm=False, wait=False)

    def _tell(self, module: ModuleProcess, cmd: str, args: dict[str, Any], logged_as: str) -> Any:
        """Send ``do_CMD``; log it as ``logged_as``; a broken module is removed."""
        try:
            result = module.call("do_" + cmd, args)
            self._log_command(logged_as, {"uid": module.uid, "cmd": cmd, "args": args}, result, module.uid,
                              module.type.name)
            return result
        except ModuleError as exc:
            raise CommandError(f"module {module.uid} ({module.type.name}): {exc}") from None
        except ModuleBroken as exc:
            self._remove([module.uid], f"broken: {exc}", send_rm=False, wait=False)
            raise CommandError(f"module {module.uid} ({module.type.name}) failed and was removed: {exc}") from None

    def _send_all(self, orders: list[tuple[ModuleProcess, str]]) -> list[ModuleProcess]:
        """Send play/suspend orders concurrently; return the modules that failed them."""
        if not orders:
            return []
        assert self._commands_pool is not None  # commands reach modules only once the host has booted
        if len(orders) == 1:  # (one add to a pool) sent from this thread: no pool thread to wake or to make
            futures = {_run_now(orders[0][0].call, orders[0][1]): orders[0]}
        else:
            futures = {self._commands_pool.submit(m.call, cmd): (m, cmd) for m, cmd in orders}
        failed = []
        for future, (module, cmd) in futures.items():
            try:
                future.result()
                self.changed("told", uid=module.uid, cmd=cmd)
            except CommandError as exc:
                log.warning("module %s (%s) failed %s: %s", module.uid, module.type.name, cmd, exc)
                failed.append(module)
        return failed

    # -- shared commands ---------------------------------------------------------------

    @command
    def add(self, type: str, args: dict = {}, key: str | None = None) -> dict:  # noqa: B006 - never mutated
        """Start a module of a type; answers ``{"uid": UID}`` once the module answered ``init``.

        ``key``: a client's name for this request; a repeat within the key window gets the first answer."""
        return self._once(key, lambda: self._add(type, args, key))

    def _add(self, type: str, args: dict[str, Any], key: str | None) -> dict:
        module = self._start_and_place(self.types, type, args, "module", key, logged_as="add")
        return {"uid": module.uid}

    @command(read_only=True)
    def modules_available(self, describe: bool = False) -> list:
        """Names of the module types this service can start; with ``describe``, ``{"name", "description"}``
        of each."""
        return _available(self.types, describe)

    @command
    def rm(self, uids: list[str]) -> None:
        """Remove modules (unknown uids are ignored); returns once their processes are stopped."""
        self._after_restore_of(uids)  # a module being restored is removed once it is back, not missed
        self._log_command("rm", {"uids": uids})
        for uid in uids:
            self.ops.cancel(uid)  # a module waiting to be restarted is removed too
        self._remove(uids, "rm")

    @command
    def tell_module(self, uid: str, cmd: str, args: dict = {}) -> Any:  # noqa: B006 - never mutated
        """Send the module the custom command ``do_CMD`` and return its answer."""
        self._after_restore_of([uid])
        return self._tell(self._find(uid), cmd, args, "tell_module")

    @command(read_only=True)
    def ask_module(self, uid: str, parameters: list[str]) -> dict:
        """The named parameters of a module, as it last reported them."""
        return self._find(uid).get_parameters(parameters)

    @command(read_only=True)
    def status(self) -> dict[str, Any]:
        info = super().status()
        with self._lock:
            live = self._all_modules()
            modules = [m.snapshot() for m in live]
            stopping = [m.snapshot() for m in self._stopping.values()]
        self.ops.add_figures(modules, live)
        # Restarts planned or given up, read before the ended: a plan is made after its end joins them.
        restarts = self.ops.status()
        info.update(modules=modules, stopping=stopping, ended=list(self._ended),
                    types=sorted(self.types), watchdog_pid=self._watchdog.proc.pid if self._watchdog else None,
                    restoring=self.restoring, journal=self.journal.status() if self.journal else None,
                    containment=self.containment.describe() if self.containment else None,
                    refused_connections=self._refused_before + sum(m.refused for m in self._all_modules()))
        info.update(restarts)
        return info

    # -- acknowledged means kept -----------------------------------------------------------

    def _dispatch(self, item: protocol.Item) -> dict[str, Any]:
        """Run a command; one that is not read-only is answered once what it changed is kept: written
        (and synced, with durability ``fsync``) to the journal and the command log. Its waits share one
        write and one sync with every command that changed something meanwhile (group commit)."""
        spec = self._commands.get(getattr(item, "cmd", ""))
        journal, command_log = self.journal, self.command_log
        if spec is None or spec.read_only or (journal is None and command_log is None):
            return super()._dispatch(item)
        since = journal.tickets if journal is not None else 0
        log_since = command_log.tickets if command_log is not None else 0
        answer = super()._dispatch(item)
        if journal is not None and command_log is not None and self.durability == FSYNC:
            command_log.start_writing()  # its commit's sync beside the journal's, not after it
        problem = journal.sync(since) if journal is not None else None
        log_problem = command_log.sync(log_since) if command_log is not None else None
        if problem is not None and answer.get("success"):
            return protocol.error(f"{spec.name} was done but is not kept ({problem}): a restart of {self.name} "
                                  "before it is written would undo it")
        if log_problem is not None and answer.get("success"):  # (its row is kept in memory, written later)
            return protocol.error(f"{spec.name} was done but its command-log row is not kept ({log_problem})")
        return answer

    def _after_restore_of(self, uids: Iterable[Any] | None = None) -> None:
        """While the journal's modules are being restored, wait for the restore when a command concerns
        them (``uids``; None: the whole queue, as ``mv`` does), so it applies to the restored state: an
        ``rm`` of a module being restored removes it once it is back, and the removal is journaled."""
        if not self.restoring:
            return
        if uids is not None and self._restoring_uids.isdisjoint(u for u in uids if isinstance(u, str)):
            return
        if not self._restored.wait(RESTORE_WAIT):
            raise CommandError(f"{self.name} is still restoring its modules; try again in a moment")

    # -- client keys -----------------------------------------------------------------------

    def _once(self, key: str | None, run: Callable[[], dict]) -> dict:
        """Run ``run`` once per client key: a repeat (a retry) within the window gets the first answer,
        waiting for it if the first is still starting its module. A failed first attempt is forgotten."""
        if key is None:
            return run()
        if not 0 < len(key) <= 200:
            raise CommandError("key must be a string of 1 to 200 characters")
        if self.restoring and key in self._restoring_keys:
            self._after_restore_of()  # its first answer is being restored: a retry gets it, not a second
        while True:
            with self._keys_lock:
                now = time.monotonic()
                for old in [k for k, slot in self._keys.items() if slot.expires < now]:
                    del self._keys[old]
                slot = self._keys.get(key)
                if slot is None:
                    slot = self._keys[key] = _KeySlot()
                    break
            if not slot.done.wait(120):
                raise CommandError("the first command with this key is still running")
            if slot.result is not None:
                return slot.result
        try:
            result = run()
        except BaseException:
            with self._keys_lock:
                self._keys.pop(key, None)
            slot.done.set()
            raise
        slot.result, slot.expires = result, time.monotonic() + self.key_window
        slot.done.set()
        return result

    # -- restoring after a restart ---------------------------------------------------------

    def after_restore(self) -> None:
        """Called once the journal's modules are back (at once when there was nothing to restore).
        Applications override it, e.g. to set a default background only when none was restored."""

    def _place_restored(self, modules: list[ModuleProcess], background: ModuleProcess | None) -> list[ModuleProcess]:
        """Put restored modules in place, before anything added meanwhile (called with the lock held);
        return those that found no place."""
        raise NotImplementedError

    def _restore(self) -> None:
        try:
            entries = self.journal.recovered if self.journal is not None else []
            if entries:
                self._restore_entries(entries)
        except Exception:
            log.exception("%s: restoring from the journal failed", self.name)
        finally:
            self.restoring = False
            self._restoring_uids, self._restoring_keys = set(), set()
            self._restored.set()
        if self._closing:
            return
        try:
            self.after_restore()
        except Exception:
            log.exception("%s: after_restore failed", self.name)

    def type_tables(self) -> dict[str, dict[str, ModuleType]]:
        """The module types this host starts, by kind ("module"; "background" for a queue)."""
        return {"module": self.types, "background": getattr(self, "backgrounds", {})}

    def _restore_entries(self, entries: list[Entry]) -> None:
        assert self.journal is not None  # the entries come from it
        self._log_journaled_adds(entries)
        tables = self.type_tables()
        wanted, dropped = [], []
        for entry in entries:
            mtype = tables.get(entry.get("kind", ""), {}).get(entry.get("type", ""))
            if mtype is None:
                why = f"no {entry.get('kind')} type {entry.get('type')!r} any more"
            elif not mtype.restore:
                why = f"type {mtype.name!r} is not restored (restore=False)"
            elif self.restore_hook is not None and not self.restore_hook(dict(entry)):
                why = "the application's restore hook declined it"
            else:
                wanted.append((entry, mtype))
                continue
            log.info("%s: not restoring module %s: %s", self.name, entry.get("uid"), why)
            dropped.append(entry["uid"])
        log.info("%s: restoring %d module(s) from %s", self.name, len(wanted), self.journal.path)
        started: list[tuple[Entry, ModuleProcess]] = []
        with concurrent.futures.ThreadPoolExecutor(self.restore_concurrency,
                                                   thread_name_prefix=f"{self.name}-restore") as pool:
            futures = [pool.submit(self._spawn, tables[e["kind"]], e["type"], e.get("args", {}), e["kind"],
                                   e["uid"], {"uid": e["uid"], "parameters": e.get("parameters", {})})
                       for e, _ in wanted]
            for (entry, _), future in zip(wanted, futures):
                try:
                    started.append((entry, future.result()))
                except CommandError as exc:
                    log.warning("%s: module %s (%s) could not be restored: %s", self.name, entry["uid"],
                                entry["type"], exc)
                    dropped.append(entry["uid"])
        modules = [m for e, m in started if e["kind"] == "module"]
        backgrounds = [m for e, m in started if e["kind"] == "background"]
        with self._lock:
            if self.journal is not None:
                self.journal.removed(dropped)
            if self._closing:
                unplaced = modules + backgrounds
            else:
                unplaced = self._place_restored(modules, backgrounds[-1] if backgrounds else None)
                unplaced += backgrounds[:-1]
                for _, module in started:
                    if module not in unplaced:
                        self._modules[module.uid] = self._untold[module.uid] = module
        now, wall = time.monotonic(), time.time()
        with self._keys_lock:
            for entry, module in started:
                left = self.key_window - (wall - entry.get("time", 0))
                if entry.get("key") and left > 0 and module not in unplaced:
                    self._keys.setdefault(entry["key"], _KeySlot({"uid": module.uid}, now + left))
        for module in unplaced:  # in this thread: stop() waits for it
            self._stop(module, "service stopping" if self._closing else "not placed after restore", True)
        if self._closing:
            return
        placed = [m for _, m in started if m not in unplaced]
        self.changed("restored", uids=[m.uid for m in placed])
        log.info("%s: restored %d module(s)", self.name, len(placed))
        self._settle(placed)

    def _log_journaled_adds(self, entries: list[Entry]) -> None:
        """Every module in the journal was added; one whose ``add`` has no command-log row (the worker
        died between the journal's sync and the row's commit, which durability ``fsync`` runs side by
        side) gets its row now: an add a client was told of is never missing from the log."""
        if self.command_log is None or not entries:
            return
        try:
            logged = self.command_log.logged_uids([e["uid"] for e in entries])
        except (sqlite3.Error, OSError) as exc:
            log.warning("%s: cannot check the command log for the restored modules' rows: %s", self.name, exc)
            return
        for entry in entries:
            if entry["uid"] not in logged:
                log.info("%s: the command log had no row for the add of %s (%s): written now", self.name,
                         entry["uid"], entry.get("type"))
                self._log_command("add" if entry.get("kind") == "module" else "set_bg",
                                  {"type": entry.get("type"), "args": entry.get("args", {})}, {"uid": entry["uid"]},
                                  entry["uid"], entry.get("type"))

    @command(read_only=True)
    def output(self, uid: str, after: int = 0, lines: int = 200) -> dict:
        """What a module printed (running or recently ended): its lines numbered after ``after``, at most
        ``lines`` of the newest; ``next`` is what to ask after next time."""
        return self.ops.output(uid, after, lines)

    def _gauges(self) -> list:
        return super()._gauges() + self.ops.gauges()

    def _log_command(self, cmd: str, args: dict[str, Any], result: Any = None, uid: str | None = None,
                     type: str | None = None) -> None:
        if self.command_log is not None:
            self.command_log.record(f"client-{self.name}", uid, {"cmd": cmd, "args": args}, result, type)

    @command(read_only=True)
    def history(self, limit: int = 20, type: str | None = None) -> list:
        """Modules added recently, newest first (from the command log), optionally of one type."""
        if self.command_log is None:
            raise CommandError(f"{self.name} keeps no command log (set log_database_path in the settings)")
        if limit < 0 or limit > 1000:
            raise CommandError("limit must be from 0 to 1000")
        return [{"uid": row["uid"], "type": row["type"], "args": row["command"]["args"].get("args", {}),
                 "time": row["time"]} for row in self.command_log.history(limit, type)]

    @staticmethod
    def _describe(module: ModuleProcess, parameters: dict[str, list[str]]) -> dict[str, Any]:
        out: dict[str, Any] = {"uid": module.uid, "type": module.type.name}
        names = parameters.get(module.type.name)
        if names is not None:
            out["parameters"] = module.get_parameters(names)
        return out


def _run_now(fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
    """``fn(*args)`` run here, as a done future (as a pool would hand it back)."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    try:
        future.set_result(fn(*args))
    except BaseException as exc:  # noqa: BLE001 - handed to whoever reads the future
        future.set_exception(exc)
    return future


def _available(types: dict[str, ModuleType], describe: bool) -> list:
    """``modules_available`` / ``backgrounds_available``: names, or with ``describe`` each type's description."""
    return [types[name].describe() if describe else name for name in sorted(types)]


def _by_name(types: Iterable[ModuleType], kind: str) -> dict[str, ModuleType]:
    table: dict[str, ModuleType] = {}
    for t in types:
        if t.name in table:
            raise ValueError(f"two {kind} types named {t.name!r}")
        table[t.name] = t
    return table

