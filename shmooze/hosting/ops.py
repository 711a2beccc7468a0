"""Operating the modules of a queue or pool: their output, figures, metrics and recent ends.

:class:`HostOps` is the part of a :class:`~shmooze.hosting.host.ModuleHost` that serves the people running
it: it hears the host's lifecycle (a module started, ended) and the lines modules print, and answers
the ``status`` figures, the ``output`` and ``metrics`` commands. Restarts are
:mod:`shmooze.hosting.restarter`'s.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from shmooze.errors import CommandError
from shmooze.hosting.lifecycle import Ended, Started, StartFailed, Subscriber
from shmooze.hosting.output import ModuleOutput
from shmooze.system import usage
from shmooze.system.limits import Limits, ended_by_limit

if TYPE_CHECKING:
    from shmooze.hosting.journal import Journal
    from shmooze.hosting.moduleprocess import ModuleProcess
    from shmooze.hosting.moduletable import ModuleTable
    from shmooze.hosting.restarter import RestartPolicies
    from shmooze.hosting.runtime import ModuleRuntime
    from shmooze.http.metrics import ServiceStats
    from shmooze.moduletype import ModuleType
    from shmooze.system.containment import Containment
    from shmooze.system.ioloop import IOLoop
    from shmooze.system.storage import Health

log = logging.getLogger(__name__)

#: How often (at most) a service publishes an ``output`` change event, in seconds.
OUTPUT_EVENT_INTERVAL = 0.25
#: While someone read ``status`` within WATCHED seconds (a dashboard), a ``figures`` event every INTERVAL
#: tells them the CPU and memory figures moved (so the dashboard need not poll).
FIGURES_INTERVAL, FIGURES_WATCHED = 2.0, 30.0


class Host(Protocol):
    """What the operations figures use of their host (a :class:`~shmooze.hosting.host.ModuleHost`)."""

    stats: ServiceStats
    storage: Health
    types: dict[str, ModuleType]
    table: ModuleTable
    restarts: RestartPolicies

    @property
    def loop(self) -> IOLoop | None: ...

    @property
    def restoring(self) -> bool: ...

    @property
    def runtime(self) -> ModuleRuntime | None: ...

    @property
    def journal(self) -> Journal | None: ...

    @property
    def containment(self) -> Containment | None: ...

    def changed(self, kind: str, **details: Any) -> int: ...


class HostOps(Subscriber):
    def __init__(self, host: Host, keep: int = 100):
        self.host = host
        #: Where each module's output file goes (set from the settings by ``shmooze serve``); None: memory only.
        self.output_folder: Path | None = None
        self.output_max_bytes = 1 << 20
        self.output_backups = 2
        self.keep = keep
        #: Snapshots of the modules that ended recently (``status``'s ``ended``), oldest first.
        self.ended_modules: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)
        self._outputs: collections.OrderedDict[str, ModuleOutput] = collections.OrderedDict()
        self._meters: dict[str, usage.Meter] = {}
        self._lock = threading.Lock()
        self._pending_output: dict[str, int] = {}
        self._output_timer = False
        self._status_read = -FIGURES_WATCHED
        self._figures_sent = 0.0

    # -- output ------------------------------------------------------------------------

    def output_of(self, uid: str, create: bool = True) -> ModuleOutput | None:
        with self._lock:
            out = self._outputs.get(uid)
        if out is not None or not create:
            return out
        keep = {m.uid for m in self.host.table.live()} | self.host.restarts.waiting()  # (read outside the lock)
        with self._lock:
            out = self._outputs.get(uid)
            if out is None:
                out = self._outputs[uid] = ModuleOutput(uid, self.output_folder, max_bytes=self.output_max_bytes,
                                                        backups=self.output_backups)
                self._forget_oldest(keep)
            return out

    def _forget_oldest(self, live: set[str]) -> None:
        while len(self._outputs) > self.keep + len(live):
            for uid in self._outputs:
                if uid not in live:
                    self._outputs.pop(uid).remove_files()
                    self._meters.pop(uid, None)
                    break
            else:
                return

    def on_output(self, module: ModuleProcess, stream: str, text: str) -> None:
        """A line the module printed (I/O thread): keep it; tell watchers, at most every quarter second."""
        out = self.output_of(module.uid)
        assert out is not None  # made when missing
        n = out.add(stream, text)
        with self._lock:
            self._pending_output[module.uid] = n
            if self._output_timer:
                return
            self._output_timer = True
        assert self.host.loop is not None  # modules print only once the host has booted
        self.host.loop.call_later(OUTPUT_EVENT_INTERVAL, self._publish_output)

    def _publish_output(self) -> None:
        with self._lock:
            pending, self._pending_output = self._pending_output, {}
            self._output_timer = False
        if pending:
            self.host.changed("output", lines=pending)

    def output(self, uid: str, after: int = 0, lines: int = 200) -> dict[str, Any]:
        out = self.output_of(uid, create=False)
        if out is None:
            if self.host.table.find(uid) is None and uid not in self.host.restarts.waiting():
                raise CommandError(f"no output kept for module {uid!r}")
            # A module that has printed nothing yet: its (empty) output, said in words too.
            return {"uid": uid, "lines": [], "next": 0, "missed": 0, "file": None,
                    "note": f"module {uid} has printed nothing yet"}
        return out.since(after, max(0, min(lines, 10_000)))

    # -- figures -----------------------------------------------------------------------

    def host_status(self) -> dict[str, Any]:
        """What a module host adds to a service's ``status``: its modules (:meth:`modules_status`), module
        types, whether it is restoring, its orphan guard, journal and containment."""
        host = self.host
        # Read before the modules are listed: a restore that ends while they are (its modules started but
        # not yet placed are in no list) would otherwise say it is over beside a short list.
        restoring = host.restoring
        return {**self.modules_status(), "types": sorted(host.types), "restoring": restoring,
                "watchdog_pid": host.runtime.watchdog_pid if host.runtime else None,
                "journal": host.journal.status() if host.journal else None,
                "containment": host.containment.describe() if host.containment else None}

    def modules_status(self) -> dict[str, Any]:
        """The modules of ``status``: those live and stopping with their figures, those waiting to restart
        and given up, then those ended recently (read last: a restart is planned after its end joins them);
        and the service's own CPU and memory, and its storage."""
        table = self.host.table
        with table.lock:
            live = table.live()
            modules = [m.snapshot() for m in live]
            stopping = [m.snapshot() for m in table.stopping()]
        self.add_figures(modules, live)
        now = time.monotonic()
        self._status_read = now
        info: dict[str, Any] = {"modules": modules, "stopping": stopping, **self.host.restarts.status()}
        info.update(ended=list(self.ended_modules), refused_connections=table.refused())
        info["storage"] = self.host.storage.status()
        return info

    def add_figures(self, snapshots: list[dict[str, Any]], modules: list[ModuleProcess]) -> None:
        """Add CPU, memory and restart figures to ``status`` snapshots of running modules."""
        groups = usage.scan_groups()
        now = time.monotonic()
        for snap, module in zip(snapshots, modules):
            meter = self._meters.get(module.uid)
            if meter is None:
                meter = self._meters[module.uid] = usage.Meter(module.started_mono)
            snap.update(usage.describe(module.pid, meter, groups, module.box.figures()))
            snap.update(self.host.restarts.view(module.uid, now))
            limits = Limits.of(module.type)
            if limits:
                snap["limits"] = limits.describe()
                snap["limits_held"] = limits.held_by(module.box.held)

    def tick(self) -> None:
        """Called twice a second (the host's reaper loop): publish ``figures`` while status is watched."""
        now = time.monotonic()
        if now - self._status_read < FIGURES_WATCHED and now - self._figures_sent >= FIGURES_INTERVAL:
            self._figures_sent = now
            self.host.changed("figures")

    # -- lifecycle ---------------------------------------------------------------------

    def started(self, event: Started) -> None:
        self.host.stats.starts.labels(event.module.type.name, "ok").inc()

    def start_failed(self, event: StartFailed) -> None:
        self.host.stats.starts.labels(event.module.type.name, "failed").inc()

    def ended(self, event: Ended) -> None:
        """The module's ladder is over: name a limit that ended it (before anything else reads its rung),
        count its end, and keep its snapshot among the recently ended."""
        module = event.module
        if self.host.loop is not None and not module.output_read:  # let the I/O thread read its last words first
            flushed = threading.Event()
            self.host.loop.call_soon(flushed.set)
            flushed.wait(2)
        self._meters.pop(module.uid, None)  # (a restart measures from its own start)
        limits = Limits.of(module.type)
        if limits and not self.host.restarts.was_removed(module) and module.ended_by in ("exited", "rm", None):
            out = self.output_of(module.uid, create=False)
            last = [line["text"] for line in out.since(max(0, out.count - 20), 20)["lines"]] if out else []
            figures = usage.scan_groups().get(module.pid or -1)
            box = module.box
            hit = ended_by_limit(limits, module.returncode, last, figures.cpu_seconds if figures else None,
                                 hits=box.hits, held=box.held)
            if hit is not None:
                module.ended_by, why = hit
                module.stop_reason = f"{why}; {module.stop_reason}" if module.stop_reason else why
        self.host.stats.ends.labels(module.type.name, module.ended_by or "unknown").inc()
        self.ended_modules.append(module.snapshot())

    # -- metrics -----------------------------------------------------------------------

    def gauges(self) -> list[tuple[str, str, str, dict[str, str], float]]:
        modules = self.host.table.live()
        running: dict[str, int] = collections.Counter(m.type.name for m in modules)
        out = [("shmooze_modules_running", "Modules running now, by type", "gauge", {"type": t}, float(n))
               for t, n in sorted(running.items())]
        for t in sorted(set(self.host.types) - set(running)):
            out.append(("shmooze_modules_running", "Modules running now, by type", "gauge", {"type": t}, 0.0))
        return out + self.host.restarts.gauges()
