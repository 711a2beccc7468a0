"""Test helpers: bounded waits, ``shmooze run`` as a real process, and a driver of services in-process
(:class:`Driver`). Ports, processes and stacks of services are the framework's test kit
(:mod:`shmooze.testing`), imported here for the tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from shmooze import protocol
from shmooze.polling import wait_until
from shmooze.testing import (  # noqa: F401 - the tests import them from here
    PYTHON,
    Process,
    Stack,
    descendants,
    free_port,
    gone,
    port_open,
    shmooze_argv,
    start_service,
    stop_all,
    write_settings,
)

ROOT = Path(__file__).resolve().parent.parent


class Proc(Process):
    """The kit's process, with ``env`` as changes to the test's own environment."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None,
                 log_path: Path | None = None):
        super().__init__(argv, {**os.environ, **(env or {})}, cwd, log_path)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something true; the test fails after ``timeout`` seconds."""
    return wait_until(predicate, timeout, what, interval, error=AssertionError)


def run_app(path: Path, log_dir: Path, name: str = "run") -> Process:
    """``shmooze run SETTINGS`` as a real process (its log is ``log_dir/NAME.log``); see :func:`wait_running`."""
    return Process(shmooze_argv("run", str(path)), log_path=log_dir / f"{name}.log")


def wait_running(run: Process, timeout: float = 60) -> Process:
    """Wait for ``shmooze run`` to say it is running (its ``running; open URL`` line); fail if it exited."""
    wait_for(lambda: "running; open" in run.log() or run.popen.poll() is not None, timeout, interval=0.05,
             what="shmooze run to announce")
    assert run.popen.poll() is None, run.log()
    return run


def start_run(path: Path, log_dir: Path, name: str = "run") -> Process:
    """``shmooze run`` started and running (every service up)."""
    return wait_running(run_app(path, log_dir, name))


class Driver:
    """Runs commands on a service in-process and keeps count of sync markers."""

    def __init__(self, svc):
        self.svc = svc
        self._echoes: dict[str, int] = {}

    def __call__(self, _cmd: str, **args):
        return self.svc.dispatch(protocol.Command(_cmd, args))

    def ok(self, _cmd: str, **args):
        answer = self(_cmd, **args)
        assert answer["success"] is True, (_cmd, args, answer)
        return answer.get("result")

    def err(self, _cmd: str, **args) -> str:
        answer = self(_cmd, **args)
        assert answer["success"] is False, (_cmd, args, answer)
        return answer["error"]

    def add(self, type: str, **args) -> str:
        return self.ok("add", type=type, args=args)["uid"]

    def param(self, uid: str, name: str, bg: bool = False):
        got = self.ok("ask_background" if bg else "ask_module", uid=uid, parameters=[name])
        return got.get(name)

    def wait_param(self, uid: str, name: str, bg: bool = False, timeout: float = 10.0):
        return wait_for(lambda: self.param(uid, name, bg), timeout, what=f"parameter {name} of {uid}")

    def log(self, uid: str, bg: bool = False) -> list[str]:
        """Every command a --record module got so far (do_echo sync markers left out).

        A ``do_echo`` is sent and its entry awaited: the module writes its log update
        before each answer, so once the marker shows, every earlier command shows too.
        """
        self.ok("tell_background" if bg else "tell_module", uid=uid, cmd="echo")
        n = self._echoes[uid] = self._echoes.get(uid, 0) + 1

        def complete():
            log = self.param(uid, "log", bg) or []
            return log if log.count("do_echo") == n and log[-1] == "do_echo" else None

        log = wait_for(complete, 10, what=f"log of {uid}")
        return [c for c in log if c != "do_echo"]

    def live(self) -> dict[str, dict]:
        return {m["uid"]: m for m in self.svc.status()["modules"]}

    def ended(self, uid: str | None = None, type: str | None = None, timeout: float = 10.0) -> dict:
        """The ended snapshot of a module (by uid, or the last of a type), waiting for it."""
        def find():
            for snap in reversed(self.svc.status()["ended"]):
                if (uid is None or snap["uid"] == uid) and (type is None or snap["type"] == type):
                    return snap
            return None

        return wait_for(find, timeout, what=f"module {uid or type} to end")

    def order(self) -> list[str]:
        return [e["uid"] for e in self.ok("queue")]


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
