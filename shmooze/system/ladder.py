"""The stop ladder: ask, wait, SIGTERM, wait, SIGKILL, reap. One function, every rung recorded.

A module runs in its own session, so its pid is also its process group id and
every signal goes to the whole group: processes the module started are stopped
with it.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from typing import Callable

from shmooze.system import procutil
from shmooze.system.ioloop import wait_readable

log = logging.getLogger(__name__)

#: The module had exited before anyone asked it to.
EXITED = "exited"
#: It exited after being asked (``rm`` and closed streams), within the first wait.
RM = "rm"
#: It exited after SIGTERM.
SIGTERM = "sigterm"
#: SIGKILL ended it.
SIGKILL = "sigkill"

RUNGS = (EXITED, RM, SIGTERM, SIGKILL)


def wait_exit(proc: subprocess.Popen, timeout: float, pidfd: int | None = None) -> bool:
    """Wait up to ``timeout`` seconds for the process to exit, and reap it; True if it did."""
    if proc.poll() is not None:
        return True
    if pidfd is not None:
        try:
            ready = wait_readable([pidfd], max(0.0, timeout))
        except (OSError, ValueError):
            ready = []
        if ready:
            proc.wait()
            return True
        return proc.poll() is not None
    try:
        proc.wait(max(0.0, timeout))
        return True
    except subprocess.TimeoutExpired:
        return False


def sweep_group(pgid: int, grace: float = 1.0) -> int:
    """End what is left of a process group after its leader: SIGTERM, wait ``grace``, SIGKILL.

    Returns how many processes were left.
    """
    left = procutil.group_members(pgid)
    if not left:
        return 0
    procutil.kill_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while procutil.group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.01)
    if procutil.group_members(pgid):
        procutil.kill_group(pgid, signal.SIGKILL)
    return len(left)


def stop_ladder(proc: subprocess.Popen, request: Callable[[], None] | None, rm_timeout: float,
                term_timeout: float, kill_timeout: float = 5.0, pidfd: int | None = None,
                first_rung: str = RM, sweep: Callable[[int, float], int] | None = None) -> str:
    """Stop one module process and its group; return the rung that ended it.

    ``request`` asks the module to go (sends ``rm``, closes its streams); it must be
    bounded in time. ``first_rung`` names an exit during the first wait: ``rm`` when
    we asked, ``exited`` when the module was leaving on its own. ``sweep(pgid, grace)``
    ends what the module left behind once its own process is gone (default: its
    process group; see :mod:`shmooze.system.containment`); after SIGKILL it gets no grace.
    """
    if proc.poll() is not None:
        rung = EXITED
    else:
        if request is not None:
            request()
        if wait_exit(proc, rm_timeout, pidfd):
            rung = first_rung
        else:
            procutil.kill_group(proc.pid, signal.SIGTERM)
            if wait_exit(proc, term_timeout, pidfd):
                rung = SIGTERM
            else:
                procutil.kill_group(proc.pid, signal.SIGKILL)
                if not wait_exit(proc, kill_timeout, pidfd):
                    log.error("pid %d survived SIGKILL for %.1f s (uninterruptible?)", proc.pid, kill_timeout)
                rung = SIGKILL
    left = (sweep or sweep_group)(proc.pid, 0.0 if rung == SIGKILL else 1.0)
    if left:
        log.info("pid %d left %d process(es) in its group; they were stopped", proc.pid, left)
    return rung
