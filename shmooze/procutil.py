"""Small Linux process helpers: subreaper, reaping orphans, looking at pids."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
from typing import Iterable

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1


def _prctl(option: int, arg: int) -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(option, arg, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def become_subreaper() -> bool:
    """Make orphaned descendants of this process its children, so they are reaped here.

    Without it, processes that a module started and left behind are adopted by
    pid 1, which in some containers never reaps them.
    """
    done = _prctl(PR_SET_CHILD_SUBREAPER, 1)
    if not done:
        log.debug("PR_SET_CHILD_SUBREAPER not available")
    return done


def die_with_parent(sig: int, parent: int | None = None) -> bool:
    """Have the kernel send ``sig`` to this process when its parent dies (``PR_SET_PDEATHSIG``).

    Returns False when the parent is already gone (``parent``, when given, is the pid it
    should be): the caller should then leave at once. Cleared by exec of set-uid programs only.
    """
    if not _prctl(PR_SET_PDEATHSIG, sig):
        log.debug("PR_SET_PDEATHSIG not available")
        return True
    ppid = os.getppid()
    if parent is not None:
        return ppid == parent
    return ppid != 1 or _comm(1) in ("supervisord", "python", "python3")


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def children(pid: int | None = None) -> list[int]:
    """Direct children of a process (from /proc), empty when unknown."""
    pid = os.getpid() if pid is None else pid
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.extend(int(p) for p in f.read().split())
    except OSError:
        pass
    return out


def reap_orphans(managed: Iterable[int]) -> list[int]:
    """Reap exited children that nobody waits for (adopted orphans); skip pids in ``managed``."""
    keep = set(managed)
    reaped = []
    for child in children():
        if child in keep or state(child) != "Z":
            continue
        try:
            pid, _ = os.waitpid(child, os.WNOHANG)
        except ChildProcessError:
            continue
        if pid:
            reaped.append(pid)
    return reaped


def stat_fields(pid: int) -> list[bytes] | None:
    """Fields of ``/proc/PID/stat`` after the command name (state first, then ppid, pgrp...)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2:].split()


def state(pid: int) -> str | None:
    """The one-letter state of a process (``R``, ``S``, ``Z``...) or ``None`` when there is none."""
    fields = stat_fields(pid)
    return fields[0].decode() if fields else None


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    st = state(pid)
    return st is not None and st not in ("Z", "X")


def exists(pid: int) -> bool:
    """Whether a pid exists at all (a zombie counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False when it is already gone."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except OSError as exc:
        if exc.errno == errno.EPERM:
            return False
        raise


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets a process has open (empty when /proc does not let us see)."""
    out = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def _listening_inodes(port: int) -> set[int]:
    """Socket inodes listening on TCP ``port`` (IPv4 or IPv6), from /proc/net/tcp{,6}."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    # local_address is HEX_IP:HEX_PORT; state 0A is LISTEN; the inode is field 9.
                    if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(int(fields[9]))
        except OSError:
            continue
    return inodes


def listening_pids(port: int) -> list[int]:
    """Pids of the processes holding a socket that listens on TCP ``port`` (those /proc lets us see)."""
    targets = _listening_inodes(port)
    if not targets:
        return []
    return sorted(int(entry) for entry in os.listdir("/proc")
                  if entry.isdigit() and socket_inodes(int(entry)) & targets)


def describe(pid: int) -> str:
    """``pid N (command line)`` for messages, or ``pid N`` when /proc does not tell."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        argv = ""
    return f"pid {pid} ({argv[:100]})" if argv else f"pid {pid}"
