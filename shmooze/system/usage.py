"""What modules use: CPU time, CPU % over the last interval, resident memory.

Figures come from the module's cgroups when they account for it (v2 ``cpu.stat`` and
``memory.current``; v1 ``cpuacct.usage`` and ``memory.usage_in_bytes``: see
:meth:`shmooze.system.containment.Box.figures`), else from ``/proc`` of every process in its process
group (a module runs in its own session, so its pid is its group id, and what it starts is
counted with it). One scan of ``/proc`` serves every module of a ``status`` answer.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from shmooze.system import cgroup, procutil

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
#: The shortest interval a CPU % is measured over; shorter asks reuse the previous base.
MIN_INTERVAL = 0.5


@dataclass(frozen=True)
class Figures:
    """What a group of processes (or a cgroup) uses now."""

    cpu_seconds: float
    rss_bytes: int
    processes: int


def scan_groups() -> dict[int, Figures]:
    """Every process group's CPU time, resident memory and size, from one pass over ``/proc``."""
    totals: dict[int, list[float]] = {}
    for pid in procutil.pids():
        fields = procutil.stat_fields(pid)
        # After the command name: state(0) ppid(1) pgrp(2) ... utime(11) stime(12) ... rss(21).
        if not fields or len(fields) < 22 or fields[0] in (b"Z", b"X"):
            continue
        acc = totals.setdefault(int(fields[2]), [0.0, 0, 0])
        acc[0] += (int(fields[11]) + int(fields[12])) / _TICKS
        acc[1] += int(fields[21]) * _PAGE
        acc[2] += 1
    return {pgid: Figures(a[0], int(a[1]), int(a[2])) for pgid, a in totals.items()}


def process_figures(pid: int) -> Figures | None:
    """Figures of one process (the service itself)."""
    fields = procutil.stat_fields(pid)
    if not fields or len(fields) < 22:
        return None
    return Figures((int(fields[11]) + int(fields[12])) / _TICKS, int(fields[21]) * _PAGE, 1)


def cgroup_figures(controllers: Mapping[str, tuple[int, Path]], cpu_stat: Path | None = None,
                   processes: int | None = None) -> Figures | None:
    """Figures from a module's cgroups (controller -> (version, folder)): memory from ``memory.current``
    (v2) or ``memory.usage_in_bytes`` (v1), CPU time from the v2 ``cpu.stat`` or v1 ``cpuacct.usage``.
    None unless both can be read."""
    memory = None
    if "memory" in controllers:
        version, folder = controllers["memory"]
        memory = cgroup.read_int(folder / ("memory.current" if version == 2 else "memory.usage_in_bytes"))
    cpu = None
    if cpu_stat is not None:
        usec = cgroup.read_keyed(cpu_stat).get("usage_usec")
        cpu = usec / 1e6 if usec is not None else None
    if cpu is None and "cpuacct" in controllers:
        nsec = cgroup.read_int(controllers["cpuacct"][1] / "cpuacct.usage")
        cpu = nsec / 1e9 if nsec is not None else None
    if memory is None or cpu is None:
        return None
    if "pids" in controllers:
        processes = cgroup.read_int(controllers["pids"][1] / "pids.current") or processes
    return Figures(cpu, memory, processes or 0)


class Meter:
    """CPU % of one module between samples: the figure is measured against the last sample taken at
    least :data:`MIN_INTERVAL` earlier, so frequent asks (a dashboard, a scrape) still see a
    meaningful interval."""

    def __init__(self, started: float | None = None):
        start = time.monotonic() if started is None else started
        self._last = (start, 0.0)  # (monotonic time, cpu seconds) of the newest base
        self._prev = self._last

    def percent(self, cpu_seconds: float, now: float | None = None) -> float | None:
        now = time.monotonic() if now is None else now
        base = self._last if now - self._last[0] >= MIN_INTERVAL else self._prev
        if now - self._last[0] >= MIN_INTERVAL:
            self._prev, self._last = self._last, (now, cpu_seconds)
        elapsed = now - base[0]
        if elapsed <= 0:
            return None
        return round(max(0.0, cpu_seconds - base[1]) / elapsed * 100.0, 1)


def describe(pid: int | None, meter: Meter, groups: dict[int, Figures], figures: Figures | None = None) -> dict:
    """The figures ``status`` shows for one running module (``figures``: from its cgroups, when known)."""
    if figures is None and pid is not None:
        figures = groups.get(pid)
    if figures is None:
        return {}
    return {"cpu_seconds": round(figures.cpu_seconds, 3), "cpu_percent": meter.percent(figures.cpu_seconds),
            "rss_bytes": figures.rss_bytes, "processes": figures.processes}


class OwnUsage:
    """CPU time, CPU % and resident memory of the calling process (a service's worker), for its ``status``."""

    def __init__(self) -> None:
        self._meter = Meter()

    def figures(self) -> dict:
        own = process_figures(os.getpid())
        if own is None:
            return {}
        return {"cpu_seconds": round(own.cpu_seconds, 3), "cpu_percent": self._meter.percent(own.cpu_seconds),
                "rss_bytes": own.rss_bytes}
