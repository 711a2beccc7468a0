"""The orphan guard: a tiny process that ends a service's modules if the service dies.

The service starts it with a pipe on its standard input and tells it, one line
each, the process group of every module it starts (``+PGID``) and stops
(``-PGID``). When the pipe reaches end-of-file, the service is gone, however it
died (SIGKILL included): the guard SIGKILLs every group it still knows, then
every process whose environment carries the service's owner token (modules'
children that left the group), and exits. No cooperation from the modules is
needed, whatever their language.

Run as ``python -m shmooze.watchdog TOKEN``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

OWNER_VAR = "SHMOOZE_OWNER"


def processes_with_token(token: str) -> list[int]:
    """Pids whose environment has ``SHMOOZE_OWNER=token``."""
    needle = f"{OWNER_VAR}={token}".encode()
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            found.append(int(entry))
    return found


def kill_all(groups: set[int], token: str) -> None:
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
    for pid in processes_with_token(token):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: python -m shmooze.watchdog TOKEN\n")
        return 2
    token = argv[0]
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # only the end of the pipe means the service is gone
    groups: set[int] = set()
    for raw in sys.stdin.buffer:
        line = raw.strip()
        if line == b"bye":
            return 0  # clean shutdown: the service stopped its modules itself
        if len(line) > 1 and line[1:].isdigit():
            pgid = int(line[1:])
            if line[:1] == b"+":
                groups.add(pgid)
            elif line[:1] == b"-":
                groups.discard(pgid)
    kill_all(groups, token)
    return 0


class Watchdog:
    """The service's side: start the guard and keep it told."""

    def __init__(self, token: str):
        self.token = token
        self._lock = threading.Lock()
        self.proc = subprocess.Popen([sys.executable, "-m", "shmooze.watchdog", token], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, start_new_session=True, close_fds=True)

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
