"""Resource limits per module type: in the module's cgroups where the kernel allows, else rlimits;
and telling a module ended by one.

Set on a module type (:class:`~shmooze.moduletype.ModuleType`, or ``module_types`` in the settings):
``limit_memory`` (bytes), ``limit_cpu`` (seconds of CPU time), ``limit_cpu_rate`` (CPUs, e.g. 0.5
for half of one core), ``limit_files`` (open files) and ``limit_processes`` (processes and threads).

Where each goes (:class:`~shmooze.system.containment.Containment` decides, per controller):

* cgroup v2 with the controllers enabled for the service's folder: ``memory.max`` (and
  ``memory.swap.max`` 0), ``pids.max`` and ``cpu.max`` on the module's own cgroup;
* cgroup v1 hierarchies (hybrid systems): ``memory.limit_in_bytes`` (and ``memory.memsw.limit_in_bytes``
  where swap is accounted), ``pids.max``, ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in a folder per
  module in each hierarchy;
* else rlimits: ``RLIMIT_AS`` for memory (address space, a cruder measure), ``RLIMIT_NPROC`` for
  processes (it counts every process of the user, and root is exempt), none for the CPU rate.

CPU time and open files have no cgroup file: they are always rlimits (``RLIMIT_CPU``: SIGXCPU at
the limit, SIGKILL a second later; ``RLIMIT_NOFILE``), set before the module's program runs by
starting it through util-linux's ``prlimit`` (no ``preexec_fn`` in the service's threaded process);
where there is no ``prlimit``, with :func:`resource.prlimit` on the started process.

A cgroup limit tells exactly when it was hit (``memory.events`` / ``memory.oom_control`` ``oom_kill``,
``pids.events`` ``max``); an rlimit makes the kernel refuse, and the module then fails in its own
way, read from its exit status and last lines. :func:`ended_by_limit` names the rung
(``limit:memory``, ``limit:cpu``, ``limit:files``, ``limit:processes``) and the reason.
"""

from __future__ import annotations

import resource
import shutil
import signal
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping

PRLIMIT = shutil.which("prlimit")

#: Output that says a limit was hit, by the limit's name.
_SIGNS = {
    "memory": ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory", "Out of memory"),
    "files": ("Too many open files",),
    "processes": ("Resource temporarily unavailable", "can't start new thread", "fork: retry"),
}


@dataclass(frozen=True)
class Limits:
    memory: int | None = None
    cpu: float | None = None
    files: int | None = None
    processes: int | None = None
    cpu_rate: float | None = None

    @classmethod
    def of(cls, mtype: Any) -> Limits:
        return cls(getattr(mtype, "limit_memory", None), getattr(mtype, "limit_cpu", None),
                   getattr(mtype, "limit_files", None), getattr(mtype, "limit_processes", None),
                   getattr(mtype, "limit_cpu_rate", None))

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.memory, self.cpu, self.files, self.processes, self.cpu_rate))

    def without(self, names: Iterable[str]) -> Limits:
        """The same limits but those named (held by a cgroup instead)."""
        return replace(self, **{name: None for name in names})

    def rlimits(self) -> list[tuple[str, int, int, int]]:
        """``(name, RLIMIT_*, soft, hard)`` for each limit set."""
        out: list[tuple[str, int, int, int]] = []
        if self.memory is not None:
            out.append(("memory", resource.RLIMIT_AS, int(self.memory), int(self.memory)))
        if self.cpu is not None:
            soft = max(1, int(round(self.cpu)))
            out.append(("cpu", resource.RLIMIT_CPU, soft, soft + 1))
        if self.files is not None:
            out.append(("files", resource.RLIMIT_NOFILE, int(self.files), int(self.files)))
        if self.processes is not None:
            out.append(("processes", resource.RLIMIT_NPROC, int(self.processes), int(self.processes)))
        return out

    def wrap(self, argv: list[str]) -> list[str]:
        """The command line that runs ``argv`` under these limits (unchanged when none is set or there
        is no ``prlimit``; then :meth:`apply` sets them after the start)."""
        if not self.rlimits() or PRLIMIT is None:
            return argv
        names = {resource.RLIMIT_AS: "--as", resource.RLIMIT_CPU: "--cpu", resource.RLIMIT_NOFILE: "--nofile",
                 resource.RLIMIT_NPROC: "--nproc"}
        return [PRLIMIT, *(f"{names[r]}={soft}:{hard}" for _, r, soft, hard in self.rlimits()), "--", *argv]

    def apply(self, pid: int) -> None:
        """Set the limits on a started process (where :meth:`wrap` could not)."""
        if PRLIMIT is not None:
            return
        for _, which, soft, hard in self.rlimits():
            resource.prlimit(pid, which, (soft, hard))

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in (("memory", self.memory), ("cpu", self.cpu), ("files", self.files),
                                  ("processes", self.processes), ("cpu_rate", self.cpu_rate)) if v is not None}

    def held_by(self, held: Mapping[str, str]) -> dict[str, str]:
        """Each limit set -> where it is in force: the cgroup in ``held``, else ``rlimit`` (the CPU rate
        has none: ``not enforced``)."""
        return {name: held.get(name, "not enforced" if name == "cpu_rate" else "rlimit") for name in self.describe()}

    def controllers(self) -> dict[str, str]:
        """Limit name -> the cgroup controller that can hold it (the others are rlimits only)."""
        return {name: ctl for name, ctl, value in (("memory", "memory", self.memory),
                                                   ("processes", "pids", self.processes),
                                                   ("cpu_rate", "cpu", self.cpu_rate)) if value is not None}


#: The CPU period of a ``limit_cpu_rate`` quota, in microseconds.
CPU_PERIOD_US = 100_000


def cgroup_limits(limits: Limits, version: int = 2, swap: bool = True) -> dict[str, list[tuple[str, str]]]:
    """Controller -> the files to write (in order) and their values, for the limits a cgroup can hold.

    ``version`` 2: ``memory.max`` (and ``memory.swap.max`` 0 when ``swap``), ``pids.max``, ``cpu.max``;
    1: ``memory.limit_in_bytes`` (then ``memory.memsw.limit_in_bytes``, memory and swap together, when
    ``swap``), ``pids.max``, ``cpu.cfs_period_us`` and ``cpu.cfs_quota_us``. (CPU *time* has no cgroup
    file: it stays an rlimit.)"""
    out: dict[str, list[tuple[str, str]]] = {}
    if limits.memory is not None:
        memory = str(int(limits.memory))
        if version == 2:
            out["memory"] = [("memory.max", memory)] + ([("memory.swap.max", "0")] if swap else [])
        else:
            out["memory"] = [("memory.limit_in_bytes", memory)] + (
                [("memory.memsw.limit_in_bytes", memory)] if swap else [])
    if limits.processes is not None:
        out["pids"] = [("pids.max", str(int(limits.processes)))]
    if limits.cpu_rate is not None:
        quota = max(1000, int(round(limits.cpu_rate * CPU_PERIOD_US)))
        out["cpu"] = ([("cpu.max", f"{quota} {CPU_PERIOD_US}")] if version == 2 else
                      [("cpu.cfs_period_us", str(CPU_PERIOD_US)), ("cpu.cfs_quota_us", str(quota))])
    return out


def cgroup_hits(controllers: Mapping[str, tuple[int, Any]]) -> dict[str, int]:
    """How often each cgroup limit was hit, read from a module's folders (controller -> (cgroup
    version, folder)): ``memory`` the OOM kills at the limit, ``processes`` the refused forks. Read
    before the folders are removed."""
    from pathlib import Path

    from shmooze.system import cgroup

    hits: dict[str, int] = {}
    if "memory" in controllers:
        version, path = controllers["memory"]
        folder = Path(path)
        if version == 2:
            hits["memory"] = cgroup.read_keyed(folder / "memory.events").get("oom_kill", 0)
        else:
            oom = cgroup.read_keyed(folder / "memory.oom_control")
            if "oom_kill" in oom:
                hits["memory"] = oom["oom_kill"]
            else:  # before Linux 4.13: only how often the limit was reached
                hits["memory_reached"] = cgroup.read_int(folder / "memory.failcnt") or 0
    if "pids" in controllers:
        hits["processes"] = cgroup.read_keyed(Path(controllers["pids"][1]) / "pids.events").get("max", 0)
    return hits


def ended_by_limit(limits: Limits, returncode: int | None, last_lines: Iterable[str],
                   cpu_seconds: float | None = None, hits: Mapping[str, int] | None = None,
                   held: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """``(rung, reason)`` when a module that exited by itself was ended by one of its limits.

    ``hits``: what its cgroups counted (:func:`cgroup_hits`); ``held``: limit name -> the cgroup that
    held it (``cgroup v1``, ``cgroup v2``). The other limits are rlimits, read from the exit status
    and the last lines of output."""
    if not limits or returncode in (None, 0):
        return None
    hits, held = hits or {}, held or {}
    if limits.memory is not None and (hits.get("memory", 0) > 0 or (
            hits.get("memory_reached", 0) > 0 and returncode == -signal.SIGKILL)):
        return "limit:memory", (f"killed by the kernel at its memory limit of {limits.memory} bytes "
                                f"(limit_memory, {held.get('memory', 'cgroup')})")
    if limits.processes is not None and hits.get("processes", 0) > 0:
        return "limit:processes", (f"refused {hits['processes']} new process(es) at its limit of "
                                   f"{limits.processes} (limit_processes, {held.get('processes', 'cgroup')})")
    if limits.cpu is not None and (returncode == -signal.SIGXCPU or (
            returncode == -signal.SIGKILL and cpu_seconds is not None and cpu_seconds >= limits.cpu)):
        return "limit:cpu", f"used its {limits.cpu:g} s of CPU time (limit_cpu)"
    text = "\n".join(last_lines)
    for name, value, unit in (("memory", limits.memory, " bytes of address space"),
                              ("files", limits.files, " open files"), ("processes", limits.processes, " processes")):
        if value is not None and name not in held and any(sign in text for sign in _SIGNS[name]):
            return f"limit:{name}", f"hit its limit of {value}{unit} (limit_{name})"
    return None
