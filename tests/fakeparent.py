"""A minimal fake shmooze service for testing modules over the wire protocol.

The fake opens the two listening sockets, spawns the module with
``argv + [HOST, CMD_PORT, UPDATE_PORT]``, accepts both connections in
whatever order they arrive, and offers blocking helpers with deadlines
(never fixed sleeps).  Always call :meth:`FakeParent.close` (or use it as a
context manager): it kills and reaps the spawned process.
"""

import json
import os
import select
import socket
import subprocess
import sys
import time
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_TIMEOUT = 10.0


def module_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for module processes: PYTHONPATH sees shmooze and pymodule."""
    env = dict(os.environ)
    paths = [ROOT, os.path.join(ROOT, "pymodule")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if extra:
        env.update(extra)
    return env


def pid_gone(pid: int) -> bool:
    """True if ``pid`` no longer exists or is a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state in ("Z", "X")
    except (OSError, IndexError):
        return True


def wait_pid_gone(pid: int, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Poll until ``pid`` is gone (returns False on timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid_gone(pid):
            return True
        time.sleep(0.01)
    return pid_gone(pid)


class Timeout(AssertionError):
    """A bounded wait in the fake parent expired."""


class _LineSocket:
    """Line-oriented reader/writer over a connected socket, with deadlines."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""
        self.eof = False

    def write_line(self, data: bytes) -> None:
        self.sock.sendall(data + b"\n")

    def read_line(self, timeout: float) -> bytes | None:
        """Return one line (without newline), or None at EOF; raise Timeout."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            if self.eof:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Timeout(f"no line within {timeout:.1f}s (buffered {self.buf[:200]!r})")
            r, _, _ = select.select([self.sock], [], [], remaining)
            if not r:
                continue
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def wait_eof(self, timeout: float) -> bool:
        """Read (and discard) until EOF; True if EOF arrived in time."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            r, _, _ = select.select([self.sock], [], [], remaining)
            if r:
                try:
                    data = self.sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                if not data:
                    self.eof = True
                self.buf += data
        return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class FakeParent:
    """Service side of the module protocol, for tests."""

    def __init__(self, host: str = "127.0.0.1", timeout: float = DEFAULT_TIMEOUT,
                 answer_updates: bool = True):
        self.host = host
        self.timeout = timeout
        self.answer_updates = answer_updates
        self.proc: subprocess.Popen | None = None
        self.cmd: _LineSocket | None = None
        self.upd: _LineSocket | None = None
        self.updates: list[dict[str, Any]] = []
        self.parameters: dict[str, Any] = {}
        self.cmd_listener = self._listen()
        self.update_listener = self._listen()
        self.cmd_port = self.cmd_listener.getsockname()[1]
        self.update_port = self.update_listener.getsockname()[1]
        self.accept_order: list[str] = []

    def _listen(self) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, 0))
        s.listen(1)
        return s

    # -- process --------------------------------------------------------

    def spawn(self, argv: list[str], accept: bool = True, env: dict[str, str] | None = None,
              **popen_kw: Any) -> subprocess.Popen:
        """Start ``argv + [HOST, CMD_PORT, UPDATE_PORT]``; accept both streams."""
        full = list(argv) + [self.host, str(self.cmd_port), str(self.update_port)]
        self.proc = subprocess.Popen(full, env=module_env(env), stdin=subprocess.DEVNULL, **popen_kw)
        if accept:
            self.accept()
        return self.proc

    def accept(self, timeout: float | None = None) -> None:
        """Accept the command and update connections in either order."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        pending = {self.cmd_listener: "cmd", self.update_listener: "update"}
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Timeout(f"module did not connect {sorted(pending.values())} within {timeout:.1f}s")
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"module exited with {self.proc.returncode!r} before connecting")
            r, _, _ = select.select(list(pending), [], [], min(remaining, 0.1))
            for lst in r:
                conn, _ = lst.accept()
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.settimeout(self.timeout)  # bounds blocking writes too
                name = pending.pop(lst)
                self.accept_order.append(name)
                if name == "cmd":
                    self.cmd = _LineSocket(conn)
                else:
                    self.upd = _LineSocket(conn)

    def wait_exit(self, timeout: float | None = None) -> int:
        """Wait for the module process to exit; return its status."""
        assert self.proc is not None
        try:
            return self.proc.wait(self.timeout if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            raise Timeout(f"module pid {self.proc.pid} still running") from None

    # -- command stream -------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        """Write raw bytes plus a newline on the command stream."""
        assert self.cmd is not None
        self.cmd.write_line(data)

    def read_answer(self, timeout: float | None = None) -> dict[str, Any] | None:
        """Read one answer line (None at EOF)."""
        assert self.cmd is not None
        line = self.cmd.read_line(self.timeout if timeout is None else timeout)
        return None if line is None else json.loads(line.decode("utf-8"))

    def send(self, cmd: str, args: dict[str, Any] | None = None,
             timeout: float | None = None) -> dict[str, Any] | None:
        """Send one command and return its answer (None if the stream closed)."""
        msg: dict[str, Any] = {"cmd": cmd}
        if args is not None:
            msg["args"] = args
        self.send_raw(json.dumps(msg, separators=(",", ":")).encode("utf-8"))
        return self.read_answer(timeout)

    def close_cmd(self) -> None:
        """Close the command stream (the module should then exit)."""
        if self.cmd is not None:
            try:
                self.cmd.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.cmd.close()

    # -- update stream --------------------------------------------------

    def read_update(self, timeout: float | None = None) -> dict[str, Any] | None:
        """Read one update line, apply it to :attr:`parameters`, answer it.

        Returns the parsed update (or ``{"raw": bytes}`` for non-JSON lines),
        or None at EOF.
        """
        assert self.upd is not None
        line = self.upd.read_line(self.timeout if timeout is None else timeout)
        if line is None:
            return None
        try:
            msg = json.loads(line.decode("utf-8"))
        except ValueError:
            msg = {"raw": line}
            if self.answer_updates:
                self.upd.write_line(b'{"success":false,"error":"invalid JSON"}')
            self.updates.append(msg)
            return msg
        cmd = msg.get("cmd") if isinstance(msg, dict) else None
        args = (msg.get("args") or {}) if isinstance(msg, dict) else {}
        if cmd == "set_parameters":
            self.parameters.update(args.get("parameters") or {})
        elif cmd == "unset_parameters":
            for name in args.get("parameters") or []:
                self.parameters.pop(name, None)
        if self.answer_updates:
            try:
                self.upd.write_line(b'{"success":true}')
            except OSError:
                pass
        self.updates.append(msg)
        return msg

    def wait_update(self, pred: Callable[[dict[str, Any]], bool],
                    timeout: float | None = None) -> dict[str, Any]:
        """Read updates until ``pred(update)`` holds; return that update."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Timeout(f"no matching update within {timeout:.1f}s; seen {self.updates[-5:]!r}")
            msg = self.read_update(remaining)
            if msg is None:
                raise AssertionError(f"update stream closed; seen {self.updates[-5:]!r}")
            if pred(msg):
                return msg

    def wait_param(self, name: str, value: Any = None, timeout: float | None = None) -> Any:
        """Read updates until parameter ``name`` is set (to ``value`` if given)."""
        def ok(_msg):
            if name not in self.parameters:
                return False
            return value is None or self.parameters[name] == value
        if not ok(None):
            self.wait_update(ok, timeout)
        return self.parameters[name]

    # -- cleanup --------------------------------------------------------

    def kill(self) -> None:
        """SIGKILL and reap the module process if still running."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        if self.proc is not None:
            self.proc.wait(self.timeout)

    def close(self) -> None:
        """Close every socket, then kill and reap the module; assert it is gone."""
        for ls in (self.cmd, self.upd):
            if ls is not None:
                ls.close()
        for s in (self.cmd_listener, self.update_listener):
            s.close()
        self.kill()
        if self.proc is not None:
            assert self.proc.returncode is not None
            assert pid_gone(self.proc.pid), f"module pid {self.proc.pid} survived"

    def __enter__(self) -> "FakeParent":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def python_module(path: str, *args: str) -> list[str]:
    """argv running a Python module file with this interpreter."""
    return [sys.executable, path] + list(args)
