"""Test helpers: free ports, bounded waits, services started as real processes (:class:`Stack`),
and a driver of services in-process (:class:`Driver`)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import psutil

from shmooze import protocol
from shmooze.polling import wait_until

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something true; the test fails after ``timeout`` seconds."""
    return wait_until(predicate, timeout, what, interval, error=AssertionError)


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
    services' threads); each is killed outright if it does not stop, and the first failure is raised
    once every one is stopped."""
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


def shmooze_argv(*args: str) -> list[str]:
    return [PYTHON, "-m", "shmooze", *args]


def run_app(path: Path, log_dir: Path, name: str = "run") -> Proc:
    """``shmooze run SETTINGS`` as a real process (its log is ``log_dir/NAME.log``); see :func:`wait_running`."""
    return Proc(shmooze_argv("run", str(path)), log_path=log_dir / f"{name}.log")


def wait_running(run: Proc, timeout: float = 60) -> Proc:
    """Wait for ``shmooze run`` to say it is running (its ``running; open URL`` line); fail if it exited."""
    wait_for(lambda: "running; open" in run.log() or run.popen.poll() is not None, timeout, interval=0.05,
             what="shmooze run to announce")
    assert run.popen.poll() is None, run.log()
    return run


def start_run(path: Path, log_dir: Path, name: str = "run") -> Proc:
    """``shmooze run`` started and running (every service up)."""
    return wait_running(run_app(path, log_dir, name))


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


class Stack:
    """An application's services and its gateway on free ports, each started as a real process
    (``shmooze serve``), stopped by pid: the gateway first (its long polls hold the services' threads).

    ``services``: name to factory (the settings' ``services``); ``down``: names that get a port where
    nothing runs; ``ports``: the ports to use instead (services run by another stack keep theirs);
    ``settings``: the rest of the settings file. Use it as a context manager around the test (or
    the fixture's ``yield``); :meth:`start` starts the services, then the gateway, or the names given.
    """

    def __init__(self, tmp: Path, services: dict[str, str], down: Iterable[str] = (),
                 ports: dict[str, int] | None = None, **settings: Any):
        self.tmp = tmp
        self.ports = ports or {"wsgi": free_port(), **{name: free_port() for name in [*services, *down]}}
        self.services = services
        extra = {"services": services} if services else {}
        self.path = write_settings(tmp / "settings.json", ports=self.ports, **extra, **settings)
        #: name -> process; a test may replace one (a restarted gateway): :meth:`stop` stops what is here.
        self.procs: dict[str, Proc] = {}

    @property
    def url(self) -> str:
        """The gateway's base URL."""
        return f"http://127.0.0.1:{self.ports['wsgi']}/"

    @property
    def ws(self) -> str:
        """The gateway's WebSocket URL."""
        return f"ws://127.0.0.1:{self.ports['wsgi']}/ws"

    def direct(self, name: str) -> str:
        """A service's own URL (not through the gateway)."""
        return f"http://127.0.0.1:{self.ports[name]}/"

    def start(self, *names: str) -> Stack:
        for name in names or (*self.services, "wsgi"):
            self.procs[name] = start_service(self.path, name, self.tmp)
        return self

    def stop(self) -> None:
        """Stop every process, the gateway first; assert that none of them, nor what they started, is left."""
        procs = sorted(self.procs.values(), key=lambda p: p is not self.procs.get("wsgi"))
        try:
            stop_all(procs)
        finally:
            left = [pid for proc in procs for pid in (proc.pid, *proc._seen) if not gone(pid)]
        assert not left, f"processes left after the stack stopped: {left}"

    def __enter__(self) -> Stack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.stop()


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
