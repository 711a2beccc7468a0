"""Test helpers: free ports, bounded waits, and services started as real processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import psutil

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something true, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def gone(pid: int) -> bool:
    """True when the pid is no longer a live process (reaped or a zombie)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def descendants(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def write_settings(path: Path, **data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


class Proc:
    """A process started by a test, in its own session, that the test stops by pid."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None,
                 log_path: Path | None = None):
        self.argv = argv
        self.log_path = log_path
        out = open(log_path, "wb") if log_path else subprocess.DEVNULL
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.popen = subprocess.Popen(argv, env=full_env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        if log_path:
            out.close()
        self.pid = self.popen.pid
        self._seen: set[int] = set()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def remember_descendants(self) -> list[int]:
        kids = descendants(self.pid)
        self._seen.update(kids)
        return kids

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal the process, wait (bounded), kill its group if needed; assert nothing is left."""
        self.remember_descendants()
        if self.popen.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(5)
                raise AssertionError(f"{self.argv} did not stop within {timeout} s after signal {sig}")
        wait_for(lambda: all(gone(p) for p in self._seen), 10, what=f"descendants {sorted(self._seen)} to end")
        return self.popen.returncode

    def kill_everything(self) -> None:
        """Last resort cleanup: SIGKILL the session's group and every remembered descendant."""
        self.remember_descendants()
        for pid in [self.pid, *self._seen]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass


def stop_all(procs: list[Proc]) -> None:
    """Stop processes in the order given (callers pass the gateway first: its long polls hold the
    services' threads); each is killed outright if it does not stop."""
    for proc in procs:
        try:
            proc.stop()
        finally:
            proc.kill_everything()


def shmooze_argv(*args: str) -> list[str]:
    return [PYTHON, "-m", "shmooze", *args]


def start_service(settings_path: Path, name: str, log_dir: Path) -> Proc:
    """``shmooze serve NAME`` as a real process; returns once its port accepts connections."""
    from shmooze import settings as settings_mod

    port = settings_mod.read(settings_path).ports[name]
    proc = Proc(shmooze_argv("serve", name, "--settings", str(settings_path)), log_path=log_dir / f"{name}.log")
    try:
        wait_for(lambda: port_open(port) or proc.popen.poll() is not None, 20, what=f"{name} on port {port}")
        if proc.popen.poll() is not None:
            raise AssertionError(f"{name} exited with {proc.popen.returncode}:\n{proc.log()}")
    except BaseException:
        proc.kill_everything()
        raise
    return proc


def report_line(request, line: str) -> None:
    """Write a line to pytest's terminal even under -q and output capture (fuzz input counts)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line(line)
