"""Resource limits per module type, as rlimits, and telling a module ended by one.

Set on a module type (:class:`~shmooze.moduletype.ModuleType`): ``limit_memory`` (bytes of address
space, ``RLIMIT_AS``), ``limit_cpu`` (seconds of CPU time, ``RLIMIT_CPU``: SIGXCPU at the limit,
SIGKILL a second later), ``limit_files`` (open files, ``RLIMIT_NOFILE``) and ``limit_processes``
(``RLIMIT_NPROC``; the kernel counts every process of the user, so it suits modules run as their
own user). They are set before the module's program runs by starting it through util-linux's
``prlimit`` (no ``preexec_fn`` in the service's threaded process); where there is no ``prlimit``,
with :func:`resource.prlimit` on the started process (a few instructions later).

Where the module has a cgroup (containment), ``memory.max``, ``cpu.max`` and ``pids.max`` are the
better place for the same figures; :func:`cgroup_limits` gives the values to write there.

An rlimit makes the kernel refuse (memory, files, processes) or signal (CPU); the module then fails
in its own way. :func:`ended_by_limit` reads that from the exit status and the last lines of its
output, and names the rung (``limit:memory``, ``limit:cpu``, ``limit:files``, ``limit:processes``).
"""

from __future__ import annotations

import resource
import shutil
import signal
from dataclasses import dataclass
from typing import Any, Iterable

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

    @classmethod
    def of(cls, mtype: Any) -> Limits:
        return cls(getattr(mtype, "limit_memory", None), getattr(mtype, "limit_cpu", None),
                   getattr(mtype, "limit_files", None), getattr(mtype, "limit_processes", None))

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.memory, self.cpu, self.files, self.processes))

    def rlimits(self) -> list[tuple[str, int, int, int]]:
        """``(name, RLIMIT_*, soft, hard)`` for each limit set."""
        out = []
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
        if not self or PRLIMIT is None:
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
                                  ("processes", self.processes)) if v is not None}


def cgroup_limits(limits: Limits, period_us: int = 100_000) -> dict[str, str]:
    """The cgroup v2 files and values for the same limits, for a module that has a cgroup: memory to
    ``memory.max``, processes to ``pids.max``. (CPU *time* has no cgroup file: ``cpu.max`` caps the
    rate instead, so it stays an rlimit.)"""
    out = {}
    if limits.memory is not None:
        out["memory.max"] = str(int(limits.memory))
    if limits.processes is not None:
        out["pids.max"] = str(int(limits.processes))
    return out


def ended_by_limit(limits: Limits, returncode: int | None, last_lines: Iterable[str],
                   cpu_seconds: float | None = None) -> tuple[str, str] | None:
    """``(rung, reason)`` when a module that exited by itself was ended by one of its limits."""
    if not limits or returncode in (None, 0):
        return None
    if limits.cpu is not None and (returncode == -signal.SIGXCPU or (
            returncode == -signal.SIGKILL and cpu_seconds is not None and cpu_seconds >= limits.cpu)):
        return "limit:cpu", f"used its {limits.cpu:g} s of CPU time (limit_cpu)"
    text = "\n".join(last_lines)
    for name, value, unit in (("memory", limits.memory, " bytes of address space"),
                              ("files", limits.files, " open files"), ("processes", limits.processes, " processes")):
        if value is not None and any(sign in text for sign in _SIGNS[name]):
            return f"limit:{name}", f"hit its limit of {value}{unit} (limit_{name})"
    return None
