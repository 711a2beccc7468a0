"""Operating the modules of a queue or pool: their output, figures, metrics, limits and restarts.

:class:`HostOps` is the part of a :class:`~shmooze.host.ModuleHost` that serves the people running
it; the host calls it at a few points (a module started, printed a line, ended) and it answers the
``status`` figures, the ``output`` and ``metrics`` commands, and restarts modules as their type's
policy says (:mod:`shmooze.restart`).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shmooze import usage
from shmooze.errors import CommandError
from shmooze.limits import Limits, ended_by_limit
from shmooze.output import ModuleOutput
from shmooze.restart import Policy, Tracker

if TYPE_CHECKING:
    from shmooze.host import ModuleHost
    from shmooze.module import ModuleProcess

log = logging.getLogger(__name__)

#: Ends that are removals, not failures: nothing is restarted after them.
REMOVALS = ("rm", "service stopping", "replaced by a new background")
#: How often (at most) a service publishes an ``output`` change event, in seconds.
OUTPUT_EVENT_INTERVAL = 0.25
#: While someone read ``status`` within WATCHED seconds (a dashboard), a ``figures`` event every INTERVAL
#: tells them the CPU and memory figures moved (so the dashboard need not poll).
FIGURES_INTERVAL, FIGURES_WATCHED = 2.0, 30.0


class HostOps:
    def __init__(self, host: ModuleHost, keep: int = 100):
        self.host = host
        #: Where each module's output file goes (set from the settings by ``shmooze serve``); None: memory only.
        self.output_folder: Path | None = None
        self.output_max_bytes = 1 << 20
        self.output_backups = 2
        self.keep = keep
        self._outputs: collections.OrderedDict[str, ModuleOutput] = collections.OrderedDict()
        self._meters: dict[str, usage.Meter] = {}
        self._trackers: dict[str, Tracker] = {}
        self._waiting: dict[str, dict[str, Any]] = {}  # uid -> planned restart (type, args, kind)
        self._given_up: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._pending_output: dict[str, int] = {}
        self._output_timer = False
        self._own_meter = usage.Meter()
        self._status_read = -FIGURES_WATCHED
        self._figures_sent = 0.0

    # -- output ------------------------------------------------------------------------

    def output_of(self, uid: str, create: bool = True) -> ModuleOutput | None:
        with self._lock:
            out = self._outputs.get(uid)
            if out is None and create:
                out = self._outputs[uid] = ModuleOutput(uid, self.output_folder, max_bytes=self.output_max_bytes,
                                                        backups=self.output_backups)
                self._forget_oldest()
            return out

    def _forget_oldest(self) -> None:
        live = {m.uid for m in self.host._all_modules()} | set(self._waiting)
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
            raise CommandError(f"no output kept for module {uid!r}")
        return out.since(after, max(0, min(lines, 10_000)))

    # -- figures -----------------------------------------------------------------------

    def add_figures(self, snapshots: list[dict[str, Any]], modules: list[ModuleProcess]) -> None:
        """Add CPU, memory and restart figures to ``status`` snapshots of running modules."""
        groups = usage.scan_groups()
        now = time.monotonic()
        for snap, module in zip(snapshots, modules):
            meter = self._meters.get(module.uid)
            if meter is None:
                meter = self._meters[module.uid] = usage.Meter(module._started_mono)
            snap.update(usage.describe(module.pid, meter, groups, module.box.figures()))
            self._add_restart_view(snap, now)
            limits = Limits.of(module.type)
            if limits:
                snap["limits"] = limits.describe()
                snap["limits_held"] = limits.held_by(module.box.held)

    def _add_restart_view(self, snap: dict[str, Any], now: float) -> None:
        tracker = self._trackers.get(snap["uid"])
        snap.update(tracker.view(now) if tracker is not None else {"restarts": 0})

    def tick(self) -> None:
        """Called twice a second (the host's reaper loop): publish ``figures`` while status is watched."""
        now = time.monotonic()
        if now - self._status_read < FIGURES_WATCHED and now - self._figures_sent >= FIGURES_INTERVAL:
            self._figures_sent = now
            self.host.changed("figures")

    def status(self) -> dict[str, Any]:
        """Extra entries of ``status``: the service's own CPU and memory, modules waiting to restart and
        those given up."""
        now = time.monotonic()
        self._status_read = now
        own = usage.process_figures(os.getpid())
        info: dict[str, Any] = {}
        if own is not None:
            info.update(cpu_seconds=round(own.cpu_seconds, 3), cpu_percent=self._own_meter.percent(own.cpu_seconds),
                        rss_bytes=own.rss_bytes)
        waiting = []
        with self._lock:
            for uid, plan in self._waiting.items():
                entry = {"uid": uid, "type": plan["type"].name, "state": "waiting to restart"}
                self._add_restart_view(entry, now)
                waiting.append(entry)
            given_up = list(self._given_up.values())
        return {**info, "restarting": waiting, "given_up": given_up, "storage": self.host.storage.status()}

    # -- life of a module --------------------------------------------------------------

    def started(self, module: ModuleProcess, args: dict[str, Any], kind: str) -> None:
        """The module answered init (its first start or a restart)."""
        self.host.stats.starts.labels(module.type.name, "ok").inc()
        policy = Policy.of(module.type)
        if policy.mode == "never" or kind not in self.host.restartable:
            return
        with self._lock:
            tracker = self._trackers.get(module.uid)
            if tracker is None:
                tracker = self._trackers[module.uid] = Tracker(policy)
            tracker.started(time.monotonic())
            self._waiting.pop(module.uid, None)
        module.restart_plan = {"type": module.type, "args": args, "kind": kind}

    def start_failed(self, mtype: Any) -> None:
        self.host.stats.starts.labels(mtype.name, "failed").inc()

    def ended(self, module: ModuleProcess) -> None:
        """The module's ladder is over (before its snapshot joins the recently ended): name a limit that
        ended it and count its end (:meth:`plan_restart` follows, once the snapshot is there)."""
        if self.host.loop is not None:  # let the I/O thread read the module's last words first
            flushed = threading.Event()
            self.host.loop.call_soon(flushed.set)
            flushed.wait(2)
        self._meters.pop(module.uid, None)  # (a restart measures from its own start)
        limits = Limits.of(module.type)
        if limits and not self._removed(module) and module.ended_by in ("exited", "rm", None):
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

    def plan_restart(self, module: ModuleProcess) -> None:
        """After the module's snapshot joined the recently ended: plan a restart if its policy asks for
        one (so ``status`` never shows a restart waiting or given up without the end that caused it)."""
        plan = module.restart_plan
        if plan is None or module.start_failed:
            return
        failed = (module.returncode not in (0, None) or (module.ended_by or "").startswith("limit:")
                  or not (module.stop_reason or "").startswith("module left"))
        self._plan_restart(module.uid, plan, failed, self._removed(module), f"{module.ended_by}: {module.stop_reason}")

    def _removed(self, module: ModuleProcess) -> bool:
        """Whether the module was removed (by ``rm`` and the like, or the service stopping), not ended."""
        return module.stop_reason in REMOVALS or self.host._closing

    def _plan_restart(self, uid: str, plan: dict[str, Any], failed: bool, removed: bool, why: str) -> None:
        with self._lock:
            tracker = self._trackers.get(uid)
            if tracker is None:
                return
            delay = tracker.ended(time.monotonic(), failed, removed, why)
            if delay is None:
                if tracker.given_up:
                    self._given_up[uid] = {"uid": uid, "type": plan["type"].name, "restarts": tracker.restarts,
                                           "given_up": True, "last_end": why, "at": time.time()}
                    while len(self._given_up) > self.keep:
                        self._given_up.popitem(last=False)
                self._trackers.pop(uid, None)
                self._waiting.pop(uid, None)
                given_up = tracker.given_up
            else:
                self._waiting[uid] = plan
        if delay is None:
            if given_up:
                log.warning("module %s (%s): gave up restarting after %d start(s) within %g s", uid,
                            plan["type"].name, tracker.policy.max_starts, tracker.policy.window)
                self.host.changed("gave_up", uid=uid, type=plan["type"].name)
            return
        log.info("module %s (%s) ended (%s); restarting in %.3g s", uid, plan["type"].name, why, delay)
        self.host.changed("restarting", uid=uid, type=plan["type"].name, delay=delay)
        assert self.host.loop is not None  # modules end only once the host has booted
        self.host.loop.call_later(delay, lambda: self._submit_restart(uid))

    def _submit_restart(self, uid: str) -> None:
        if not self.host._closing:  # (the ladder threads are gone once the service stopped)
            self.host._in_thread(self._restart, uid)

    def cancel(self, uid: str) -> bool:
        """Drop a planned restart (the module was removed while it waited); True if there was one."""
        with self._lock:
            plan = self._waiting.pop(uid, None)
            self._trackers.pop(uid, None)
        if plan is not None:
            self.host.changed("removed", uid=uid, type=plan["type"].name, reason="rm")
        return plan is not None

    def _restart(self, uid: str) -> None:
        with self._lock:
            plan = self._waiting.get(uid)
            tracker = self._trackers.get(uid)
        if plan is None or tracker is None or self.host._closing:
            return
        try:
            self.host._spawn_restart(plan["type"], plan["args"], plan["kind"], uid)
        except CommandError as exc:
            log.warning("module %s (%s): restart failed: %s", uid, plan["type"].name, exc)
            with self._lock:
                tracker.starts.append(time.monotonic())
            self._plan_restart(uid, plan, True, False, f"start failed: {exc}")
            return
        with self._lock:
            tracker.restarts += 1
        self.host.stats.restarts.labels(plan["type"].name).inc()

    # -- metrics -----------------------------------------------------------------------

    def gauges(self) -> list[tuple[str, str, str, dict[str, str], float]]:
        with self.host._lock:
            modules = self.host._all_modules()
        running: dict[str, int] = collections.Counter(m.type.name for m in modules)
        out = [("shmooze_modules_running", "Modules running now, by type", "gauge", {"type": t}, float(n))
               for t, n in sorted(running.items())]
        for t in sorted(set(self.host.types) - set(running)):
            out.append(("shmooze_modules_running", "Modules running now, by type", "gauge", {"type": t}, 0.0))
        with self._lock:
            out.append(("shmooze_modules_restarting", "Modules waiting to be restarted", "gauge", {},
                        float(len(self._waiting))))
            out.append(("shmooze_modules_given_up", "Modules whose restart policy gave up (recently)", "gauge",
                        {}, float(len(self._given_up))))
        return out
