"""Restart policies at work in a host: a module that ended is started again as its type's policy says.

:class:`RestartPolicies` hears a host's lifecycle: a module that started gets a
:class:`~shmooze.restart.Tracker`; one that ended (once its end is in the recently ended) gets a
restart planned, or given up; the restart starts it again under its uid, through the host.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Protocol

from shmooze.caller import current
from shmooze.errors import CommandError
from shmooze.hosting.lifecycle import Ended, Started, Subscriber
from shmooze.hosting.modulechanges import by_field
from shmooze.restart import Policy, Tracker

if TYPE_CHECKING:
    import concurrent.futures

    from shmooze.hosting.moduleprocess import ModuleProcess
    from shmooze.hosting.moduletable import ModuleTable
    from shmooze.http.metrics import ServiceStats
    from shmooze.moduletype import ModuleType
    from shmooze.system.ioloop import IOLoop

log = logging.getLogger(__name__)

#: Ends that are removals, not failures: nothing is restarted after them.
REMOVALS = ("rm", "service stopping", "replaced by a new background")


class Host(Protocol):
    """What the restart policies use of their host (a :class:`~shmooze.hosting.host.ModuleHost`)."""

    stats: ServiceStats
    restartable: tuple[str, ...]

    @property
    def loop(self) -> IOLoop | None: ...

    @property
    def table(self) -> ModuleTable: ...

    def changed(self, kind: str, **details: Any) -> int: ...

    def in_thread(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future: ...

    def start_and_place(self, types: dict[str, ModuleType], type: str, args: dict[str, Any], kind: str,
                        key: str | None = None, uid: str | None = None,
                        logged_as: str | None = None) -> ModuleProcess: ...


class RestartPolicies(Subscriber):
    def __init__(self, host: Host, keep: int = 100):
        self.host = host
        self.keep = keep
        self._trackers: dict[str, Tracker] = {}
        self._waiting: dict[str, dict[str, Any]] = {}  # uid -> planned restart (type, args, kind)
        self._given_up: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._lock = threading.Lock()

    # -- views -------------------------------------------------------------------------

    def view(self, uid: str, now: float) -> dict[str, Any]:
        """A module's restart figures in ``status``."""
        tracker = self._trackers.get(uid)
        return tracker.view(now) if tracker is not None else {"restarts": 0}

    def waiting(self) -> set[str]:
        """The uids of modules waiting to be restarted."""
        with self._lock:
            return set(self._waiting)

    def status(self) -> dict[str, Any]:
        """``restarting`` (modules waiting to restart) and ``given_up`` of ``status``."""
        now = time.monotonic()
        waiting = []
        with self._lock:
            for uid, plan in self._waiting.items():
                waiting.append({"uid": uid, "type": plan["type"].name, "state": "waiting to restart",
                                **self.view(uid, now)})
            given_up = list(self._given_up.values())
        return {"restarting": waiting, "given_up": given_up}

    def gauges(self) -> list[tuple[str, str, str, dict[str, str], float]]:
        with self._lock:
            return [("shmooze_modules_restarting", "Modules waiting to be restarted", "gauge", {},
                     float(len(self._waiting))),
                    ("shmooze_modules_given_up", "Modules whose restart policy gave up (recently)", "gauge",
                     {}, float(len(self._given_up)))]

    # -- lifecycle ---------------------------------------------------------------------

    def started(self, event: Started) -> None:
        """The module answered init (its first start or a restart): its policy tracks it."""
        module, kind = event.module, event.kind
        policy = Policy.of(module.type)
        if policy.mode == "never" or kind not in self.host.restartable:
            return
        with self._lock:
            tracker = self._trackers.get(module.uid)
            if tracker is None:
                tracker = self._trackers[module.uid] = Tracker(policy)
            tracker.started(time.monotonic())
            self._waiting.pop(module.uid, None)
        module.restart_plan = {"type": module.type, "args": event.args, "kind": kind}

    def ended(self, event: Ended) -> None:
        """Heard after the module's end joined the recently ended: plan a restart if its policy asks for
        one (so ``status`` never shows a restart waiting or given up without the end that caused it)."""
        module = event.module
        plan = module.restart_plan
        if plan is None or module.start_failed:
            return
        failed = (module.returncode not in (0, None) or (event.rung or "").startswith("limit:")
                  or not (module.stop_reason or "").startswith("module left"))
        self._plan(module.uid, plan, failed, self.was_removed(module), f"{event.rung}: {module.stop_reason}")

    def was_removed(self, module: ModuleProcess) -> bool:
        """Whether the module was removed (by ``rm`` and the like, or the service stopping), not ended."""
        return module.stop_reason in REMOVALS or self.host.table.closing

    def cancel(self, uid: str) -> bool:
        """Drop a planned restart (the module was removed while it waited); True if there was one."""
        with self._lock:
            plan = self._waiting.pop(uid, None)
            self._trackers.pop(uid, None)
        if plan is not None:
            self.host.changed("removed", uid=uid, type=plan["type"].name, reason="rm", **by_field(current()))
        return plan is not None

    # -- restarting --------------------------------------------------------------------

    def _plan(self, uid: str, plan: dict[str, Any], failed: bool, removed: bool, why: str) -> None:
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
        self.host.loop.call_later(delay, lambda: self._submit(uid))

    def _submit(self, uid: str) -> None:
        if not self.host.table.closing:  # (the ladder threads are gone once the service stopped)
            self.host.in_thread(self._restart, uid)

    def _restart(self, uid: str) -> None:
        with self._lock:
            plan = self._waiting.get(uid)
            tracker = self._trackers.get(uid)
        if plan is None or tracker is None or self.host.table.closing:
            return
        try:
            self.host.start_and_place({plan["type"].name: plan["type"]}, plan["type"].name, plan["args"], plan["kind"],
                                         uid=uid)
        except CommandError as exc:
            log.warning("module %s (%s): restart failed: %s", uid, plan["type"].name, exc)
            with self._lock:
                tracker.starts.append(time.monotonic())
            self._plan(uid, plan, True, False, f"start failed: {exc}")
            return
        with self._lock:
            tracker.restarts += 1
        self.host.stats.restarts.labels(plan["type"].name).inc()
