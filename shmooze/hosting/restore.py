"""Restoring a host's modules from its journal after a restart: :class:`Restorer`.

The host starts serving at once; the journal's modules are started again in the background (several
at a time), each with ``restored`` beside its ``init`` args, and put in place before anything added
meanwhile. A command that concerns them waits for the restore (:meth:`Restorer.wait_for`), so it
applies to the restored state.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol

from shmooze.errors import CommandError
from shmooze.hosting.lifecycle import Restored

if TYPE_CHECKING:
    from shmooze.hosting.clientkeys import ClientKeys
    from shmooze.hosting.cmdlog import CommandRecorder
    from shmooze.hosting.journal import Entry, Journal
    from shmooze.hosting.lifecycle import Lifecycle
    from shmooze.hosting.moduleprocess import ModuleProcess
    from shmooze.hosting.moduletable import ModuleTable
    from shmooze.hosting.places import Places
    from shmooze.moduletype import ModuleType

log = logging.getLogger(__name__)

#: Seconds a command concerning modules being restored waits for the restore before it gives up.
RESTORE_WAIT = 120.0


class Host(Protocol):
    """What the restore uses of its host (a :class:`~shmooze.hosting.host.ModuleHost`)."""

    name: str
    journal: Journal | None
    restore_hook: Callable[[Entry], bool] | None
    restore_concurrency: int
    places: Places
    table: ModuleTable
    keys: ClientKeys
    recorder: CommandRecorder
    lifecycle: Lifecycle

    def type_tables(self) -> dict[str, dict[str, ModuleType]]: ...

    def spawn(self, types: dict[str, ModuleType], type: str, args: dict[str, Any], kind: str,
              uid: str | None = None, restored: dict[str, Any] | None = None) -> ModuleProcess: ...

    def stop_module(self, module: ModuleProcess, reason: str, send_rm: bool) -> None: ...

    def settle(self, modules: list[ModuleProcess]) -> None: ...

    def after_restore(self) -> None: ...


class Restorer:
    def __init__(self, host: Host):
        self.host = host
        #: True from :meth:`begin` until the journal's modules are back (or could not be).
        self.restoring = False
        self._done = threading.Event()
        self._uids: set[str] = set()  # of the modules being restored
        self._keys: set[str] = set()  # their client keys
        self._thread: threading.Thread | None = None

    def begin(self) -> None:
        """Restore the journal's modules on a thread; the host's ``after_restore`` follows."""
        journal = self.host.journal
        if journal is not None:
            self._uids = {e["uid"] for e in journal.recovered}
            self._keys = {e["key"] for e in journal.recovered if e.get("key")}
        self.restoring = True
        self._thread = threading.Thread(target=self._run, name=f"{self.host.name}-restore", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        """Wait for the restore (the host is closing: it starts nothing more and stops what it started)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def wait_for(self, uids: Iterable[Any] | None = None) -> None:
        """While the journal's modules are being restored, wait for the restore when a command concerns
        them (``uids``; None: the whole queue, as ``mv`` does), so it applies to the restored state: an
        ``rm`` of a module being restored removes it once it is back, and the removal is journaled."""
        if not self.restoring:
            return
        if uids is not None and self._uids.isdisjoint(u for u in uids if isinstance(u, str)):
            return
        if not self._done.wait(RESTORE_WAIT):
            raise CommandError(f"{self.host.name} is still restoring its modules; try again in a moment")

    def wait_for_key(self, key: str) -> None:
        """A retry of a command whose first answer is being restored gets that answer, not a second module."""
        if self.restoring and key in self._keys:
            self.wait_for()

    def _run(self) -> None:
        host = self.host
        try:
            entries = host.journal.recovered if host.journal is not None else []
            if entries:
                self._restore(entries)
        except Exception:
            log.exception("%s: restoring from the journal failed", host.name)
        finally:
            self.restoring = False
            self._uids, self._keys = set(), set()
            self._done.set()
        if host.table.closing:
            return
        try:
            host.after_restore()
        except Exception:
            log.exception("%s: after_restore failed", host.name)

    def _wanted(self, entries: list[Entry]) -> tuple[list[tuple[Entry, ModuleType]], list[str]]:
        """The entries to restore, with their types; and the uids of those not restored, each logged with why."""
        tables = self.host.type_tables()
        wanted, dropped = [], []
        for entry in entries:
            mtype = tables.get(entry.get("kind", ""), {}).get(entry.get("type", ""))
            if mtype is None:
                why = f"no {entry.get('kind')} type {entry.get('type')!r} any more"
            elif not mtype.restore:
                why = f"type {mtype.name!r} is not restored (restore=False)"
            elif self.host.restore_hook is not None and not self.host.restore_hook(dict(entry)):
                why = "the application's restore hook declined it"
            elif (held := self.host.places.refusal(mtype)) is not None:  # kept in the journal for its own place
                log.info("%s: not starting module %s here: %s", self.host.name, entry.get("uid"), held)
                self.host.places.hold(entry, mtype, held)
                continue
            else:
                wanted.append((entry, mtype))
                continue
            log.info("%s: not restoring module %s: %s", self.host.name, entry.get("uid"), why)
            dropped.append(entry["uid"])
        return wanted, dropped

    def _restore(self, entries: list[Entry]) -> None:
        host, table = self.host, self.host.table
        assert host.journal is not None  # the entries come from it
        host.recorder.journaled_adds(entries)
        wanted, dropped = self._wanted(entries)
        log.info("%s: restoring %d module(s) from %s", host.name, len(wanted), host.journal.path)
        started: list[tuple[Entry, ModuleProcess]] = []
        with concurrent.futures.ThreadPoolExecutor(host.restore_concurrency,
                                                   thread_name_prefix=f"{host.name}-restore") as pool:
            futures = [pool.submit(host.spawn, {mtype.name: mtype}, e["type"], e.get("args", {}), e["kind"],
                                   e["uid"], {"uid": e["uid"], "parameters": e.get("parameters", {})})
                       for e, mtype in wanted]
            for (entry, _), future in zip(wanted, futures):
                try:
                    started.append((entry, future.result()))
                except CommandError as exc:
                    log.warning("%s: module %s (%s) could not be restored: %s", host.name, entry["uid"],
                                entry["type"], exc)
                    dropped.append(entry["uid"])
        modules = [m for e, m in started if e["kind"] == "module"]
        backgrounds = [m for e, m in started if e["kind"] == "background"]
        with table.lock:
            if table.closing:
                unplaced = modules + backgrounds
            else:
                unplaced = table.place_restored(modules, backgrounds[-1] if backgrounds else None)
                unplaced += backgrounds[:-1]
        for entry, module in started:
            if entry.get("key") and module not in unplaced:
                host.keys.remember(entry["key"], {"uid": module.uid}, entry.get("time", 0))
        for module in unplaced:  # in this thread: the host's stop waits for it
            host.stop_module(module, "service stopping" if table.closing else "not placed after restore", True)
        if table.closing:
            return
        placed = [m for _, m in started if m not in unplaced]
        host.lifecycle.publish(Restored(placed, dropped))
        log.info("%s: restored %d module(s)", host.name, len(placed))
        host.settle(placed)
