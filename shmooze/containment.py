"""Containment: how a service makes sure nothing a module started outlives the module.

Two kinds, chosen once per service:

* ``cgroup``: each module runs in its own cgroup v2 (:mod:`shmooze.cgroup`) under a
  folder of the service; every stop ends with ``cgroup.kill``. ``setsid``, double
  forks and a cleared environment change nothing.
* ``process-group``: where cgroups are not available. The module's process group
  is signalled, then every process still carrying the module's uid in its
  environment (``SHMOOZE_MODULE_UID``) is ended: a process that left the group and
  cleared its environment escapes this one.

Each module gets a :class:`Box` from :meth:`Containment.box`; the stop ladder calls
``box.sweep`` once the module's own process is gone, and ``box.release`` last.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from shmooze import cgroup, procutil

log = logging.getLogger(__name__)

OWNER_VAR = "SHMOOZE_OWNER"
MODULE_VAR = "SHMOOZE_MODULE_UID"

CGROUP = "cgroup"
PROCESS_GROUP = "process-group"


def processes_with_env(token: str, values: set[str] | None = None) -> dict[int, str | None]:
    """Pids whose environment carries ``OWNER_VAR=token`` (and, with ``values``, a module uid among them).

    Returns pid -> module uid (or None). One pass over ``/proc``.
    """
    prefix = f"{MODULE_VAR}=".encode()
    found: dict[int, str | None] = {}
    for pid, env in procutil.with_environ(f"{OWNER_VAR}={token}").items():
        uid = next((i[len(prefix):].decode(errors="replace") for i in env if i.startswith(prefix)), None)
        if values is None or uid in values:
            found[pid] = uid
    return found


def end_pids(pids: list[int], grace: float) -> None:
    """SIGTERM, wait up to ``grace`` seconds, SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        if sig == signal.SIGTERM:
            deadline = time.monotonic() + grace
            while any(procutil.alive(p) for p in pids) and time.monotonic() < deadline:
                time.sleep(0.01)
            pids = [p for p in pids if procutil.alive(p)]
            if not pids:
                return


class TokenSweeper:
    """Ends processes by the module uid in their environment; concurrent sweeps share one pass over /proc.

    Stopping 200 modules at once costs a few scans of ``/proc``, not 200.
    """

    def __init__(self, token: str):
        self.token = token
        self._lock = threading.Lock()
        self._waiting: dict[str, list[threading.Event]] = {}
        self._found: dict[str, list[int]] = {}
        self._scanning = False

    def find(self, uid: str) -> list[int]:
        """Pids (other than ours) that carry this module's uid and the service's token."""
        done = threading.Event()
        with self._lock:
            self._waiting.setdefault(uid, []).append(done)
            scan = not self._scanning
            self._scanning = scan or self._scanning
        while scan:
            with self._lock:
                batch, self._waiting = self._waiting, {}
                if not batch:
                    self._scanning = False
                    break
            hits = processes_with_env(token=self.token, values=set(batch))
            with self._lock:
                for name, events in batch.items():
                    self._found[name] = [p for p, u in hits.items() if u == name]
                    for ev in events:
                        ev.set()
        done.wait()
        with self._lock:
            return self._found.pop(uid, [])


class Box:
    """One module's containment."""

    kind = PROCESS_GROUP

    def __init__(self, uid: str, sweeper: TokenSweeper | None):
        self.uid = uid
        self.sweeper = sweeper
        self.pid: int | None = None

    def wrap(self, argv: list[str]) -> list[str]:
        """The command line that starts the module inside the box."""
        return argv

    def members(self) -> list[int]:
        """Pids known to belong to the module (its own and its descendants')."""
        if self.pid is None:
            return []
        out, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(procutil.children(pid))
        return out

    def sweep(self, pgid: int, grace: float = 1.0) -> int:
        """End whatever the module left behind (after its own process has exited); how many were left."""
        from shmooze.ladder import sweep_group

        left = sweep_group(pgid, grace)
        if self.sweeper is not None:
            strays = [p for p in self.sweeper.find(self.uid) if procutil.alive(p)]
            if strays:
                log.info("module %s: %d process(es) outside its group carried its uid; ended", self.uid, len(strays))
                end_pids(strays, grace)
                left += len(strays)
        return left

    def release(self) -> None:
        """Free what the box holds (the cgroup folder)."""


class CgroupBox(Box):
    kind = CGROUP

    def __init__(self, uid: str, path: Path):
        super().__init__(uid, None)
        self.path = path

    def wrap(self, argv: list[str]) -> list[str]:
        return cgroup.launch_argv(self.path, argv)

    def members(self) -> list[int]:
        return cgroup.members(self.path)

    def sweep(self, pgid: int, grace: float = 1.0) -> int:
        left = [p for p in cgroup.members(self.path) if procutil.alive(p)]
        if not left:
            return 0
        if grace > 0:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGTERM)
                except OSError:
                    pass
            cgroup.wait_empty(self.path, grace)
        if cgroup.populated(self.path):
            cgroup.kill(self.path)
            if not cgroup.wait_empty(self.path, 5.0):
                log.error("module %s: processes %s survived cgroup.kill", self.uid, cgroup.members(self.path))
        return len(left)

    def release(self) -> None:
        cgroup.remove(self.path)


class Containment:
    """A service's containment: makes boxes, describes itself, ends everything at the end."""

    def __init__(self, token: str, mode: str = "auto", sweep_tokens: bool = True):
        """``mode``: ``auto`` (cgroup where possible), ``cgroup`` (required) or ``process-group``."""
        if mode not in ("auto", CGROUP, PROCESS_GROUP):
            raise ValueError(f"containment must be auto, {CGROUP} or {PROCESS_GROUP}, not {mode!r}")
        self.token = token
        self.folder: Path | None = None
        self.why_not = ""
        if mode == PROCESS_GROUP:
            self.why_not = "process-group chosen"
        else:
            parent, self.why_not = cgroup.usable_parent()
            if parent is not None:
                for stale in cgroup.sweep_stale(parent):
                    log.warning("removed the cgroup %s of a service that is gone", stale)
                folder = parent / f"shmooze-{token}"
                try:
                    folder.mkdir(exist_ok=True)
                    self.folder = folder
                except OSError as exc:
                    self.why_not = f"cannot make {folder}: {exc.strerror}"
            if self.folder is None and mode == CGROUP:
                raise RuntimeError(f"cgroup containment is not available: {self.why_not}")
        self.kind = CGROUP if self.folder is not None else PROCESS_GROUP
        self.sweeper = TokenSweeper(token) if sweep_tokens and self.folder is None else None
        if self.folder is None:
            log.info("containment: process group + environment sweep (%s)", self.why_not)
        else:
            log.info("containment: one cgroup v2 per module under %s", self.folder)

    def box(self, uid: str) -> Box:
        """A new module's box (its cgroup is made here)."""
        if self.folder is None:
            return Box(uid, self.sweeper)
        path = self.folder / uid
        path.mkdir()
        return CgroupBox(uid, path)

    def describe(self) -> dict[str, Any]:
        """What ``status`` shows."""
        if self.folder is not None:
            return {"kind": CGROUP, "path": str(self.folder)}
        return {"kind": PROCESS_GROUP, "token_sweep": self.sweeper is not None, "why": self.why_not}

    def close(self) -> None:
        """At the end of the service: end anything left, remove the service's folder."""
        if self.folder is not None:
            cgroup.remove(self.folder)
        elif self.sweeper is not None:
            left = [p for p in processes_with_env(token=self.token) if procutil.alive(p)]
            if left:
                log.warning("%d process(es) with this service's token outlived their modules; ended", len(left))
                end_pids(left, 1.0)
