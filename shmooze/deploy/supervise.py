"""supervisord as ``shmooze run`` starts it: it ends, with everything it runs, within seconds of its
runner's death.

supervisord's own stop waits up to ``stopwaitsecs`` for each service (``stop_timeout`` + 5 s):
right for ``shmooze stop``, where someone waits for the modules' ladders, too long when the runner
was killed and nobody waits at all. So this process asks the kernel for SIGUSR1 when its parent,
the runner, dies (``PR_SET_PDEATHSIG``; supervisord leaves SIGUSR1 alone), and on it starts
supervisord's graceful stop (SIGTERM to itself: each service runs its modules' ladders) with a
budget of :data:`RUNNER_LOST_STOP` seconds. When the budget is spent, it SIGKILLs every process
below it, the orphan guards excepted (they end on their own once their service is gone, after
sweeping what escaped it), and exits.

Run as ``python -m shmooze.deploy.supervise RUNNER_PID SUPERVISORD_ARGS...``.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from shmooze.system import procutil

#: Seconds of graceful stop after the runner's death, before everything is killed: short enough that
#: all is gone within 5 s of the death on a busy machine.
RUNNER_LOST_STOP = 3.0


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid``, parents before their children."""
    out: list[int] = []
    todo = [pid]
    while todo:
        found = procutil.children(todo.pop())
        out.extend(found)
        todo.extend(found)
    return out


def _is_orphan_guard(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"\0shmooze.watchdog\0" in f.read()
    except OSError:
        return False


def kill_everything(*_: Any) -> None:
    """SIGKILL every process below this one (services, their workers, modules), each service's
    process group included, then exit."""
    below = [pid for pid in _descendants(os.getpid()) if not _is_orphan_guard(pid)]
    for pid in procutil.children():
        procutil.kill_group(pid, signal.SIGKILL)  # supervisord starts each service in its own group
    for pid in below:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    os._exit(1)


def runner_lost(*_: Any) -> None:
    """The runner is gone: stop gracefully, within the budget."""
    signal.signal(signal.SIGALRM, kill_everything)
    signal.setitimer(signal.ITIMER_REAL, RUNNER_LOST_STOP)
    os.kill(os.getpid(), signal.SIGTERM)  # supervisord's own stop (before its handlers are set: the end)


def main(argv: list[str]) -> int:
    if len(argv) < 1 or not argv[0].isdigit():
        sys.stderr.write("usage: python -m shmooze.deploy.supervise RUNNER_PID SUPERVISORD_ARGS...\n")
        return 2
    signal.signal(signal.SIGUSR1, runner_lost)
    if not procutil.die_with_parent(signal.SIGUSR1, parent=int(argv[0])):
        return 1  # the runner died before this process could watch it: start nothing
    from supervisor.supervisord import main as supervisord

    supervisord(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
