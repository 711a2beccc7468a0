"""Containment: how a service makes sure nothing a module started outlives the module.

Two kinds, chosen once per service:

* ``cgroup``: each module runs in its own cgroup v2 (:mod:`shmooze.system.cgroup`) under a
  folder of the service; every stop ends with ``cgroup.kill``. ``setsid``, double
  forks and a cleared environment change nothing.
* ``process-group``: where cgroups are not available. The module's process group
  is signalled, then every process still carrying the module's uid in its
  environment (``SHMOOZE_MODULE_UID``) is ended: a process that left the group and
  cleared its environment escapes this one.

Each module gets a :class:`Box` from :meth:`Containment.box`; the stop ladder calls
``box.sweep`` once the module's own process is gone, and ``box.release`` last.

Resource limits (:mod:`shmooze.system.limits`) go into cgroups where a controller is writable
(:class:`LimitPlaces`): the controllers enabled in the service's v2 folder, else a folder per
module in each cgroup v1 hierarchy (hybrid systems), which the box's launcher also enters and
its release removes. A box reads, before it is released, whether a limit was hit.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from shmooze.system import cgroup, procutil, usage
from shmooze.system.limits import Limits, cgroup_hits, cgroup_limits

log = logging.getLogger(__name__)

OWNER_VAR = "SHMOOZE_OWNER"
MODULE_VAR = "SHMOOZE_MODULE_UID"

CGROUP = "cgroup"
PROCESS_GROUP = "process-group"
#: Where limits go: ``auto`` (cgroups where writable, else rlimits), ``cgroup`` (required), ``rlimit``.
LIMIT_MODES = ("auto", "cgroup", "rlimit")
#: The controllers that hold limits (memory, pids, cpu) or, in v1, CPU time figures (cpuacct).
LIMIT_CONTROLLERS = ("memory", "pids", "cpu")


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
        #: Controller -> (cgroup version, the module's folder) where its limits or figures are kept.
        self.controllers: dict[str, tuple[int, Path]] = {}
        #: Folders made for it in cgroup v1 hierarchies (entered at start, removed at release).
        self.v1_folders: list[Path] = []
        #: Limit name -> where a cgroup holds it ("cgroup v1", "cgroup v2"); the others are rlimits.
        self.held: dict[str, str] = {}
        #: What its cgroups counted (limits.cgroup_hits), read at release.
        self.hits: dict[str, int] = {}

    def wrap(self, argv: list[str]) -> list[str]:
        """The command line that starts the module inside the box."""
        return cgroup.launch_argv(self.v1_folders, argv) if self.v1_folders else argv

    def popen(self, argv: list[str], **options: Any) -> subprocess.Popen:
        """Start the module's process (``argv``, with :class:`subprocess.Popen`'s ``options``) inside the box."""
        return subprocess.Popen(self.wrap(argv), **options)

    def rlimits(self, limits: Limits) -> Limits:
        """The limits left to rlimits (those no cgroup of this box holds)."""
        return limits.without(self.held)

    def figures(self) -> usage.Figures | None:
        """CPU time, memory and processes from the module's cgroups, when they account for both."""
        if "memory" not in self.controllers:
            return None
        return usage.cgroup_figures(self.controllers, self._cpu_stat(), self._process_count())

    def _cpu_stat(self) -> Path | None:
        return None

    def _process_count(self) -> int | None:
        folder = next((f for f in self.v1_folders), None)
        return len(cgroup.procs(folder)) if folder is not None else None

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
        from shmooze.system.ladder import sweep_group

        left = sweep_group(pgid, grace)
        if self.sweeper is not None:
            strays = [p for p in self.sweeper.find(self.uid) if procutil.alive(p)]
            if strays:
                log.info("module %s: %d process(es) outside its group carried its uid; ended", self.uid, len(strays))
                end_pids(strays, grace)
                left += len(strays)
        return left

    def release(self) -> None:
        """Free what the box holds (its cgroup folders), after reading whether a limit was hit."""
        self._read_hits()
        self._remove_v1()

    def _read_hits(self) -> None:
        if self.held and not self.hits:
            self.hits = cgroup_hits(self.controllers)

    def _remove_v1(self) -> None:
        for folder in self.v1_folders:
            if not cgroup.remove_v1(folder):
                log.error("module %s: cannot remove its cgroup %s", self.uid, folder)


#: How the service's own interpreter runs a module's Python file in a cgroup box: the interpreter starts
#: where the service is, then waits, before the module's first line, for the go-ahead on the pipe
#: (``argv[1]``) that the service writes once it has moved the process into the box; on end-of-file
#: instead (the move failed, or the service died) it exits with 125, as the launcher does. The move
#: waits in the kernel for an RCU grace period (a few ms to 15 ms); this way it overlaps the
#: interpreter's start-up instead of coming before it. The file then runs as ``python FILE`` runs it.
GATED_PYTHON = """import os, sys
def _run():
    gate = int(sys.argv[1])
    if os.read(gate, 1) != b"1":
        os._exit(125)
    os.close(gate)
    del sys.argv[:2]
    path = sys.argv[0]
    try:
        with open(path, "rb") as f:
            source = f.read()
    except OSError as exc:
        sys.stderr.write(f"{sys.executable}: can't open file {os.path.abspath(path)!r}: "
                         f"[Errno {exc.errno}] {exc.strerror}\\n")
        os._exit(2)
    if not getattr(sys.flags, "safe_path", False):  # (-c put "" first, where a file's run puts its folder)
        sys.path[0] = os.path.dirname(os.path.realpath(path))
    main = sys.modules["__main__"].__dict__
    for name in ("os", "sys", "_run"):
        del main[name]
    main["__file__"] = path
    exec(compile(source, path, "exec"), main)
_run()
"""


class CgroupBox(Box):
    kind = CGROUP

    def __init__(self, uid: str, path: Path):
        super().__init__(uid, None)
        self.path = path
        self.removed = False  # its folder is gone already (the sweep's rmdir): nothing to remove at release

    def wrap(self, argv: list[str]) -> list[str]:
        return cgroup.launch_argv([self.path, *self.v1_folders], argv)

    def popen(self, argv: list[str], **options: Any) -> subprocess.Popen:
        if not self._gated(argv):
            return super().popen(argv, **options)
        gate, go = os.pipe()
        try:
            proc = subprocess.Popen([argv[0], "-c", GATED_PYTHON, str(gate), *argv[1:]], pass_fds=(gate,), **options)
        except BaseException:
            os.close(go)
            raise
        finally:
            os.close(gate)
        try:
            cgroup.enter(self.path, proc.pid)
            os.write(go, b"1")
        except ProcessLookupError:
            pass  # it ended already (its interpreter failed): nothing to contain, and no go-ahead
        except BaseException:
            proc.kill()  # still at the gate: nothing of the module ran
            proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
            raise
        finally:
            os.close(go)
        return proc

    def _gated(self, argv: list[str]) -> bool:
        """Whether the module is a Python file run by the service's own interpreter (``python FILE ...``),
        in this v2 folder alone. Not where the folder accounts memory, nor with v1 folders (limits): the
        interpreter's start-up would be counted where the service is, not in the module's figures."""
        return (len(argv) > 1 and argv[0] == sys.executable and not argv[1].startswith("-")
                and not self.v1_folders and "memory" not in self.controllers)

    def members(self) -> list[int]:
        return cgroup.members(self.path)

    def _cpu_stat(self) -> Path | None:
        return self.path / "cpu.stat"

    def _process_count(self) -> int | None:
        return len(cgroup.members(self.path))

    def sweep(self, pgid: int, grace: float = 1.0) -> int:
        if not self.held:  # no limit's figures to read first: the usual end is one rmdir (empty, so gone)
            if cgroup.remove_empty(self.path):
                self.removed = True
                return 0
        elif not cgroup.populated(self.path):  # (one read: no live process in it or below, the usual end)
            return 0
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
        self._read_hits()
        if not self.removed:
            cgroup.remove(self.path)  # (kills what is left: the v1 folders hold the same processes)
        self._remove_v1()


class LimitPlaces:
    """Where a service's module limits go, per controller: the controllers enabled in its cgroup v2
    folder, else a folder of the service in each writable cgroup v1 hierarchy (removed at the end)."""

    def __init__(self, token: str, v2_folder: Path | None, mode: str = "auto"):
        if mode not in LIMIT_MODES:
            raise ValueError(f"module_limits must be one of {', '.join(LIMIT_MODES)}, not {mode!r}")
        self.v2_folder = v2_folder
        self.v2: set[str] = set()
        self.v1: dict[str, Path] = {}  # controller -> the service's folder in that v1 hierarchy
        self.why_not = ""
        if mode == "rlimit":
            self.why_not = "rlimits chosen (module_limits)"
            return
        if v2_folder is not None:
            self.v2 = _enable_v2(v2_folder)
        for ctl in (*LIMIT_CONTROLLERS, "cpuacct"):
            if ctl in self.v2 or (ctl == "cpuacct" and v2_folder is not None):
                continue  # (in v2, every cgroup has cpu.stat)
            parent = cgroup.own_v1(ctl)
            if parent is None:
                continue
            folder = parent / f"shmooze-{token}"
            if folder in self.v1.values():  # co-mounted controllers (cpu,cpuacct) share one hierarchy
                self.v1[ctl] = folder
                continue
            for stale in cgroup.sweep_stale(parent, version=1):
                log.warning("removed the cgroup %s of a service that is gone", stale)
            try:
                folder.mkdir(exist_ok=True)
            except OSError as exc:
                self.why_not = f"cannot make {folder}: {exc.strerror}"
                continue
            self.v1[ctl] = folder
        if not self.kinds() and not self.why_not:
            self.why_not = "no memory, pids or cpu controller is writable, in cgroup v2 or v1"
        if mode == "cgroup" and not self.kinds():
            raise RuntimeError(f"cgroup limits are not available: {self.why_not}")

    def kinds(self) -> dict[str, str]:
        """Limit controller -> where it is held (``cgroup v2``, ``cgroup v1``)."""
        return {ctl: "cgroup v2" if ctl in self.v2 else "cgroup v1" for ctl in LIMIT_CONTROLLERS
                if ctl in self.v2 or ctl in self.v1}

    def furnish(self, box: Box, v2_path: Path | None, limits: Limits) -> None:
        """Make the module's v1 folders and write its limits (into them, or its v2 folder ``v2_path``);
        on failure, what was made is removed and the error raised."""
        wanted = limits.controllers()  # limit name -> controller
        if v2_path is not None:  # (v2 accounts for every module at no cost: its figures come from there)
            box.controllers.update({ctl: (2, v2_path) for ctl in self.v2})
        if not limits or not (self.v2 or self.v1):
            return
        needs = set(wanted.values()) | {"memory", "cpuacct"}  # (memory and CPU time: the figures)
        made: dict[Path, Path] = {}  # service folder -> module folder
        try:
            for ctl in sorted(needs):
                if ctl in self.v2 and v2_path is not None:
                    box.controllers[ctl] = (2, v2_path)
                elif ctl in self.v1:
                    folder = made.get(self.v1[ctl])
                    if folder is None:
                        folder = made[self.v1[ctl]] = self.v1[ctl] / box.uid
                        folder.mkdir()
                        box.v1_folders.append(folder)
                    box.controllers[ctl] = (1, folder)
            for name, ctl in wanted.items():
                if ctl not in box.controllers:
                    continue
                version, folder = box.controllers[ctl]
                swap = (folder / ("memory.swap.max" if version == 2 else "memory.memsw.limit_in_bytes")).exists()
                for file, value in cgroup_limits(Limits(**{name: getattr(limits, name)}), version, swap)[ctl]:
                    (folder / file).write_text(value)
                box.held[name] = f"cgroup v{version}"
        except OSError:
            for folder in box.v1_folders:
                cgroup.remove_v1(folder)
            raise

    def describe(self) -> dict[str, Any]:
        return {**self.kinds(), **({"why": self.why_not} if self.why_not else {})}

    def close(self) -> None:
        for folder in set(self.v1.values()):
            cgroup.remove_v1(folder)


def _enable_v2(folder: Path) -> set[str]:
    """Enable the limit controllers that the parent offers to ``folder``'s children; those enabled."""
    try:
        offered = set((folder / "cgroup.controllers").read_text().split())
    except OSError:
        return set()
    for ctl in LIMIT_CONTROLLERS:
        if ctl in offered:
            try:
                (folder / "cgroup.subtree_control").write_text(f"+{ctl}")
            except OSError as exc:
                log.info("cannot enable the %s controller in %s: %s", ctl, folder, exc.strerror)
    try:
        return set((folder / "cgroup.subtree_control").read_text().split()) & set(LIMIT_CONTROLLERS)
    except OSError:
        return set()


class Containment:
    """A service's containment: makes boxes, describes itself, ends everything at the end."""

    def __init__(self, token: str, mode: str = "auto", sweep_tokens: bool = True, limits: str = "auto"):
        """``mode``: ``auto`` (cgroup where possible), ``cgroup`` (required) or ``process-group``;
        ``limits``: where module limits go (see :class:`LimitPlaces`): ``auto``, ``cgroup`` or ``rlimit``."""
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
        try:
            self.places = LimitPlaces(token, self.folder, limits)
        except Exception:
            if self.folder is not None:
                cgroup.remove(self.folder)
            raise
        log.info("module limits: %s", ", ".join(f"{c} in {k}" for c, k in self.places.kinds().items())
                 or f"rlimits ({self.places.why_not})")

    def box(self, uid: str, limits: Limits | None = None) -> Box:
        """A new module's box (its cgroup folders are made, and its limits written, here)."""
        path = None
        if self.folder is not None:
            path = self.folder / uid
            path.mkdir()
        box: Box = CgroupBox(uid, path) if path is not None else Box(uid, self.sweeper)
        try:
            self.places.furnish(box, path, limits or Limits())
        except OSError:
            if path is not None:
                cgroup.remove(path)
            raise
        return box

    def describe(self) -> dict[str, Any]:
        """What ``status`` shows."""
        if self.folder is not None:
            return {"kind": CGROUP, "path": str(self.folder), "limits": self.places.describe()}
        return {"kind": PROCESS_GROUP, "token_sweep": self.sweeper is not None, "why": self.why_not,
                "limits": self.places.describe()}

    def close(self) -> None:
        """At the end of the service: end anything left, remove the service's folders."""
        if self.folder is not None:
            cgroup.remove(self.folder)
        elif self.sweeper is not None:
            left = [p for p in processes_with_env(token=self.token) if procutil.alive(p)]
            if left:
                log.warning("%d process(es) with this service's token outlived their modules; ended", len(left))
                end_pids(left, 1.0)
        self.places.close()
