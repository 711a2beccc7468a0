"""What modules use: CPU time, CPU % over the last interval, resident memory.

Figures come from the module's cgroup when it has one (``cpu.stat``, ``memory.current``), else
from ``/proc`` of every process in its process group (a module runs in its own session, so its
pid is its group id, and what it starts is counted with it). One scan of ``/proc`` serves every
module of a ``status`` answer.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from shmooze import procutil

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


def cgroup_figures(path: str | Path) -> Figures | None:
    """Figures of a cgroup v2 folder (None when it cannot be read)."""
    folder = Path(path)
    try:
        usec = 0
        for line in (folder / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                usec = int(value)
        memory = int((folder / "memory.current").read_text().strip())
        procs = len((folder / "cgroup.procs").read_text().split())
    except (OSError, ValueError):
        return None
    return Figures(usec / 1e6, memory, procs)


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


def describe(pid: int | None, meter: Meter, groups: dict[int, Figures], cgroup: str | None = None) -> dict:
    """The figures ``status`` shows for one running module."""
    figures = cgroup_figures(cgroup) if cgroup else None
    if figures is None and pid is not None:
        figures = groups.get(pid)
    if figures is None:
        return {}
    return {"cpu_seconds": round(figures.cpu_seconds, 3), "cpu_percent": meter.percent(figures.cpu_seconds),
            "rss_bytes": figures.rss_bytes, "processes": figures.processes}
