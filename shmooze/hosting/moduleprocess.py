"""One module process, from the service's side: start, command, updates, stop.

Its life is a small state machine; every transition goes through
:meth:`ModuleProcess._enter`, which checks it against :data:`TRANSITIONS`::

    starting -> initializing -> running -> stopping -> stopped
        \\______________\\______________/^

``stop`` may be reached from any earlier state and always runs the stop ladder
(:mod:`shmooze.system.ladder`), so no process outlives its handle.
"""

from __future__ import annotations

import enum
import functools
import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from typing import Any, Callable

from shmooze import protocol
from shmooze.errors import CommandError, telling_line
from shmooze.moduletype import ModuleType
from shmooze.system import ladder, peer
from shmooze.system.containment import Box
from shmooze.system.ioloop import IOLoop, wait_readable
from shmooze.system.ioloop import pidfd as open_pidfd
from shmooze.system.limits import Limits

log = logging.getLogger(__name__)


class State(str, enum.Enum):
    STARTING = "starting"
    INITIALIZING = "initializing"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


#: Every allowed transition and why it happens.
TRANSITIONS: dict[tuple[State, State], str] = {
    (State.STARTING, State.INITIALIZING): "both streams connected; init is sent",
    (State.STARTING, State.STOPPING): "the process did not connect in time, or exited first",
    (State.INITIALIZING, State.RUNNING): "init answered with success",
    (State.INITIALIZING, State.STOPPING): "init failed, timed out, or the module left",
    (State.RUNNING, State.STOPPING): "rm, a failed command, a closed stream, or the module left",
    (State.STOPPING, State.STOPPED): "the ladder ended the process and it was reaped",
}


class ModuleError(CommandError):
    """A command to the module failed: the module answered ``success: false``."""


class ModuleBroken(CommandError):
    """The module broke the protocol (no answer in time, closed stream, garbage): it must be stopped."""


class _ExitedEarly(CommandError):
    """The process exited before it connected (the message has its exit status already)."""


#: How many of its last stderr lines a starting module keeps, to say why a failed start failed.
START_STDERR_LINES = 20


class ModuleProcess:
    """The handle of one module process.

    ``on_update(module, cmd, args)`` is called on the I/O thread for each update
    line; ``on_gone(module, reason)`` when the module leaves on its own (an ``rm``
    update, end of its update stream, or its process exiting).
    """

    # A service holds hundreds of these: slots, not a dict of 40 entries each (1.6 KiB less per module).
    __slots__ = ("type", "uid", "loop", "on_update", "on_gone", "on_answer", "on_spawn", "on_output", "extra_env", "max_line",
                 "host", "box", "check_peers", "refused", "state", "parameters", "proc", "pid", "started_at",
                 "started_mono", "stopped_at", "ended_by", "stop_reason", "start_failed", "returncode", "told",
                 "gone_reason", "restart_plan", "output_read", "_cmd_sock", "_cmd_buf", "_upd_sock", "_upd_buf", "_upd_chan",
                 "_pidfd", "_pipes", "_lock", "_cmd_lock", "_cmd_watched", "_running", "_start_stderr")

    def __init__(self, mtype: ModuleType, uid: str, loop: IOLoop, *,
                 on_update: Callable[[ModuleProcess, str, dict[str, Any]], None] | None = None,
                 on_gone: Callable[[ModuleProcess, str], None] | None = None,
                 on_spawn: Callable[[int], None] | None = None,
                 on_output: Callable[[ModuleProcess, str, str], None] | None = None,
                 on_answer: Callable[[ModuleProcess, dict[str, Any], Any], None] | None = None,
                 env: dict[str, str] | None = None, max_line: int = 1 << 20,
                 host: str = "127.0.0.1", box: Box | None = None, check_peers: bool = True):
        self.type = mtype
        self.uid = uid
        self.loop = loop
        self.on_update = on_update
        self.on_gone = on_gone
        self.on_spawn = on_spawn
        self.on_output = on_output  # (module, "stdout" or "stderr", line): see shmooze.hosting.output
        self.on_answer = on_answer  # (module, command, whole answer or None): each command and its answer
        self.extra_env = env or {}
        self.max_line = max_line
        self.host = host
        self.box = box if box is not None else Box(uid, None)
        self.check_peers = check_peers
        self.refused = 0  # connections to its ports from processes that were not the module
        self.state = State.STARTING
        self.parameters: dict[str, Any] = {}
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self.started_at = time.time()
        self.started_mono = time.monotonic()
        self.stopped_at: float | None = None
        self.ended_by: str | None = None
        self.stop_reason: str | None = None
        self.start_failed = False
        self.returncode: int | None = None
        self.told: str | None = None  # last of play/suspend sent
        self.gone_reason: str | None = None
        self.restart_plan: dict[str, Any] | None = None  # what a restart starts again (see shmooze.hosting.ops)
        self.output_read = False  # (stopped) its output's last words were read, on the I/O thread
        self._cmd_sock: socket.socket | None = None
        self._cmd_buf = protocol.LineBuffer(max_line)
        self._upd_sock: socket.socket | None = None
        self._upd_buf = protocol.LineBuffer(max_line)
        self._upd_chan: Any = None
        self._pidfd: int | None = None
        self._pipes: list[Any] = []
        self._lock = threading.RLock()  # state and parameters
        self._cmd_lock = threading.Lock()  # one command at a time on the command stream
        self._cmd_watched: socket.socket | None = None  # the command stream, while the I/O thread watches it
        # Held until the module is stopped: a lock costs 56 bytes where an Event (a Condition, its deque
        # and lock) cost 900 per module; waiters take it and give it back at once.
        self._running = threading.Lock()
        self._running.acquire()
        # Its last stderr lines while it starts (why a start failed); None once it runs, to keep no more.
        self._start_stderr: list[str] | None = []

    # -- the state machine -----------------------------------------------------------

    def _enter(self, new: State) -> None:
        """The one place where the state changes."""
        with self._lock:
            why = TRANSITIONS.get((self.state, new))
            if why is None:
                raise RuntimeError(f"module {self.uid}: no transition from {self.state.value} to {new.value}")
            if log.isEnabledFor(logging.DEBUG):
                log.debug("module %s (%s, pid %s): %s -> %s: %s", self.uid, self.type.name, self.pid,
                          self.state.value, new.value, why)
            self.state = new

    @property
    def alive(self) -> bool:
        return self.state in (State.STARTING, State.INITIALIZING, State.RUNNING)

    # -- start -----------------------------------------------------------------------

    def start(self, args: dict[str, Any], restored: dict[str, Any] | None = None) -> None:
        """Spawn, wait for both connections, send ``init``; on any failure stop and raise.

        ``restored`` (a module started again after a restart) goes beside ``args`` in the
        ``init`` line, as ``"restored"``: modules that do not look for it see the same ``init``.
        """
        try:
            self._spawn_and_connect()
            self._advance(State.STARTING, State.INITIALIZING)
            self.call("init", args, timeout=self.type.init_timeout or self.type.command_timeout, starting=True,
                      extra=None if restored is None else {"restored": restored})
            self._hear_updates(self.type.command_timeout)
            self._advance(State.INITIALIZING, State.RUNNING)
            self._start_stderr = None
        except CommandError as exc:
            self.start_failed = True
            why = str(exc)
            if not isinstance(exc, _ExitedEarly) and self.proc is not None and \
                    ladder.wait_exit(self.proc, 0.2 if isinstance(exc, ModuleBroken) else 0, self._pidfd):
                # It ended by itself (a crash during init): the ladder records rung ``exited``.
                why = f"{why}; exited with status {self.proc.returncode}"
            self.stop(f"start failed: {why}", send_rm=False)
            self._close_streams()  # connected after a concurrent stop closed them
            # What it printed last, unless it answered why itself (init answered success: false).
            cause = self._start_cause() if not isinstance(exc, ModuleError) else None
            self._start_stderr = None
            if cause:
                why = f"{why}; it printed: {cause}"
                with self._lock:
                    self.stop_reason = f"start failed: {why}"
            raise CommandError(f"module {self.type.name!r} (uid {self.uid}) failed to start: {why}") from None

    def _start_cause(self, wait: float = 1.0) -> str | None:
        """The line of its stderr that most likely says why the start failed (``ModuleNotFoundError: ...``,
        ``can't open file ...``), once the I/O thread has read what the stopped process wrote last."""
        if self.proc is not None and self.loop.thread.is_alive():  # (else nothing was or will be read)
            read = threading.Event()
            self.loop.call_soon(read.set)  # after the last reads that stop() queued (see _detach)
            read.wait(wait)
        lines, self._start_stderr = self._start_stderr or [], None
        return telling_line(lines)

    def _advance(self, old: State, new: State) -> None:
        """Enter ``new`` from ``old``; a stop that began meanwhile (service stopping) fails the start."""
        with self._lock:
            if self.state is not old:
                raise CommandError(f"stopped while {old.value}")
            self._enter(new)

    def _spawn_and_connect(self) -> None:
        listeners = []
        try:
            for _ in range(2):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind((self.host, 0))
                # A deep queue: connections flooding in from strangers must not crowd out the module's
                # (with a backlog of 1 its connect waited out the start in SYN retransmits).
                sock.listen(socket.SOMAXCONN)
                sock.setblocking(False)
                listeners.append(sock)
            argv = self.type.command_line() + [self.host, str(listeners[0].getsockname()[1]),
                                               str(listeners[1].getsockname()[1])]
            program = argv[0]
            limits = self.box.rlimits(Limits.of(self.type))  # (a cgroup holds the others)
            env = self.type.environment(self.extra_env)
            limited = limits.wrap(argv)
            if (limited is not argv or self.box.wrap(limited) is not limited) and not _runnable(program, env,
                                                                                                 self.type.cwd):
                raise CommandError(f"cannot run {program}: No such file or directory")
            try:
                self.proc = self.box.popen(
                    limited, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    env=env, cwd=self.type.cwd, start_new_session=True,
                    bufsize=0)  # the pipes are read with os.read: no 8 KiB buffer each per module
            except OSError as exc:
                raise CommandError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
            self.pid = self.box.pid = self.proc.pid
            limits.apply(self.pid)
            if self.on_spawn is not None:
                self.on_spawn(self.pid)
            self._pidfd = open_pidfd(self.pid)
            self._watch_output()
            self._accept_both(listeners)
        except OSError as exc:  # sockets or pidfd: out of file descriptors and the like
            raise CommandError(f"cannot start: {exc.strerror or exc}") from None
        finally:
            for sock in listeners:
                sock.close()

    def _accept_both(self, listeners: list[socket.socket]) -> None:
        assert self.proc is not None  # started just before
        deadline = time.monotonic() + self.type.connect_timeout
        conns: dict[int, socket.socket] = {}
        refused: dict[str, int] = {}  # kind of refusal -> count, logged once below
        watch: list[Any] = list(listeners) + ([self._pidfd] if self._pidfd is not None else [])
        try:
            while len(conns) < 2:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CommandError(f"did not connect within {self.type.connect_timeout:g} s"
                                       + _refusals(refused, "; refused {}"))
                ready = wait_readable(watch, min(remaining, 0.25))
                if self.proc.poll() is not None:
                    raise _ExitedEarly(f"exited with status {self.proc.returncode} before connecting")
                for i, sock in enumerate(listeners):
                    if sock in ready and i not in conns:
                        conn = self._accept_module(sock, ("command", "update")[i], refused)
                        if conn is not None:
                            conns[i] = conn
                            watch.remove(sock)
        except BaseException:
            for c in conns.values():
                c.close()
            raise
        finally:
            if refused:
                self.refused += sum(refused.values())
                log.warning("module %s (%s, pid %s): refused %s", self.uid, self.type.name, self.pid,
                            _refusals(refused))
        self._cmd_sock, self._upd_sock = conns[0], conns[1]
        self._cmd_sock.setblocking(True)
        self._cmd_sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._upd_sock.setblocking(False)
        self._upd_sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.loop.call_soon(self._register_update_stream)

    def _accept_module(self, listener: socket.socket, stream: str, refused: dict[str, int],
                       most: int = 64) -> socket.socket | None:
        """Accept from ``listener`` until the module's connection comes (returned), the queue is
        empty, or ``most`` were refused (then the caller polls again: the other port gets its turn).
        Each connection is identified before anything is read from it; others are reset at once."""
        for _ in range(most):
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return None
            except ConnectionAbortedError:
                continue  # reset while queued
            if not self.check_peers:
                return conn
            verdict = peer.check(conn, self.box.members)
            if verdict:
                return conn
            refused[verdict.kind] = refused.get(verdict.kind, 0) + 1
            log.debug("module %s (%s, pid %s): refused a connection to its %s port: %s", self.uid,
                      self.type.name, self.pid, stream, verdict.why)
            try:  # a reset, not a close: no TIME_WAIT kept for a stranger, whatever it sent unread
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_0)
            except OSError:
                pass
            conn.close()
        return None

    # -- the update stream (runs on the I/O thread) ----------------------------------

    def _register_update_stream(self) -> None:
        sock = self._upd_sock
        if sock is None or sock.fileno() < 0:
            return
        self._upd_chan = self.loop.add_reader(sock, self._on_update_readable, max_out=256 << 10)
        if self._pidfd is not None:
            self.loop.add_reader(_FdObject(self._pidfd), self._on_exit)
        self._watch_command_stream()

    # -- the command stream between commands (I/O thread) ----------------------------

    def _watch_command_stream(self) -> None:
        """Watch the command stream while no command is in flight, so that its close is noticed at once."""
        sock = self._cmd_sock
        if sock is None or self._cmd_watched is not None or sock.fileno() < 0:
            return
        self._cmd_watched = sock
        self.loop.add_reader(sock, self._on_command_readable)

    def _unwatch_command_stream(self) -> None:
        """(I/O thread) Stop watching the command stream: a stop reads the answer to its ``rm`` itself."""
        sock, self._cmd_watched = self._cmd_watched, None
        if sock is not None:
            self.loop.remove(sock)

    def _on_command_readable(self) -> None:
        sock, self._cmd_watched = self._cmd_watched, None
        if sock is None:
            return
        self.loop.remove(sock)  # one shot: re-armed after the next command, or below
        if not self._cmd_lock.acquire(blocking=False):
            return  # a command is in flight: its caller reads the answer and re-arms the watch
        try:
            if sock is not self._cmd_sock:
                return
            try:
                # Readable now, or the last answer was read meanwhile (then nothing to see: watch again).
                # The socket may have a timeout set, so recv is called only when it cannot block.
                data = sock.recv(1, socket.MSG_PEEK) if wait_readable([sock], 0) else None
            except (BlockingIOError, InterruptedError, TimeoutError):
                data = None
            except OSError:
                data = b""
            if data is None:
                self._watch_command_stream()
                return
        finally:
            self._cmd_lock.release()
        if not data:
            self._left("its command stream closed")
        # else: a line nobody asked for; the next command reports it (see _check_nothing_unasked)

    def _hear_updates(self, timeout: float) -> None:
        """Apply the updates the module sent before its last answer, before that answer is passed on.

        The I/O thread reads the update stream on its own, so an answer (``init``'s: the end of
        ``add``) could overtake the parameters the module set before answering, and a client asking
        at once would not see them. They are in the update socket already (a local write lands
        before the writer goes on), so the I/O thread reads what is there now; this waits for it
        (at most ``timeout``: a busy I/O thread delays the answer, never loses it)."""
        heard = threading.Event()

        def drain() -> None:
            try:
                for _ in range(64):  # what is there now, not a module's endless flood
                    if not self._read_updates():
                        break
            finally:
                heard.set()

        self.loop.call_soon(drain)
        heard.wait(timeout)

    def _on_update_readable(self) -> None:
        self._read_updates()

    def _read_updates(self) -> bool:
        """Read and apply what the update stream has (one read); whether there was anything."""
        sock = self._upd_sock
        if sock is None:
            return False
        buf = self.loop.read_buffer
        try:
            data = buf[:sock.recv_into(buf)]  # (copied out by the line buffer below, before the next read)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = buf[:0]
        if not data:
            self.loop.remove(sock)
            self._left("its update stream closed")
            return False
        # Every line gets its answer, in order: a line over the limit is answered with an error (once)
        # and the complete lines around it are still applied.
        for event in self._upd_buf.events(data):
            if isinstance(event, protocol.LineTooLong):
                log.warning("module %s (%s): update %s", self.uid, self.type.name, event)
                answer = protocol.error(f"update refused: {event}")
            else:
                answer = self._apply_update(event.data)
            if self._upd_chan is not None:
                self.loop.write(self._upd_chan, protocol.encode_line(answer))
        return True

    def _apply_update(self, line: bytes) -> dict[str, Any]:
        try:
            item = protocol.to_item(protocol.loads(line))
        except protocol.BodyError as exc:
            log.warning("module %s (%s) sent a bad update line: %s", self.uid, self.type.name, exc)
            return protocol.error(f"update is not JSON: {exc}")
        if isinstance(item, protocol.Invalid):
            return protocol.error(item.error)
        args = item.args
        if item.cmd == "set_parameters":
            params = args.get("parameters")
            if not isinstance(params, dict):
                return protocol.error("set_parameters needs 'parameters', an object")
            with self._lock:
                self.parameters.update(params)
        elif item.cmd == "unset_parameters":
            names = args.get("parameters")
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                return protocol.error("unset_parameters needs 'parameters', a list of names")
            with self._lock:
                for name in names:
                    self.parameters.pop(name, None)
        elif item.cmd == "rm":
            self._left("it removed itself")
        else:
            return protocol.error(f"unknown update {protocol.short(item.cmd, 40)} "
                                  "(updates: set_parameters, unset_parameters, rm)")
        if self.on_update is not None:
            try:
                self.on_update(self, item.cmd, args)
            except Exception:
                log.exception("update handler failed")
        return protocol.ok()

    def _on_exit(self) -> None:
        if self._pidfd is not None:
            self.loop.remove(_FdObject(self._pidfd))
        self._left("its process exited")

    def _left(self, reason: str) -> None:
        with self._lock:
            if self.gone_reason is not None or not self.alive:
                return
            self.gone_reason = reason
        if self.on_gone is not None and self.state is State.RUNNING:
            self.on_gone(self, reason)

    def _watch_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None and self.proc.stderr is not None
        for stream, level in ((self.proc.stdout, logging.INFO), (self.proc.stderr, logging.WARNING)):
            os.set_blocking(stream.fileno(), False)
            self._pipes.append(stream)
            self.loop.call_soon(_OutputPipe(self, stream, level).watch)

    def read_output(self, stream: Any, buf: protocol.LineBuffer, level: int) -> None:
        """(I/O thread) Read what the module wrote on ``stream`` (its stdout or stderr) and pass on each line."""
        read = self.loop.read_buffer
        try:
            data = read[:os.readv(stream.fileno(), [read])]  # (copied out by the line buffer below)
        except BlockingIOError:
            return
        except OSError:
            data = read[:0]
        if not data:
            self.loop.remove(stream)
            stream.close()
            return
        for event in buf.events(data):
            if isinstance(event, protocol.LineTooLong):
                self._log_output(level, b"[output line over the line limit dropped]")
            else:
                self._log_output(level, event.data)

    def _log_output(self, level: int, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip()
        log.log(level, "module %s (%s, pid %s): %s", self.uid, self.type.name, self.pid, text)
        tail = self._start_stderr
        if tail is not None and level >= logging.WARNING:
            tail.append(text)
            del tail[:-START_STDERR_LINES]
        if self.on_output is not None:
            try:
                self.on_output(self, "stderr" if level >= logging.WARNING else "stdout", text)
            except Exception:
                log.exception("output handler failed")

    # -- the command stream ----------------------------------------------------------

    def call(self, cmd: str, args: dict[str, Any] | None = None, timeout: float | None = None,
             starting: bool = False, extra: dict[str, Any] | None = None) -> Any:
        """Send one command and wait for its answer.

        Raises :class:`ModuleError` when the module answered ``success: false`` and
        :class:`ModuleBroken` when it broke the protocol (the caller stops it).
        """
        if not starting and self.state is not State.RUNNING:
            raise ModuleBroken(f"module {self.uid} is {self.state.value}")
        limit = self.type.command_timeout if timeout is None else timeout
        with self._cmd_lock:
            raw = self._receive(cmd, args, limit, *self._send(cmd, args, limit, extra))
        return self._answer(cmd, args, raw)

    def _send(self, cmd: str, args: dict[str, Any] | None, limit: float,
              extra: dict[str, Any] | None = None) -> tuple[socket.socket, float]:
        """(The command lock held.) Send one command line; the stream and the answer's deadline, for
        :meth:`_receive`. A failure is :class:`ModuleBroken` (and the stream watched again)."""
        line = protocol.encode_line({**protocol.Command(cmd, args or {}).to_json(), **(extra or {})})
        sock = self._cmd_sock
        if sock is None:
            raise ModuleBroken(f"module {self.uid} has no command stream")
        deadline = time.monotonic() + limit
        sent = False
        try:
            self._check_nothing_unasked(sock, cmd)
            sock.settimeout(limit)
            sock.sendall(line)
            sent = True
        except OSError as exc:
            raise self._broken(exc, cmd, args, limit) from None
        finally:
            if not sent:
                self._watch_again()
        return sock, deadline

    def _receive(self, cmd: str, args: dict[str, Any] | None, limit: float, sock: socket.socket,
                 deadline: float) -> bytes:
        """(The command lock held.) The answer line to the command :meth:`_send` sent."""
        try:
            return self._read_line(sock, deadline, cmd)
        except OSError as exc:
            raise self._broken(exc, cmd, args, limit) from None
        finally:
            self._watch_again()

    def _broken(self, exc: OSError, cmd: str, args: dict[str, Any] | None, limit: float) -> ModuleBroken:
        """What a command stream that failed or timed out raises (``on_answer`` hears of no answer)."""
        self._heard(cmd, args, None)
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return ModuleBroken(f"no answer to {cmd} within {limit:g} s")
        return ModuleBroken(f"command stream failed during {cmd}: {exc.strerror or exc}")

    def _watch_again(self) -> None:
        if self.state is not State.STOPPING:  # (its rm: the stream is closed next, not watched)
            self.loop.call_soon(self._watch_command_stream)

    def _answer(self, cmd: str, args: dict[str, Any] | None, raw: bytes) -> Any:
        try:
            answer = json.loads(raw)
        except (ValueError, RecursionError):
            self._heard(cmd, args, None)
            raise ModuleBroken(f"answer to {cmd} is not JSON: {protocol.short(raw)}") from None
        self._heard(cmd, args, answer)
        try:
            return protocol.answer_result(answer)
        except protocol.AnswerFailed as exc:
            raise ModuleError(str(exc)) from None
        except protocol.NotAnAnswer as exc:
            raise ModuleBroken(f"answer to {cmd}: {exc}") from None

    def _heard(self, cmd: str, args: dict[str, Any] | None, answer: Any) -> None:
        """Tell ``on_answer`` of a command and its answer (None: no answer came)."""
        if self.on_answer is not None:
            try:
                self.on_answer(self, {"cmd": cmd, "args": args or {}}, answer)
            except Exception:
                log.exception("answer handler failed")

    def _check_nothing_unasked(self, sock: socket.socket, cmd: str) -> None:
        """Between commands the module must be silent: an extra answer (two answers to one command)
        would otherwise be taken as the answer to the next command, and every later one too."""
        if not self._cmd_buf.pending:
            if not wait_readable([sock], 0):
                return
            if not sock.recv(1, socket.MSG_PEEK):
                raise ConnectionResetError("closed by the module")
        raise ModuleBroken(f"sent an answer nobody asked for (before {cmd}): it answered a command twice")

    def _read_line(self, sock: socket.socket, deadline: float, cmd: str) -> bytes:
        """The next answer line; any further complete lines stay buffered (and are unasked answers)."""
        while True:
            event = self._cmd_buf.next_event()
            if isinstance(event, protocol.LineTooLong):
                raise ModuleBroken(f"answer to {cmd}: {event}")
            if event is not None:
                return event.data
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout()
            sock.settimeout(remaining)
            data = sock.recv(65536 if self._cmd_buf.pending else 4096)  # most answers fit in the first read
            if not data:
                raise ConnectionResetError("closed by the module")
            self._cmd_buf.feed(data)

    # -- stop ------------------------------------------------------------------------

    def stop(self, reason: str, send_rm: bool = True) -> str:
        """Run the stop ladder once (later callers wait for it); return the rung that ended the process."""
        stop_all([self], reason, send_rm)
        return self.ended_by or ladder.EXITED

    def _begin_stop(self, reason: str) -> bool:
        """Enter stopping; False when another caller stopped it first (then wait for it)."""
        with self._lock:
            if self.state in (State.STOPPING, State.STOPPED):
                return False
            self._enter(State.STOPPING)
            self.stop_reason = reason
            return True

    def _stopping(self, send_rm: bool) -> ladder.Stopping:
        """Its process's way down the ladder. The request: ``rm`` sent (``ask``), then its answer read and
        both streams closed (``hear``); the command stream stays locked between the two. When a command
        is in flight at ``ask``, ``hear`` sends ``rm`` once it is answered, as any command."""
        assert self.proc is not None
        leaving = self.gone_reason is not None
        asking = send_rm and not leaving and self._cmd_sock is not None
        limit = self.type.command_timeout
        sent: list[tuple[socket.socket, float] | None] = []  # what ask sent (None: it failed), the lock held

        def ask() -> None:
            if asking and self._cmd_lock.acquire(blocking=False):
                try:
                    sent.append(self._send("rm", None, limit))
                except CommandError:
                    self._cmd_lock.release()
                    sent.append(None)

        def hear() -> None:
            try:
                if sent:
                    exchange = sent[0]
                    if exchange is not None:
                        try:
                            self._answer("rm", None, self._receive("rm", None, limit, *exchange))
                        finally:
                            self._cmd_lock.release()
                elif asking:
                    self.call("rm", timeout=limit, starting=True)
            except CommandError:
                pass
            self._close_streams(wait_call=limit)

        return ladder.Stopping(self.proc, self.type.rm_timeout, self.type.term_timeout, ask=ask, hear=hear,
                               pidfd=self._pidfd, first_rung=ladder.EXITED if leaving else ladder.RM,
                               sweep=self.box.sweep, tag=self)

    def _detach(self) -> Callable[[], None]:
        """Its streams, pidfd and output pipes taken from it; what closes them on the I/O thread (reading
        the output's last words first). A command in flight gets the answer the module sent before it left
        (the ladder's request waits for it the same way; a module found gone at once skipped that step)."""
        streams = self._take_streams(wait_call=self.type.command_timeout)
        fd, self._pidfd = self._pidfd, None
        pipes, self._pipes = self._pipes, []

        def close_all() -> None:
            _unwatch_and_close(self.loop, streams)
            if fd is not None:
                self.loop.remove(_FdObject(fd))
                os.close(fd)
            for stream in pipes:
                if stream.closed:  # (its end was read, and it closed, by read_output)
                    continue
                # Read what the module wrote last, so its final words reach the log.
                self.loop.remove(stream)
                try:
                    rest = stream.read() or b""
                except (OSError, ValueError):
                    rest = b""
                level = logging.WARNING if self.proc is not None and stream is self.proc.stderr else logging.INFO
                for line in rest.splitlines():
                    self._log_output(level, line)
                stream.close()
            self.output_read = True

        return close_all

    def _stopped(self) -> None:
        """The ladder is over (its end detached, see :meth:`_detach`): free its box, enter stopped."""
        try:
            if self.proc is not None and self.ended_by is not None:
                self.returncode = self.proc.returncode
            self.box.release()
        finally:
            self.stopped_at = time.time()
            self._enter(State.STOPPED)
            self._running.release()
        log.info("module %s (%s, pid %s) stopped: %s (%s)", self.uid, self.type.name, self.pid,
                 self.ended_by, self.stop_reason)

    def _close_streams(self, wait_call: float = 0.0) -> None:
        """Close both streams; with ``wait_call``, first let a command in flight get its answer
        (waiting up to that many seconds), so an answer the module sent before leaving is delivered."""
        streams = self._take_streams(wait_call)
        # While it stops, its ladder waits for its exit: the I/O thread need not watch for it too.
        exit_fd = self._pidfd if self.state is State.STOPPING else None
        if streams != (None, None):
            # Closed on the I/O thread, after it stops watching them (the fd numbers must not be reused first);
            # both in one call: one wake-up of the I/O thread, not two, per module stopped.
            self.loop.call_soon(lambda: _unwatch_and_close(self.loop, streams, exit_fd))

    def _take_streams(self, wait_call: float = 0.0) -> tuple[socket.socket | None, socket.socket | None]:
        """Both streams taken from it (the command stream shut down: that wakes a caller still blocked on
        it), to be closed on the I/O thread; see :meth:`_close_streams`."""
        upd, self._upd_sock = self._upd_sock, None
        locked = self._cmd_lock.acquire(timeout=wait_call) if wait_call > 0 else False
        try:
            cmd, self._cmd_sock = self._cmd_sock, None
        finally:
            if locked:
                self._cmd_lock.release()
        if cmd is not None:
            try:
                cmd.shutdown(socket.SHUT_RDWR)  # wakes a caller still blocked on it
            except OSError:
                pass
        return upd, cmd

    def wait_stopped(self, timeout: float | None = None) -> bool:
        if not self._running.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            return False
        self._running.release()
        return True

    # -- views -----------------------------------------------------------------------

    def get_parameters(self, names: list[str] | None = None) -> dict[str, Any]:
        with self._lock:
            if names is None:
                return dict(self.parameters)
            return {n: self.parameters[n] for n in names if n in self.parameters}

    def snapshot(self) -> dict[str, Any]:
        """What ``status`` shows of this module."""
        info: dict[str, Any] = {"uid": self.uid, "type": self.type.name, "state": self.state.value,
                                "pid": self.pid, "told": self.told}
        if self.stopped_at is None:
            info["uptime"] = round(time.monotonic() - self.started_mono, 3)
        else:
            info.update(ended_by=self.ended_by, reason=self.stop_reason, returncode=self.returncode,
                        start_failed=self.start_failed, stopped_at=self.stopped_at)
        return info


def stop_all(modules: list[ModuleProcess], reason: str, send_rm: bool = True,
             ended: Callable[[list[ModuleProcess]], None] | None = None) -> None:
    """Stop modules at once, on this thread: their ladders together, rung by rung (see
    :func:`shmooze.system.ladder.stop_ladders`); a module that another caller is stopping is waited for.
    ``ended(group)`` hears each group of modules that ended together, stopped, the last words of their
    output queued to be read on the I/O thread before anything queued after (in one call for the group)."""
    first: list[ModuleProcess] = []
    others: list[ModuleProcess] = []
    for module in modules:
        (first if module._begin_stop(reason) else others).append(module)  # noqa: SLF001 - its own class's
    # A module with a command in flight is sent rm once that command is answered (up to its timeout): its
    # ladder runs on a thread of its own, so that the others' waits do not wait for that answer.
    aside = [m for m in first if m._cmd_lock.locked()] if len(first) > 1 else []  # noqa: SLF001
    threads = [threading.Thread(target=_ladders, args=([m], send_rm, ended), name=f"stop-{m.uid}", daemon=True)
               for m in aside]
    for thread in threads:
        thread.start()
    _ladders([m for m in first if m not in aside], send_rm, ended)
    for thread in threads:
        thread.join()
    for module in others:
        module.wait_stopped()
    if others and ended is not None:
        ended(others)


def _ladders(modules: list[ModuleProcess], send_rm: bool,
             ended: Callable[[list[ModuleProcess]], None] | None) -> None:
    """The ladders of modules this caller began to stop (see :func:`stop_all`)."""
    done: set[int] = set()

    def end(group: list[ModuleProcess]) -> None:
        if not group:
            return
        done.update(id(m) for m in group)
        closers: dict[IOLoop, list[Callable[[], None]]] = {}
        try:
            for module in group:
                closers.setdefault(module.loop, []).append(module._detach())  # noqa: SLF001
        finally:
            for loop, fns in closers.items():  # one wake-up of the I/O thread for the group
                loop.call_soon(functools.partial(_run_each, fns))
            _each(group, ModuleProcess._stopped)  # noqa: SLF001
        if ended is not None:
            ended(group)

    def ladder_ended(group: list[ladder.Stopping]) -> None:
        for stop in group:
            stop.tag.ended_by = stop.rung
        end([stop.tag for stop in group])

    try:
        for module in modules:
            if module.proc is None:
                module.ended_by = ladder.EXITED
        end([m for m in modules if m.proc is None])
        if len(modules) > 1:
            _unwatch_commands([m for m in modules if m.proc is not None])
        ladder.stop_ladders([m._stopping(send_rm) for m in modules if m.proc is not None],  # noqa: SLF001
                            ended=ladder_ended)
    finally:
        end([m for m in modules if id(m) not in done])  # (the ladder failed: they are stopped all the same)


def _unwatch_commands(modules: list[ModuleProcess], wait: float = 1.0) -> None:
    """The I/O thread stops watching these modules' command streams, in one call (waited for, at most
    ``wait``): their answers to ``rm`` are read by their ladders, and the I/O thread is not woken by each."""
    calls: list[threading.Event] = []
    for loop, group in _by_loop(modules).items():
        if not loop.thread.is_alive():
            continue
        unwatched = threading.Event()

        def unwatch(group: list[ModuleProcess] = group, unwatched: threading.Event = unwatched) -> None:
            try:
                for module in group:
                    module._unwatch_command_stream()  # noqa: SLF001
            finally:
                unwatched.set()

        loop.call_soon(unwatch)
        calls.append(unwatched)
    for unwatched in calls:
        unwatched.wait(wait)  # (a busy I/O thread: it notices an answer as before, and leaves it unread)


def _by_loop(modules: list[ModuleProcess]) -> dict[IOLoop, list[ModuleProcess]]:
    groups: dict[IOLoop, list[ModuleProcess]] = {}
    for module in modules:
        groups.setdefault(module.loop, []).append(module)
    return groups


def _each(modules: list[ModuleProcess], step: Callable[[ModuleProcess], None]) -> None:
    """``step`` of every module, even when one fails (the first failure is raised after)."""
    failure: BaseException | None = None
    for module in modules:
        try:
            step(module)
        except BaseException as exc:  # noqa: BLE001 - raised once every module had its step
            failure = failure or exc
    if failure is not None:
        raise failure


def _run_each(fns: list[Callable[[], None]]) -> None:
    """(I/O thread) Each of ``fns``, a failure logged: the others still run."""
    for fn in fns:
        try:
            fn()
        except Exception:
            log.exception("error in I/O callback")


def _unwatch_and_close(loop: IOLoop, socks: tuple[socket.socket | None, ...], exit_fd: int | None = None) -> None:
    """On the I/O thread: stop watching streams, then close them; stop watching ``exit_fd`` (a pidfd,
    closed later)."""
    for sock in socks:
        if sock is not None:
            loop.remove(sock)
            sock.close()
    if exit_fd is not None:
        loop.remove(_FdObject(exit_fd))


class _OutputPipe(protocol.LineBuffer):
    """A module's stdout or stderr on the I/O thread: its unfinished line, and the reader to call."""

    __slots__ = ("module", "pipe", "level")

    def __init__(self, module: ModuleProcess, pipe: Any, level: int):
        super().__init__(module.max_line)
        self.module, self.pipe, self.level = module, pipe, level

    def watch(self) -> None:
        self.module.loop.add_reader(self.pipe, self)

    def __call__(self) -> None:
        self.module.read_output(self.pipe, self, self.level)


class _FdObject:
    """Wraps a raw fd for the selector (equal and hashable by fd)."""

    __slots__ = ("fd",)

    def __init__(self, fd: int):
        self.fd = fd

    def fileno(self) -> int:
        return self.fd


_LINGER_0 = struct.pack("ii", 1, 0)


def _refusals(refused: dict[str, int], form: str = "{}") -> str:
    """``3 connections to its ports (uid 65534: 2, ...)``, put in ``form``; empty when none."""
    if not refused:
        return ""
    total = sum(refused.values())
    kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(refused.items(), key=lambda kv: -kv[1]))
    return form.format(f"{total} connection{'s' if total != 1 else ''} to its ports ({kinds})")


def _runnable(program: str, env: dict[str, str], cwd: str | None) -> bool:
    """Whether ``program`` names an executable (checked before it is run through a launcher)."""
    if os.sep in program:
        return os.access(os.path.join(cwd or "", program), os.X_OK)
    return shutil.which(program, path=env.get("PATH", os.defpath)) is not None
