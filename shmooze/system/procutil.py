"""Small Linux process helpers: subreaper, reaping orphans, trimming the heap, and every look into ``/proc``.

Each fact ``/proc`` tells is read here, by one function, and the rest of shmooze asks it:
the process list (:func:`pids`), a process's state, parent and group (:func:`stat_fields`),
its children, environment, open sockets and command line, and the TCP socket tables.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import logging
import os
from typing import Iterable, Iterator

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _prctl(option: int, arg: int) -> bool:
    try:
        return _libc().prctl(option, arg, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def trim_heap() -> bool:
    """Give the malloc heap's free pages back to the kernel (glibc's ``malloc_trim``, which also frees
    whole free pages amid the heap, not only at its top); False where there is no such call (not glibc).

    A service that stopped many modules has freed what they held (their handles, buffers, threads'
    structures), but glibc returns only the top of the heap by itself: the freed pages below other
    objects stayed resident, and the service grew with every round of modules added and removed."""
    try:
        _libc().malloc_trim(0)
        return True
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


def pids() -> list[int]:
    """Every process id ``/proc`` shows."""
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in a process group."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass
    out = []
    for pid in pids():
        fields = stat_fields(pid)
        if fields and len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            out.append(pid)
    return out


def _environ_bytes(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:
        return None


def environ(pid: int) -> list[bytes] | None:
    """The ``NAME=value`` entries of a process's environment, or None when /proc does not let us see."""
    raw = _environ_bytes(pid)
    return None if raw is None else raw.split(b"\0")


def with_environ(entry: str) -> dict[int, list[bytes]]:
    """Processes other than this one whose environment holds ``entry`` (``NAME=value``), with their
    environments. One pass over ``/proc``."""
    needle = entry.encode()
    me = os.getpid()
    found = {}
    for pid in pids():
        raw = _environ_bytes(pid) if pid != me else None
        if raw is None or needle not in raw:  # the cheap test first: most processes fail it
            continue
        env = raw.split(b"\0")
        if needle in env:
            found[pid] = env
    return found


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
    out: set[int] = set()
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


def tcp_sockets(ipv6: bool | None = None) -> Iterator[list[str]]:
    """Rows of ``/proc/net/tcp`` (``ipv6`` False), ``tcp6`` (True) or both (None), split in fields:
    local address (``HEX_IP:HEX_PORT``) at 1, remote at 2, state at 3 (``0A`` is LISTEN), uid at 7,
    inode at 9. Tables /proc does not show are skipped."""
    tables = {None: ("tcp", "tcp6"), False: ("tcp",), True: ("tcp6",)}[ipv6]
    for table in tables:
        try:
            with open(f"/proc/net/{table}") as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) > 9:
                        yield fields
        except OSError:
            continue


def _listening_inodes(port: int) -> set[int]:
    """Socket inodes listening on TCP ``port`` (IPv4 or IPv6)."""
    return {int(f[9]) for f in tcp_sockets() if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port}


def listening_pids(port: int) -> list[int]:
    """Pids of the processes holding a socket that listens on TCP ``port`` (those /proc lets us see)."""
    targets = _listening_inodes(port)
    if not targets:
        return []
    return sorted(pid for pid in pids() if socket_inodes(pid) & targets)


def describe(pid: int) -> str:
    """``pid N (command line)`` for messages, or ``pid N`` when /proc does not tell."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        argv = ""
    return f"pid {pid} ({argv[:100]})" if argv else f"pid {pid}"
