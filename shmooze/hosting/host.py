"""The base of services that hold modules: the queue and the pool.

A host keeps its modules in a :class:`~shmooze.hosting.moduletable.ModuleTable` (states, uid index, lock)
whose placement policy (:mod:`shmooze.hosting.placement`: the queue's order, the pool's set) says where a
module goes and what it is told. Each step of a module's life is one method here: :meth:`spawn`
starts it, :meth:`start_and_place` puts it in place, :meth:`_remove` takes modules out and
:meth:`stop_modules` is the one stop path of every module (its ladder, then its end). Each step is
published as a lifecycle event (:mod:`shmooze.hosting.lifecycle`) to the journal, the command log, the
operations figures, the restart policies and the change events, in the order declared in
:meth:`ModuleHost.__init__`. Processes run in a :class:`~shmooze.hosting.runtime.ModuleRuntime`; the journal's
modules come back through a :class:`~shmooze.hosting.restore.Restorer`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import secrets
import threading
from typing import Any, Callable, Iterable

from shmooze import protocol
from shmooze.commands import command
from shmooze.errors import CommandError
from shmooze.hosting.acknowledge import answer_when_kept
from shmooze.hosting.clientkeys import ClientKeys
from shmooze.hosting.cmdlog import CommandLog, CommandRecorder
from shmooze.hosting.journal import FSYNC, Entry, Journal, JournalRecorder
from shmooze.hosting.lifecycle import (
    Answered,
    Ended,
    Lifecycle,
    Placed,
    Removed,
    Started,
    StartFailed,
    Told,
    Updated,
)
from shmooze.hosting.modulechanges import ModuleChanges
from shmooze.hosting.moduleprocess import ModuleBroken, ModuleError, ModuleProcess, stop_all
from shmooze.hosting.moduletable import ModuleTable
from shmooze.hosting.ops import HostOps
from shmooze.hosting.originallog import OriginalLog, OriginalLogWriter
from shmooze.hosting.placement import Placement
from shmooze.hosting.places import Places
from shmooze.hosting.playrule import PlayRule
from shmooze.hosting.restarter import RestartPolicies
from shmooze.hosting.restore import Restorer
from shmooze.hosting.runtime import ModuleRuntime
from shmooze.moduletype import ModuleType, available, by_name
from shmooze.service import Service
from shmooze.system.containment import Containment
from shmooze.system.ioloop import IOLoop

log = logging.getLogger(__name__)


class ModuleHost(Service):
    """A service that starts, commands and stops module processes, placed by ``placement``.

    ``journal`` (a path or a :class:`~shmooze.hosting.journal.Journal`): what the service keeps to restore its
    modules after a restart (in the background, from :meth:`start`); ``restore_hook(entry) -> bool``
    decides per module whether it is restored. ``key_window``: seconds for which a repeated client
    ``key`` of ``add`` / ``set_bg`` gets the first answer. ``log_module_updates``: every module's
    parameter updates go to the command log. ``containment``: ``auto`` (a cgroup per module where
    possible), ``cgroup`` or ``process-group``; ``check_peers``: refuse connections to a module's ports
    from processes that are not the module. Acknowledged means kept: see :meth:`_dispatch`.
    """

    #: Which kinds of module a restart policy applies to ("module" or "background").
    restartable: tuple[str, ...] = ("module",)
    #: Its table and namespaces in the original's command log (``queue_log``, ``client-queue``).
    original_kind = "queue"

    def __init__(self, modules: Iterable[ModuleType], *, placement: Placement, max_modules: int = 1000,
                 max_line: int = 1 << 20, keep_ended: int = 100, journal: str | Journal | None = None,
                 restore_hook: Callable[[Entry], bool] | None = None, restore_concurrency: int = 8,
                 key_window: float = 600.0, log_module_updates: bool = False, containment: str = "auto",
                 check_peers: bool = True, durability: str = FSYNC):
        super().__init__()
        self.types = by_name(modules, "module")
        self.max_modules, self.max_line = max_modules, max_line
        self.command_log: CommandLog | None = None  # set by the application (see shmooze.hosting.cmdlog)
        #: The command log in the original's tables (see shmooze.hosting.originallog); set by the settings.
        self.original_log: OriginalLogWriter | None = None
        self.journal: Journal | None = journal if isinstance(journal, Journal) else None
        #: Where the journal is opened when the service starts (set from the settings by shmooze.serve).
        self.journal_path = journal if isinstance(journal, str) else None
        self.restore_hook, self.restore_concurrency = restore_hook, max(1, restore_concurrency)
        self.log_module_updates = log_module_updates
        self.durability = durability  # of the journal made here (see shmooze.hosting.journal)
        self.containment_mode = containment
        self.limits_mode = "auto"  # where module limits go: auto, cgroup or rlimit (shmooze.system.containment)
        self.check_peers = check_peers
        self.places = Places()  # module types bound to a place run only where it is theirs
        self.table = ModuleTable(placement)
        self.restorer = Restorer(self)
        self.keys = ClientKeys(key_window, wait=self.restorer.wait_for_key)  # (a retry of an add being restored)
        self.runtime: ModuleRuntime | None = None  # made when the host boots
        self.loop: IOLoop | None = None  # the runtime's, once booted
        self.containment: Containment | None = None  # the runtime's, once booted
        self._token = f"{os.getpid()}-{secrets.token_hex(8)}"
        self._stop_done = threading.Event()
        self.ops = HostOps(self, keep=keep_ended)  # output, figures, recent ends (shmooze.hosting.ops)
        self.restarts = RestartPolicies(self, keep=keep_ended)
        self.rule = PlayRule(self.table, lambda orders: self._boot().send(orders, self._told),
                             lambda uids: self._remove(uids, "failed play/suspend", send_rm=False, wait=False))
        self.recorder = CommandRecorder(lambda: self.name, lambda: self.command_log, lambda: self.log_module_updates)
        self.original = OriginalLog(lambda: self.original_log)
        # Who hears each step of a module's life, in this order (the only place it is set):
        self.lifecycle = Lifecycle([
            JournalRecorder(lambda: self.journal),  # first: what a success answer promises is on its way to disk
            self.recorder,  # the command log's rows, kept before the answer as the journal's records are
            self.original,  # the original's command log rows (never waited for)
            self.ops,  # names the limit that ended a module before anyone reads its rung; keeps the recent ends
            self.restarts,  # after the end is among the recent ends: status never shows a restart without it
            ModuleChanges(self.changed, self.changed_each),  # last: a client told of a change finds all it did
        ])

    # -- life --------------------------------------------------------------------------

    @property
    def restoring(self) -> bool:
        return self.restorer.restoring

    def start(self) -> None:
        """Boot, then restore the journal's modules in the background (:meth:`after_restore` follows)."""
        self._boot()
        if self.journal is None and self.journal_path:
            self.journal = Journal(self.journal_path, self.name, durability=self.durability, health=self.storage)
        if isinstance(self.journal, Journal) and self.command_log is not None:  # (one in etcd keeps no rows)
            self.command_log.keep_in(self.journal)  # a row in the same write and sync as its change
        self.restorer.begin()

    def _boot(self) -> ModuleRuntime:
        with self.table.lock:
            if self.runtime is None:
                self.runtime = ModuleRuntime(self.name, self._token, self.table, self.ops.tick,
                                             containment=self.containment_mode, limits=self.limits_mode)
                self.loop, self.containment = self.runtime.loop, self.runtime.containment
            return self.runtime

    def stop(self) -> None:
        """Stop every module through the ladder (all at once), then the runtime; a second caller waits."""
        if self.journal is not None:
            self.journal.close()  # what the service holds now is what it restores: not its stopping
        if self.table.close():
            self._stop_done.wait()
            return
        try:
            self.restorer.join(60)  # it sees closing, starts nothing more and stops what it started
            if self.runtime is not None:
                self.runtime.close(self.stop_modules)
            self.lifecycle.close()  # the command logs
            super().stop()
        finally:
            self._stop_done.set()

    def in_thread(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        """Run ``fn(*args)`` on a thread of its own (see :meth:`ModuleRuntime.in_thread`)."""
        return self._boot().in_thread(fn, *args)

    def after_restore(self) -> None:
        """Called once the journal's modules are back (at once when there was nothing to restore).
        Applications override it, e.g. to set a default background only when none was restored."""

    def type_tables(self) -> dict[str, dict[str, ModuleType]]:
        """The module types this host starts, by kind ("module"; a queue adds "background")."""
        return {"module": self.types}

    # -- a module's life ---------------------------------------------------------------

    def spawn(self, types: dict[str, ModuleType], type: str, args: dict[str, Any], kind: str,
              uid: str | None = None, restored: dict[str, Any] | None = None) -> ModuleProcess:
        """Start a module of one of ``types``; it is running (init answered) when this returns.

        ``uid`` and ``restored`` start a module again after a restart (see :mod:`shmooze.hosting.restore`)."""
        runtime = self._boot()
        mtype = types.get(type)
        if mtype is None:
            raise CommandError(f"unknown {kind} type {type!r} (available: {', '.join(sorted(types)) or 'none'})")
        self.places.check(mtype, self.name)
        with self.table.lock:
            refusal = self.table.refusal(self.max_modules)
            if refusal is not None:
                raise CommandError(f"{self.name} {refusal}")
            uid = uid or self.table.new_uid()
            module = runtime.module(mtype, uid, {"SHMOOZE_RESTORED": "1"} if restored is not None else {},
                                    on_update=self._on_update, on_gone=self._on_gone, on_output=self.ops.on_output,
                                    check_peers=self.check_peers, max_line=self.max_line,
                                    on_answer=self.original.answer_hook(self.lifecycle) if kind == "module" else None)
            self.table.starting(module)
        try:
            module.start(args, restored)
        except CommandError:
            self.lifecycle.publish(StartFailed(module))
            self.stop_module(module, "start failed", send_rm=False)  # stopped already: this records its end
            raise
        finally:
            self.table.started(module)
        self.lifecycle.publish(Started(module, args, kind))
        return module

    def start_and_place(self, types: dict[str, ModuleType], type: str, args: dict[str, Any], kind: str,
                         key: str | None = None, uid: str | None = None,
                         logged_as: str | None = None) -> ModuleProcess:
        """The one placing sequence: start a module, put it in place (what it displaced is taken out and
        stopped) and publish it, then remove it at once if it already left, and apply the rule. ``uid``:
        a restart of that module, which may find no place (it is then stopped)."""
        module = self.spawn(types, type, args, kind, uid=uid)
        with self.table.lock:
            closing = self.table.closing
            displaced = None if closing else self.table.place(module, kind, restarted=uid is not None)
            if displaced is not None:
                self.lifecycle.publish(Placed(module, args, kind, key, uid is not None, logged_as, displaced))
        if displaced is None:
            self.stop_module(module, "service stopping" if closing else "rm", True)
            if uid is None:
                raise CommandError(f"{self.name} is stopping")
            return module
        self._stop_taken(displaced, f"replaced by a new {kind}", send_rm=True, wait=False)
        self.settle([module])
        return module

    def settle(self, modules: list[ModuleProcess]) -> None:
        """Once modules are in place: remove those that left before (during init, or before they were
        placed, when :meth:`_on_gone` found nothing to remove), then apply the rule."""
        for module in modules:
            if module.gone_reason is not None:
                self._remove([module.uid], f"module left: {module.gone_reason}", send_rm=False, wait=False)
        self.rule.apply()

    def _remove(self, uids: Iterable[str], reason: str, send_rm: bool = True, wait: bool = True) -> None:
        """Take modules out of place (their removal published) and stop them (see :meth:`_stop_taken`)."""
        with self.table.lock:
            removed = self.table.take_out(uids)
            if removed:
                self.lifecycle.publish(Removed(removed, reason))
        self._stop_taken(removed, reason, send_rm, wait)

    def _stop_taken(self, modules: list[ModuleProcess], reason: str, send_rm: bool, wait: bool) -> None:
        """:meth:`stop_modules` modules taken out of place, together on a thread, and apply the rule again;
        with ``wait``, return once they are reaped."""
        if not modules:
            return
        future = self.in_thread(self.stop_modules, modules, reason, send_rm)
        if wait:
            self.rule.apply()
            concurrent.futures.wait([future])
        else:
            self.in_thread(self.rule.apply)

    def stop_module(self, module: ModuleProcess, reason: str, send_rm: bool) -> None:
        """The one stop path of one module (see :meth:`stop_modules`)."""
        self.stop_modules([module], reason, send_rm)

    def stop_modules(self, modules: list[ModuleProcess], reason: str, send_rm: bool) -> None:
        """The one stop path: the modules' ladders, together on this thread (once each, whoever asks), then
        each one's end published as it ends, here only."""
        published: set[int] = set()

        def ended(group: list[ModuleProcess]) -> None:
            for module in group:
                published.add(id(module))
                self._end(module)

        try:
            stop_all(modules, reason, send_rm, ended)
        except Exception:
            log.exception("stopping module(s) %s failed", ", ".join(m.uid for m in modules))
        for module in modules:
            if id(module) not in published:
                module.wait_stopped(60)
                self._end(module)

    def _end(self, module: ModuleProcess) -> None:
        """A module is stopped: out of the table and the guard's watch, its end published."""
        try:
            self.table.stopped(module)
            if module.pid and self.runtime is not None:
                self.runtime.forget(module.pid)
            self.lifecycle.publish(Ended(module))
        except Exception:
            log.exception("publishing the end of module %s failed", module.uid)

    def _told(self, module: ModuleProcess, cmd: str) -> None:
        self.lifecycle.publish(Told(module, cmd))

    def _on_update(self, module: ModuleProcess, cmd: str, args: dict[str, Any]) -> None:
        """An update line from a module (I/O thread)."""
        self.lifecycle.publish(Updated(module, cmd, args))

    def _on_gone(self, module: ModuleProcess, reason: str) -> None:
        """The module is leaving on its own (I/O thread): remove it without blocking this thread."""
        self._remove([module.uid], f"module left: {reason}", send_rm=False, wait=False)

    def _find(self, uid: str) -> ModuleProcess:
        module = self.table.find(uid)
        if module is None:
            raise CommandError(f"no module with uid {uid!r}")
        return module

    def _tell(self, module: ModuleProcess, cmd: str, args: dict[str, Any], logged_as: str) -> Any:
        """Send ``do_CMD``; log it as ``logged_as``; a broken module is removed."""
        try:
            result = module.call("do_" + cmd, args)
            self.recorder.command(logged_as, {"uid": module.uid, "cmd": cmd, "args": args}, result, module.uid,
                                  module.type.name)
            return result
        except ModuleError as exc:
            raise CommandError(f"module {module.uid} ({module.type.name}): {exc}") from None
        except ModuleBroken as exc:
            self._remove([module.uid], f"broken: {exc}", send_rm=False, wait=False)
            raise CommandError(f"module {module.uid} ({module.type.name}) failed and was removed: {exc}") from None

    # -- shared commands ---------------------------------------------------------------

    @command
    def add(self, type: str, args: dict = {}, key: str | None = None) -> dict:  # noqa: B006 - never mutated
        """Start a module of a type; answers ``{"uid": UID}`` once the module answered ``init``.

        ``key``: a client's name for this request; a repeat within the key window gets the first answer."""
        return self.keys.once(key, lambda: {"uid": self.start_and_place(self.types, type, args, "module", key,
                                                                     logged_as="add").uid})

    @command(read_only=True)
    def modules_available(self, describe: bool = False) -> list:
        """Names of the module types this service can start; with ``describe``, ``{"name", "description"}``
        of each."""
        return available(self.types, describe)

    @command
    def rm(self, uids: list[str]) -> None:
        """Remove modules (unknown uids are ignored); returns once their processes are stopped."""
        self.restorer.wait_for(uids)  # a module being restored is removed once it is back, not missed
        self.recorder.command("rm", {"uids": uids})
        self.places.release(uids, self.journal)  # (kept stopped here, bound to another place)
        for uid in uids:
            self.restarts.cancel(uid)  # a module waiting to be restarted is removed too
        self._remove(uids, "rm")

    @command
    def tell_module(self, uid: str, cmd: str, args: dict = {}) -> Any:  # noqa: B006 - never mutated
        """Send the module the custom command ``do_CMD`` and return its answer."""
        self.restorer.wait_for([uid])
        return self._tell(self._find(uid), cmd, args, "tell_module")

    @command(read_only=True)
    def ask_module(self, uid: str, parameters: list[str]) -> dict:
        """The named parameters of a module, as it last reported them."""
        return self._find(uid).get_parameters(parameters)

    @command(read_only=True)
    def status(self) -> dict[str, Any]:
        return {**super().status(), **self.ops.host_status(), **self.places.status()}

    @command(read_only=True)
    def output(self, uid: str, after: int = 0, lines: int = 200) -> dict:
        """What a module printed (running or recently ended): its lines numbered after ``after``, at most
        ``lines`` of the newest; ``next`` is what to ask after next time."""
        return self.ops.output(uid, after, lines)

    @command(read_only=True)
    def history(self, limit: int = 20, type: str | None = None) -> list:
        """Modules added recently, newest first (from the command log), optionally of one type."""
        return self.recorder.history(limit, type)

    def _gauges(self) -> list:
        return super()._gauges() + self.ops.gauges()

    def _dispatch(self, item: protocol.Item) -> dict[str, Any]:
        """Run a command; one that changes something is answered once its change is kept (shmooze.hosting.acknowledge)."""
        spec = self._commands.get(getattr(item, "cmd", ""))
        if spec is None or spec.read_only:
            return super()._dispatch(item)
        answer = answer_when_kept(lambda: super(ModuleHost, self)._dispatch(item), spec.name, self.name,
                                  self.journal, self.command_log, self.durability)
        self.lifecycle.publish(Answered(spec.name, getattr(item, "args", {}), answer))
        return answer
