"""Processes a test starts: free ports, waiting for a port, stopping by pid, and proof that nothing is left.

Each process runs in its own session and is stopped by the pid that started it, never by name.
What it started is remembered (pid and start time, so a reused pid is never taken for it) and
must be gone once it stops.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO

from shmooze.polling import wait_until
from shmooze.system import procutil

HOST = "127.0.0.1"
PYTHON = sys.executable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def port_open(port: int, host: str = HOST) -> bool:
    """Whether something accepts connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def gone(pid: int) -> bool:
    """True when the pid is no longer a live process (reaped, or a zombie)."""
    return not procutil.alive(pid)


def descendants(pid: int) -> list[int]:
    """Every live descendant of a process (children first), empty when it is gone."""
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = procutil.children(todo.pop())
        out += kids
        todo += kids
    return out


def started_at(pid: int) -> int | None:
    """When a process started (clock ticks after boot), or None when it is gone: with the pid, who it is."""
    fields = procutil.stat_fields(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def stuck_state(pid: int) -> str:
    """What the kernel says of a process that did not stop: its state, its signals pending, blocked,
    ignored and caught (hexadecimal masks), its threads, and where each waits (``wchan``)."""
    wanted = ("State", "Threads", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = [line.strip().replace(":\t", " ") for line in f if line.split(":")[0] in wanted]
        waits = []
        for tid in sorted(os.listdir(f"/proc/{pid}/task"))[:8]:
            with open(f"/proc/{pid}/task/{tid}/wchan") as f:
                waits.append(f.read().strip() or "-")
    except OSError as exc:
        return f"unreadable ({exc})"
    return "; ".join(fields) + f"; waiting in {waits}"


def shmooze_argv(*args: str) -> list[str]:
    """``python -m shmooze ARGS...`` with this interpreter."""
    return [PYTHON, "-m", "shmooze", *args]


class Process:
    """A process started in its own session, stopped by its pid; its output goes to ``log_path``.

    ``env`` is its whole environment, as for :class:`subprocess.Popen` (default: this process's);
    its output is always unbuffered.
    """

    def __init__(self, argv: list[str], env: Mapping[str, str] | None = None, cwd: str | None = None,
                 log_path: Path | None = None, name: str | None = None):
        self.argv = argv
        self.name = name or Path(argv[0]).name
        self.log_path = log_path
        out: IO[bytes] | int = open(log_path, "wb") if log_path else subprocess.DEVNULL
        try:
            self.popen = subprocess.Popen(argv, env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}, cwd=cwd,
                                          stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        finally:
            if not isinstance(out, int):
                out.close()
        self.pid = self.popen.pid
        self.seen: dict[int, int] = {}  # descendant pid -> start time, remembered for the stop

    def log(self) -> str:
        """Everything the process wrote so far (empty without a log file)."""
        if not self.log_path or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def exited(self) -> bool:
        return self.popen.poll() is not None

    def remember_descendants(self) -> list[int]:
        """Note every descendant (pid and start time), so that :meth:`stop` checks they are gone too."""
        kids = descendants(self.pid)
        for kid in kids:
            start = started_at(kid)
            if start is not None:
                self.seen[kid] = start
        return kids

    def left_behind(self) -> list[int]:
        """Remembered descendants still alive (the same processes: the same start time)."""
        return [pid for pid, start in self.seen.items() if not gone(pid) and started_at(pid) == start]

    def wait_port(self, port: int, timeout: float = 30.0) -> None:
        """Return once ``port`` accepts connections; fail at once if the process exits meanwhile."""
        wait_until(lambda: port_open(port) or self.exited(), timeout, f"{self.name} on port {port}",
                   error=AssertionError)
        if self.exited():
            raise AssertionError(f"{self.name} exited with {self.popen.returncode}:\n{self.log()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal the process and wait (bounded) for it and everything it started to end; returns its
        exit status. Fails (after killing what is left) when it needed SIGKILL or left a process behind."""
        self.remember_descendants()
        if not self.exited():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                state = stuck_state(self.pid)
                self.kill_everything()
                raise AssertionError(f"{self.name} did not stop within {timeout:g} s after signal {sig}; "
                                     f"it was {state}; its output ended {self.log()[-600:]!r}") from None
        try:
            wait_until(lambda: not self.left_behind(), 10, f"what {self.name} started to end", error=AssertionError)
        except AssertionError:
            left = [procutil.describe(pid) for pid in self.left_behind()]
            self.kill_everything()
            raise AssertionError(f"{self.name} left processes behind: {left}") from None
        return self.popen.returncode

    def kill_everything(self) -> None:
        """Last resort: SIGKILL the process and every remembered descendant still alive."""
        self.remember_descendants()
        for pid in ([] if self.exited() else [self.pid]) + self.left_behind():  # a reaped pid may be another's now
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.popen.wait(5)
            wait_until(lambda: not self.left_behind(), 5, f"what {self.name} started to die", error=TimeoutError)
        except (subprocess.TimeoutExpired, TimeoutError):
            pass  # stuck in the kernel: a later check of what is left says so


def stop_all(procs: Iterable[Process]) -> None:
    """Stop processes in the order given (a gateway first: its long polls hold the services' threads);
    each is killed outright if it does not stop, and the first failure is raised once all are stopped."""
    failure: BaseException | None = None
    for proc in procs:
        try:
            proc.stop()
        except BaseException as exc:  # noqa: BLE001 - raised below, after the others are stopped
            failure = failure or exc
        finally:
            proc.kill_everything()
    if failure is not None:
        raise failure
