"""An application's services and gateway on free ports, each a real ``shmooze serve`` process, and the
gateway's workers as a test sees them (which worker holds a connection)."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from shmooze import settings as settings_mod
from shmooze.polling import wait_until
from shmooze.system import procutil
from shmooze.testing.processes import HOST, Process, free_port, shmooze_argv, stop_all


class Connected(Protocol):
    """A client connection with its socket: ``http.client.HTTPConnection`` or a :class:`WebSocketClient`."""

    @property
    def sock(self) -> socket.socket: ...


T = TypeVar("T", bound=Connected)


def write_settings(path: Path, **data: Any) -> Path:
    """A settings file holding ``data``; returns its path."""
    path.write_text(json.dumps(data))
    return path


def start_service(settings_path: Path, name: str, log_dir: Path, timeout: float = 20.0) -> Process:
    """``shmooze serve NAME`` as a real process (its log is ``log_dir/NAME.log``); returns once its
    port accepts connections."""
    port = settings_mod.read(settings_path).ports[name]
    proc = Process(shmooze_argv("serve", name, "--settings", str(settings_path)), log_path=log_dir / f"{name}.log",
                   name=name)
    try:
        proc.wait_port(port, timeout)
    except BaseException:
        proc.kill_everything()
        raise
    return proc


class Stack:
    """An application's services and its gateway on free ports, each started as a real process
    (``shmooze serve``), stopped by pid: the gateway first (its long polls hold the services' threads).

    ``services``: name to factory (the settings' ``services``); ``down``: names that get a port where
    nothing runs; ``ports``: the ports to use instead (services run by another stack keep theirs);
    ``settings``: the rest of the settings file, written to ``tmp/settings.json``. Use it as a context
    manager; :meth:`start` starts the services, then the gateway, or the names given.
    """

    def __init__(self, tmp: Path, services: dict[str, str], down: Iterable[str] = (),
                 ports: dict[str, int] | None = None, **settings: Any):
        self.tmp = tmp
        self.ports = ports or {"wsgi": free_port(), **{name: free_port() for name in [*services, *down]}}
        self.services = services
        extra = {"services": services} if services else {}
        self.path = write_settings(tmp / "settings.json", ports=self.ports, **extra, **settings)
        #: name -> process; a test may replace one (a restarted gateway): :meth:`stop` stops what is here.
        self.procs: dict[str, Process] = {}

    @property
    def url(self) -> str:
        """The gateway's base URL."""
        return f"http://{HOST}:{self.ports['wsgi']}/"

    @property
    def ws(self) -> str:
        """The gateway's WebSocket URL."""
        return f"ws://{HOST}:{self.ports['wsgi']}/ws"

    def direct(self, name: str) -> str:
        """A service's own URL (not through the gateway)."""
        return f"http://{HOST}:{self.ports[name]}/"

    def start(self, *names: str) -> Stack:
        for name in names or (*self.services, "wsgi"):
            self.procs[name] = start_service(self.path, name, self.tmp)
        return self

    def stop(self) -> None:
        """Stop every process, the gateway first; fail if any of them, or what they started, is left."""
        procs = sorted(self.procs.values(), key=lambda p: p is not self.procs.get("wsgi"))
        try:
            stop_all(procs)
        finally:
            left = [pid for proc in procs for pid in ([] if proc.exited() else [proc.pid]) + proc.left_behind()]
        assert not left, f"processes left after the stack stopped: {left}"

    def __enter__(self) -> Stack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def server_workers(server: Process) -> set[int]:
    """The pids of a service's or gateway's workers (the children of its gunicorn master)."""
    return set(procutil.children(server.pid))


def worker_of(sock: socket.socket, pids: Iterable[int]) -> int | None:
    """Which of these processes holds the other end of a client's connected socket."""
    port = sock.getsockname()[1]
    peers = {int(f[9]) for f in procutil.tcp_sockets() if int(f[2].rsplit(":", 1)[1], 16) == port} - {0}
    return next((pid for pid in pids if procutil.socket_inodes(pid) & peers), None)


def on_every_worker(pids: set[int], connect: Callable[[], T], tries: int = 40) -> list[T]:
    """Open connections (``connect``, connected) until each worker in ``pids`` holds at least one;
    return them all. Fails when ``tries`` connections do not reach them all."""
    conns: list[T] = []
    covered: set[int] = set()
    for _ in range(tries):
        conn = connect()
        conns.append(conn)
        covered.add(wait_until(lambda: worker_of(conn.sock, pids), 5, "the worker of a connection",  # noqa: B023 - called at once
                               error=AssertionError))
        if covered == pids:
            return conns
    raise AssertionError(f"could not reach every worker: {covered} of {pids}")
