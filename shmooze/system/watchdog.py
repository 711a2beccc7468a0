"""The orphan guard: a tiny process that ends a service's modules if the service dies.

The service starts it with a pipe on its standard input and tells it, one line
each, the process group of every module it starts (``+PGID``) and stops
(``-PGID``). When the pipe reaches end-of-file, the service is gone, however it
died (SIGKILL included): the guard kills the service's cgroup folder (every
module's cgroup, when containment is ``cgroup``), SIGKILLs every group it still
knows, then every process whose environment carries the service's owner token
(modules' children that left the group), and exits. On a clean stop the service
says ``bye`` and the guard does the same sweep before exiting, so whatever
escaped a module's ladder is still ended. No cooperation from the modules is
needed, whatever their language.

Run as ``python -m shmooze.system.watchdog TOKEN [CGROUP_FOLDER]``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from shmooze.system import cgroup
from shmooze.system.containment import OWNER_VAR, processes_with_env

__all__ = ["OWNER_VAR", "Watchdog", "kill_all", "main"]


def kill_all(groups: set[int], token: str, folder: Path | None = None) -> None:
    """End everything of a service: its cgroup folder, the groups it named, its token's processes."""
    if folder is not None:
        cgroup.kill(folder)
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
    for pid in processes_with_env(token):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if folder is not None:
        cgroup.remove(folder)


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        sys.stderr.write("usage: python -m shmooze.system.watchdog TOKEN [CGROUP_FOLDER]\n")
        return 2
    token = argv[0]
    folder = Path(argv[1]) if len(argv) == 2 else None
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # only the end of the pipe (or bye) ends the guard
    groups: set[int] = set()
    for raw in sys.stdin.buffer:
        line = raw.strip()
        if line == b"bye":
            break  # clean shutdown: the service stopped its modules; sweep what escaped them
        if len(line) > 1 and line[1:].isdigit():
            pgid = int(line[1:])
            if line[:1] == b"+":
                groups.add(pgid)
            elif line[:1] == b"-":
                groups.discard(pgid)
    kill_all(groups, token, folder)
    return 0


class Watchdog:
    """The service's side: start the guard and keep it told."""

    def __init__(self, token: str, folder: Path | None = None):
        self.token = token
        self._lock = threading.Lock()
        argv = [sys.executable, "-m", "shmooze.system.watchdog", token] + ([str(folder)] if folder else [])
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     start_new_session=True, close_fds=True)

    def _send(self, line: str) -> None:
        with self._lock:
            if self.proc.stdin is None or self.proc.stdin.closed:
                return
            try:
                self.proc.stdin.write(line.encode() + b"\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                pass

    def watch(self, pgid: int) -> None:
        self._send(f"+{pgid}")

    def forget(self, pgid: int) -> None:
        self._send(f"-{pgid}")

    def close(self, timeout: float = 5.0) -> None:
        """Say goodbye (modules are already stopped) and reap the guard."""
        self._send("bye")
        with self._lock:
            if self.proc.stdin is not None:
                try:
                    self.proc.stdin.close()
                except BrokenPipeError:
                    pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
