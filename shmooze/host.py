"""The base of services that hold modules: the queue and the pool.

It owns the I/O thread of all module streams, the threads that run stop
ladders (one each, so stops never wait for each other), the containment of its
modules (:mod:`shmooze.containment`), the orphan guard (:mod:`shmooze.watchdog`),
and the reaping of orphaned descendants. Subclasses decide where a module goes (:meth:`_attach`),
how it leaves (:meth:`_detach`) and what it should be told (:meth:`_wanted`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import os
import secrets
import threading
from typing import Any, Iterable

from shmooze import procutil
from shmooze.containment import MODULE_VAR, Containment
from shmooze.errors import CommandError
from shmooze.ioloop import IOLoop
from shmooze.module import ModuleBroken, ModuleError, ModuleProcess
from shmooze.moduletype import ModuleType
from shmooze.service import Service
from shmooze.watchdog import OWNER_VAR, Watchdog

log = logging.getLogger(__name__)


class ModuleHost(Service):
    """A service that starts, commands and stops module processes."""

    def __init__(self, modules: Iterable[ModuleType], *, max_modules: int = 1000, max_line: int = 1 << 20,
                 keep_ended: int = 100, containment: str = "auto", check_peers: bool = True):
        """``containment``: ``auto`` (a cgroup per module where possible), ``cgroup`` or ``process-group``;
        ``check_peers``: refuse connections to a module's ports from processes that are not the module."""
        super().__init__()
        self.types = _by_name(modules, "module")
        self.max_modules = max_modules
        self.max_line = max_line
        self.command_log: Any = None  # set by the application (see shmooze.cmdlog)
        self._lock = threading.RLock()  # the service's lists of modules
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
        self.check_peers = check_peers
        self.containment: Containment | None = None
        self._background_work: set[concurrent.futures.Future] = set()
        self._refused_before = 0  # connections refused by modules that have ended
        self._commands_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._watchdog: Watchdog | None = None
        self._reaper: threading.Thread | None = None

    # -- life --------------------------------------------------------------------------

    def start(self) -> None:
        self._boot()

    def _boot(self) -> None:
        with self._boot_lock:
            if self._booted:
                return
            procutil.become_subreaper()
            self.loop = IOLoop(f"{self.name}-io")
            self.containment = Containment(self._token, self.containment_mode)
            self._commands_pool = concurrent.futures.ThreadPoolExecutor(32, thread_name_prefix=f"{self.name}-cmd")
            self._watchdog = Watchdog(self._token, self.containment.folder)
            self._reaper = threading.Thread(target=self._reap_loop, name=f"{self.name}-reaper", daemon=True)
            self._reaper.start()
            self._booted = True

    def stop(self) -> None:
        """Stop every module through the ladder (all at once), then the guard and the I/O thread.

        A second caller waits for the first to finish."""
        with self._lock:
            closing, self._closing = self._closing, True
            modules = self._all_modules()
        if closing:
            self._stop_done.wait()
            return
        try:
            self._stop_all(modules)
        finally:
            self._stop_done.set()

    def _stop_all(self, modules: list[ModuleProcess]) -> None:
        if self._booted:
            log.info("%s stopping: %d module(s)", self.name, len(modules))
            threads = [threading.Thread(target=self._finish, args=(m, "service stopping", True)) for m in modules]
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
                if guard.proc.poll() is not None and not self._closing:
                    # The guard was killed: start another and tell it every module still here.
                    log.warning("%s: the orphan guard (pid %d) died; starting a new one", self.name, guard.proc.pid)
                    self._watchdog = guard = Watchdog(self._token, self.containment.folder)
                    for module in live:
                        if module.pid:
                            guard.watch(module.pid)
            managed.append(guard.proc.pid)
            procutil.reap_orphans(managed)

    def _watch(self, pgid: int) -> None:
        with self._lock:
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
            threading.Thread(target=run, name=f"{self.name}-ladder", daemon=True).start()
        except RuntimeError:  # no thread to be had (process limit): do it here
            run()
        return future

    # -- what subclasses provide -------------------------------------------------------

    def _attach(self, module: ModuleProcess) -> None:
        """Put a started module in place (called with the lock held)."""
        raise NotImplementedError

    def _detach(self, uid: str) -> ModuleProcess | None:
        """Take a module out of place (called with the lock held)."""
        raise NotImplementedError

    def _placed(self) -> list[ModuleProcess]:
        """Every placed module, in order (called with the lock held)."""
        raise NotImplementedError

    def _orders(self) -> list[tuple[ModuleProcess, str]]:
        """Play/suspend commands that the rule asks for now (called with the lock held)."""
        return []

    def _after_change(self) -> None:
        """Apply the rule: send the play/suspend orders it asks for, drop modules that fail them, repeat."""
        with self._rule_lock:
            while True:
                with self._lock:
                    orders = self._orders()
                    for module, cmd in orders:
                        module.told = cmd
                failed = self._send_all(orders)
                if not failed:
                    return
                self._drop([m.uid for m in failed], "failed play/suspend", send_rm=False)

    # -- helpers -----------------------------------------------------------------------

    def _all_modules(self) -> list[ModuleProcess]:
        return self._placed() + list(self._starting.values())

    def _new_uid(self) -> str:
        return f"{self._uid_prefix}-{next(self._uid_counter)}"

    def _find(self, uid: str) -> ModuleProcess:
        with self._lock:
            for module in self._placed():
                if module.uid == uid:
                    return module
        raise CommandError(f"no module with uid {uid!r}")

    def _spawn(self, types: dict[str, ModuleType], type: str, args: dict[str, Any], kind: str) -> ModuleProcess:
        """Start a module of one of ``types``; it is running (init answered) when this returns."""
        self._boot()
        mtype = types.get(type)
        if mtype is None:
            raise CommandError(f"unknown {kind} type {type!r} (available: {', '.join(sorted(types)) or 'none'})")
        with self._lock:
            if self._closing:
                raise CommandError(f"{self.name} is stopping")
            if len(self._all_modules()) >= self.max_modules:
                raise CommandError(f"{self.name} already holds {self.max_modules} modules, its limit")
            uid = self._new_uid()
            try:
                box = self.containment.box(uid)
            except OSError as exc:
                raise CommandError(f"cannot make the cgroup of module {uid}: {exc.strerror or exc}") from None
            module = ModuleProcess(mtype, uid, self.loop, on_update=self._on_update, on_gone=self._on_gone,
                                   env={OWNER_VAR: self._token, MODULE_VAR: uid}, box=box,
                                   check_peers=self.check_peers, max_line=self.max_line, on_spawn=self._watch)
            self._starting[uid] = module
        try:
            module.start(args)
        except CommandError:
            self._record_end(module)
            raise
        finally:
            with self._lock:
                self._starting.pop(uid, None)
        return module

    def _drop(self, uids: Iterable[str], reason: str, send_rm: bool) -> list[concurrent.futures.Future]:
        """Take modules out of place and start their stop ladders (concurrently, in the background)."""
        with self._lock:
            removed = [m for m in (self._detach(uid) for uid in uids) if m is not None]
        return [self._retire(m, reason, send_rm) for m in removed]

    def _retire(self, module: ModuleProcess, reason: str, send_rm: bool) -> concurrent.futures.Future:
        """Stop a module that is no longer in place, in the background."""
        with self._lock:
            self._stopping[module.uid] = module
        self.changed("removed", uid=module.uid, type=module.type.name, reason=reason)
        return self._in_thread(self._finish, module, reason, send_rm)

    def _remove(self, uids: Iterable[str], reason: str, send_rm: bool = True, wait: bool = True) -> None:
        """Take modules out, stop them, apply the rule again; with ``wait``, return once they are reaped."""
        futures = self._drop(uids, reason, send_rm)
        if not futures:
            return
        if wait:
            self._after_change()
            concurrent.futures.wait(futures)
        else:
            self._in_thread(self._after_change)

    def _finish(self, module: ModuleProcess, reason: str, send_rm: bool) -> None:
        try:
            module.stop(reason, send_rm=send_rm)
        except Exception:
            log.exception("stopping module %s failed", module.uid)
        finally:
            with self._lock:
                self._stopping.pop(module.uid, None)
            if module.pid and self._watchdog is not None:
                with self._lock:
                    self._watchdog.forget(module.pid)
            self._record_end(module)
            self.changed("stopped", uid=module.uid, type=module.type.name, ended_by=module.ended_by)

    def _record_end(self, module: ModuleProcess) -> None:
        module.wait_stopped(60)
        with self._lock:
            self._refused_before += module.refused
        self._ended.append(module.snapshot())

    def _on_update(self, module: ModuleProcess, cmd: str, args: dict[str, Any]) -> None:
        """An update line from a module (I/O thread): publish it."""
        if cmd == "set_parameters":
            self.changed("parameters", uid=module.uid, set=args.get("parameters", {}))
        elif cmd == "unset_parameters":
            self.changed("parameters", uid=module.uid, unset=args.get("parameters", []))
        if self.command_log is not None:
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

    def add(self, type: str, args: dict = {}) -> dict:  # noqa: B006 - never mutated
        """Start a module of a type; answers ``{"uid": UID}`` once the module answered ``init``."""
        module = self._spawn(self.types, type, args, "module")
        with self._lock:
            closing = self._closing
            if not closing:
                self._attach(module)
        if closing:
            self._finish(module, "service stopping", True)
            raise CommandError(f"{self.name} is stopping")
        self.changed("added", uid=module.uid, type=type)
        self._log_command("add", {"type": type, "args": args}, {"uid": module.uid}, module.uid, type)
        self._remove_if_left(module)
        self._after_change()
        return {"uid": module.uid}

    def _remove_if_left(self, module: ModuleProcess) -> None:
        """Call once a module is in place: if it left before (during init, or before it was placed,
        when :meth:`_on_gone` found nothing to remove), remove it now."""
        if module.gone_reason is not None:
            self._remove([module.uid], f"module left: {module.gone_reason}", send_rm=False, wait=False)

    def modules_available(self) -> list[str]:
        """Names of the module types this service can start."""
        return sorted(self.types)

    def rm(self, uids: list[str]) -> None:
        """Remove modules (unknown uids are ignored); returns once their processes are stopped."""
        self._log_command("rm", {"uids": uids})
        self._remove(uids, "rm")

    def tell_module(self, uid: str, cmd: str, args: dict = {}) -> Any:  # noqa: B006 - never mutated
        """Send the module the custom command ``do_CMD`` and return its answer."""
        return self._tell(self._find(uid), cmd, args, "tell_module")

    def ask_module(self, uid: str, parameters: list[str]) -> dict:
        """The named parameters of a module, as it last reported them."""
        return self._find(uid).get_parameters(parameters)

    def status(self) -> dict[str, Any]:
        info = super().status()
        with self._lock:
            modules = [m.snapshot() for m in self._all_modules()]
            stopping = [m.snapshot() for m in self._stopping.values()]
        info.update(modules=modules, stopping=stopping, ended=list(self._ended),
                    types=sorted(self.types), watchdog_pid=self._watchdog.proc.pid if self._watchdog else None,
                    containment=self.containment.describe() if self.containment else None,
                    refused_connections=self._refused_before + sum(m.refused for m in self._all_modules()))
        return info

    def _log_command(self, cmd: str, args: dict[str, Any], result: Any = None, uid: str | None = None,
                     type: str | None = None) -> None:
        if self.command_log is not None:
            self.command_log.record(f"client-{self.name}", uid, {"cmd": cmd, "args": args}, result, type)

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


def _by_name(types: Iterable[ModuleType], kind: str) -> dict[str, ModuleType]:
    table: dict[str, ModuleType] = {}
    for t in types:
        if t.name in table:
            raise ValueError(f"two {kind} types named {t.name!r}")
        table[t.name] = t
    return table

