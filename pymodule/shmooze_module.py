"""Helper for writing shmooze modules in Python (standard library only).

A shmooze service starts a module as ``argv + [HOST, CMD_PORT, UPDATE_PORT]``.
The module connects two TCP streams to the service, both carrying
newline-delimited JSON objects:

* the *command* stream: the service sends ``{"cmd": NAME, "args": {...}}``
  and the module answers ``{"success": true, "result": R}`` or
  ``{"success": false, "error": "message"}``, one command at a time;
* the *update* stream: the module sends ``set_parameters``,
  ``unset_parameters`` and ``rm``; the service answers every line, and this
  helper reads and discards those answers so that writes never block on them.

Two layers are provided:

* the original (Python 2 era) API: :class:`ParentConnection` and
  :class:`JSONParentPoller` with a ``commands`` dict of
  ``name -> function(self, **args)``, ``self.connection`` with ``recv_cmd``,
  ``send_resp``, ``send_update`` and ``recv_update_resp``, and the answer
  helpers ``good``, ``error`` and ``assert_success`` (``shmooze.lib.packet``).
  As in the original, ``handle_one_command()`` returns after ``rm`` (the
  streams are closed then) and the module ends when its own code ends;
* a friendlier :class:`Module` base class with ``on_init``/``on_play``/
  ``on_suspend``/``on_rm`` hooks, ``do_<name>`` or :func:`command` custom
  commands, timers (:meth:`JSONParentPoller.tick`) and ``MyModule.main()``.

Import time matters (module start-up is benchmarked), so only cheap modules
are imported at load time; ``logging`` is imported lazily when first needed.
"""

from __future__ import annotations

import _thread
import select
import socket
import sys
import time

__all__ = [
    "MAX_LINE_LENGTH",
    "ProtocolError",
    "LineTooLongError",
    "CommandStreamClosed",
    "good",
    "error",
    "assert_success",
    "packet",
    "ParentConnection",
    "JSONParentPoller",
    "Module",
    "command",
    "parse_argv",
]

__version__ = "1.0"

#: Longest accepted incoming line (bytes, newline excluded).
MAX_LINE_LENGTH = 1024 * 1024

#: Commands that a poller answers successfully even without a handler.
DEFAULT_COMMANDS = ("init", "play", "suspend", "rm")

_READ_CHUNK = 65536
_logger = None


def _log():
    """Return this module's logger, importing ``logging`` only on first use."""
    global _logger
    if _logger is None:
        import logging

        _logger = logging.getLogger("shmooze_module")
    return _logger


def _json_codec():
    """JSON for protocol lines, built on CPython's C accelerator ``_json`` when there is one.

    ``import json`` also imports ``re`` and ``enum``: about 4 ms of every module's start-up,
    which is most of what this helper costs. The C scanner and encoder need neither. Elsewhere
    (or if the accelerator's interface differs) the standard ``json`` module is used.
    """
    try:
        import _json

        class _Context:  # the attributes the C scanner reads
            strict = True
            object_hook = None
            object_pairs_hook = None
            parse_float = float
            parse_int = int
            memo = {}

            @staticmethod
            def parse_constant(name):
                raise ValueError(name + " is not valid JSON")

        scan = _json.make_scanner(_Context())

        def default(obj):
            raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")

        encode = _json.make_encoder(None, default, _json.encode_basestring_ascii, None, ":", ",",
                                    False, False, False)

        def loads(text):
            text = text.strip()
            try:
                value, end = scan(text, 0)
            except StopIteration:
                raise ValueError("not JSON") from None
            if end != len(text):
                raise ValueError("extra data after the JSON value")
            return value

        def dumps(obj):
            return "".join(encode(obj, 0))

        if loads(dumps({"a": [1, 2.5, "\u00e9", None, True]})) != {"a": [1, 2.5, "\u00e9", None, True]}:
            raise ValueError("the C accelerator did not round-trip")
        return loads, dumps
    except (ImportError, AttributeError, TypeError, ValueError):
        import json

        return json.loads, lambda obj: json.dumps(obj, separators=(",", ":"))


_loads, _dumps_text = _json_codec()


def _dumps(obj: object) -> bytes:
    """Encode one protocol line (compact JSON + newline, UTF-8)."""
    return (_dumps_text(obj) + "\n").encode("utf-8")


class ProtocolError(Exception):
    """Raised when the service sends something that breaks the protocol."""


class LineTooLongError(ProtocolError):
    """Raised when an incoming line exceeds :data:`MAX_LINE_LENGTH`."""


class CommandStreamClosed(ConnectionError):
    """The command stream is closed (after ``rm``, or by the service): no command will come.

    A ``ConnectionError``, so ``except socket.error:`` in a module of the original API catches it.
    """


# -- answers, as the original's shmooze.lib.packet built and checked them ------------------

def good(result: object = None) -> dict:
    """A success answer; ``result`` is left out when it is None."""
    if result is None:
        return {"success": True}
    return {"success": True, "result": result}


def error(message: object) -> dict:
    """A failure answer carrying ``message``."""
    return {"success": False, "error": message}


def assert_success(answer: object) -> object:
    """Return an answer's ``result`` (None when it has none); raise if it failed or is malformed."""
    if not isinstance(answer, dict) or not isinstance(answer.get("success"), bool):
        raise ProtocolError(f"malformed answer: {answer!r}")
    if answer["success"]:
        return answer.get("result")
    if "error" not in answer:
        raise ProtocolError(f"failed answer without an error: {answer!r}")
    raise Exception(answer["error"])


class packet:
    """The original's ``shmooze.lib.packet`` without the package: ``from shmooze_module import packet``."""

    good = staticmethod(good)
    error = staticmethod(error)
    assert_success = staticmethod(assert_success)


def parse_argv(argv: list[str] | None = None) -> tuple[list[str], str, int, int]:
    """Split argv into ``(own_args, host, cmd_port, update_port)``.

    The service appends ``HOST CMD_PORT UPDATE_PORT`` to the module's argv;
    ``own_args`` are whatever came before (excluding ``argv[0]``).
    """
    if argv is None:
        argv = sys.argv
    argv = list(argv)
    if len(argv) < 4:
        raise ProtocolError(
            f"expected HOST CMD_PORT UPDATE_PORT as the last three arguments, got {argv[1:]!r}"
        )
    host, cmd_port, update_port = argv[-3:]
    try:
        return argv[1:-3], host, int(cmd_port), int(update_port)
    except ValueError:
        raise ProtocolError(f"ports must be integers, got {cmd_port!r} {update_port!r}") from None


class _Timer:
    """A scheduled callback (one-shot or repeating)."""

    __slots__ = ("when", "interval", "fn", "cancelled")

    def __init__(self, when, interval, fn):
        self.when = when
        self.interval = interval
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        """Stop this timer from firing again."""
        self.cancelled = True


def _exit_now(status: int) -> None:
    """Run atexit handlers, flush the standard streams, and end the process at once."""
    import atexit
    import os

    try:
        atexit._run_exitfuncs()  # noqa: SLF001 - the one way to run them before os._exit
    except Exception:  # noqa: BLE001 - atexit reports a handler's error itself; nothing may keep the module alive
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(status)


class ParentConnection:
    """The two connections to the parent service.

    Connects to ``host``/``cmd_port``/``update_port`` if given, otherwise to
    the last three entries of ``argv`` (default ``sys.argv``).  Arguments that
    came before those three are kept in :attr:`args`.

    ``__init__`` cooperates through ``super()`` (with no arguments), so a
    class may mix it with another base, e.g. ``class M(JSONParentPoller,
    threading.Thread)`` whose ``__init__`` calls ``super().__init__()``.
    """

    max_line_length = MAX_LINE_LENGTH
    #: Bytes of unread update answers kept for :meth:`recv_update_resp` (older ones are dropped).
    max_unread_answers = 65536

    def __init__(self, host: str | None = None, cmd_port: int | str | None = None,
                 update_port: int | str | None = None, argv: list[str] | None = None,
                 connect_timeout: float = 30.0, update_first: bool = False) -> None:
        if host is None or cmd_port is None or update_port is None:
            own, a_host, a_cmd, a_upd = parse_argv(argv)
            host = a_host if host is None else host
            cmd_port = a_cmd if cmd_port is None else cmd_port
            update_port = a_upd if update_port is None else update_port
            self.args = own
        else:
            self.args = []
        self.host = host
        self.cmd_port = int(cmd_port)
        self.update_port = int(update_port)
        self._cmd_buf = []  # partial line already consumed from the socket
        self._cmd_buf_len = 0
        self._update_closed = False
        self._update_warned = False
        self._update_unread = bytearray()  # answers on the update stream nobody has read yet
        # Threads of a module may send updates while another handles commands: one line at a time.
        self._update_lock = _thread.RLock()
        #: True once :meth:`close` ran (after ``rm`` for the original API).
        self.closed = False
        if update_first:
            self.update_socket = self._connect(self.update_port, connect_timeout)
            self.cmd_socket = self._connect(self.cmd_port, connect_timeout)
        else:
            self.cmd_socket = self._connect(self.cmd_port, connect_timeout)
            self.update_socket = self._connect(self.update_port, connect_timeout)
        # The update socket is non-blocking: writes interleave with draining
        # the service's answers so neither side can deadlock on the other.
        self.update_socket.setblocking(False)
        super().__init__()

    @property
    def connection(self) -> ParentConnection:
        """The original API's ``self.connection``: here the poller is its own connection."""
        return self

    def _connect(self, port, timeout):
        """Open one TCP connection to the service."""
        sock = socket.create_connection((self.host, port), timeout=timeout)
        sock.settimeout(None)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        return sock

    # -- command stream -------------------------------------------------

    def fileno(self) -> int:
        """File descriptor of the command socket (for select/poll loops)."""
        return self.cmd_socket.fileno()

    cmd_fileno = fileno

    def update_fileno(self) -> int:
        """File descriptor of the update socket."""
        return self.update_socket.fileno()

    def poll(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None = forever) for command input.

        Returns True when :meth:`read_line` / ``handle_one_command`` would not
        block waiting for the first byte (a line, or EOF, is available).
        Answers on the update stream are drained while waiting.
        """
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        cmd_fd = self.cmd_socket.fileno()
        while True:
            fds = [cmd_fd]
            if not self._update_closed:
                fds.append(self.update_socket.fileno())
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                readable, _, _ = select.select(fds, [], [], remaining)
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                readable = []
            if cmd_fd in readable:
                return True
            if readable:
                self._drain_update()
                continue
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def read_line(self) -> bytes | None:
        """Read one line from the command stream (blocking).

        Returns the line as bytes without its newline, or None at EOF.  Never
        consumes bytes past the first newline, so select() on :meth:`fileno`
        stays accurate.  Raises :class:`LineTooLongError` (after discarding
        the rest of that line) when the line exceeds ``max_line_length``.
        """
        sock = self.cmd_socket
        too_long = False
        while True:
            try:
                chunk = sock.recv(_READ_CHUNK, socket.MSG_PEEK)
            except (ConnectionResetError, BrokenPipeError):
                chunk = b""
            if not chunk:
                self._cmd_buf = []
                self._cmd_buf_len = 0
                if too_long:
                    raise LineTooLongError(
                        f"command line exceeds {self.max_line_length} bytes")
                return None
            nl = chunk.find(b"\n")
            take = len(chunk) if nl < 0 else nl + 1
            data = self._recv_exactly(take)
            if not too_long:
                self._cmd_buf.append(data)
                self._cmd_buf_len += len(data)
                if self._cmd_buf_len - (1 if nl >= 0 else 0) > self.max_line_length:
                    too_long = True
                    self._cmd_buf = []
                    self._cmd_buf_len = 0
            if nl >= 0:
                if too_long:
                    raise LineTooLongError(
                        f"command line exceeds {self.max_line_length} bytes")
                line = b"".join(self._cmd_buf)[:-1]
                self._cmd_buf = []
                self._cmd_buf_len = 0
                if line.endswith(b"\r"):
                    line = line[:-1]
                return line

    def _recv_exactly(self, n):
        """Receive exactly ``n`` bytes already known to be available."""
        parts = []
        while n > 0:
            data = self.cmd_socket.recv(n)
            if not data:
                break
            parts.append(data)
            n -= len(data)
        return b"".join(parts)

    def write_answer(self, answer: dict) -> None:
        """Send one answer object on the command stream."""
        self.cmd_socket.sendall(_dumps(answer))

    send_resp = write_answer  # the original API's name

    def recv_cmd(self) -> dict:
        """The original API: block until a command arrives and return it decoded.

        Raises :class:`CommandStreamClosed` at the end of the stream and
        ``ValueError`` for a line that is not JSON.
        """
        line = None if self.closed else self.read_line()
        if line is None:
            raise CommandStreamClosed("the command stream is closed")
        return _loads(line.decode("utf-8"))

    # -- update stream --------------------------------------------------

    def _drain_update(self) -> None:
        """Read whatever the service sent on the update stream, keeping the latest answers."""
        with self._update_lock:
            self._drain_update_locked()

    def _drain_update_locked(self) -> None:
        unread = self._update_unread
        while not self._update_closed:
            try:
                data = self.update_socket.recv(_READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._update_closed = True
                return
            unread += data
            if len(unread) > self.max_unread_answers:  # nobody reads them: keep whole recent lines
                cut = unread.find(b"\n", len(unread) - self.max_unread_answers)
                del unread[:len(unread) if cut < 0 else cut + 1]

    def recv_update_resp(self) -> object:
        """The original API: wait for the next answer on the update stream and return its result.

        Raises if the answer is a failure, :class:`CommandStreamClosed` if the stream ended.
        """
        unread = self._update_unread
        while True:
            nl = unread.find(b"\n")
            if nl >= 0:
                line = bytes(unread[:nl])
                del unread[:nl + 1]
                return assert_success(_loads(line.decode("utf-8")))
            if self._update_closed:
                raise CommandStreamClosed("the update stream is closed")
            try:  # (briefly: another thread sending an update may read the answer for us)
                select.select([self.update_socket], [], [], 0.1)
            except (OSError, ValueError):  # closed meanwhile
                self._update_closed = True
            self._drain_update()

    def send_update(self, cmd: str | dict, args: dict | None = None) -> bool:
        """Send one update line ``{"cmd": cmd, "args": args}``, or a whole message dict (as the
        original API did: ``send_update({"cmd": "rm"})``).

        Answers from the service are drained while sending, so this only
        blocks while the service is not reading at all.  Returns False (and
        logs a warning) if the update stream is closed.
        """
        if isinstance(cmd, dict):
            msg = cmd
            cmd = msg.get("cmd")
        else:
            msg = {"cmd": cmd}
            if args is not None:
                msg["args"] = args
        data = memoryview(_dumps(msg))
        with self._update_lock:
            return self._send_update_locked(data, cmd)

    def _send_update_locked(self, data, cmd):
        sock = self.update_socket
        while data:
            if self._update_closed:
                break
            self._drain_update_locked()
            try:
                sent = sock.send(data)
                data = data[sent:]
                continue
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._update_closed = True
                break
            try:
                select.select([sock], [sock], [])
            except (OSError, ValueError):
                self._update_closed = True
        if data:
            if not self._update_warned:
                self._update_warned = True
                _log().warning("update stream closed; dropping update %r", cmd)
            return False
        return True

    def set_parameters(self, parameters: dict) -> bool:
        """Merge ``parameters`` (a dict) into the module's parameters."""
        return self.send_update("set_parameters", {"parameters": dict(parameters)})

    def unset_parameters(self, names: list[str] | str) -> bool:
        """Remove the named parameters (a list of names)."""
        if isinstance(names, str):
            names = [names]
        return self.send_update("unset_parameters", {"parameters": list(names)})

    def rm(self) -> bool:
        """Tell the service this module is leaving on its own."""
        return self.send_update("rm")

    # -- lifetime -------------------------------------------------------

    def close(self) -> None:
        """Close both connections (idempotent)."""
        self.closed = True
        _close_quietly(getattr(self, "cmd_socket", None))
        lock = getattr(self, "_update_lock", None)
        if lock is None:
            return
        with lock:  # not while another thread sends an update: its socket's number could be reused
            self._update_closed = True
            self._update_warned = True  # updates after this are dropped on purpose, without a warning
            _close_quietly(getattr(self, "update_socket", None))


def _close_quietly(sock):
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass


class JSONParentPoller(ParentConnection):
    """Command dispatcher in the style of the original shmooze helper.

    Subclasses set ``commands = {"name": function(self, **args), ...}``.
    ``init``, ``play``, ``suspend`` and ``rm`` succeed as no-ops when absent.

    As in the original, :meth:`handle_one_command` returns after answering
    ``rm``; the streams are closed then, and the module's own code runs on to
    its end (the service's stop ladder ends it if it does not). A call after
    that, or once the service closed the stream, raises
    :class:`CommandStreamClosed` (a ``socket.error``); :meth:`serve_forever`
    just returns. The :class:`Module` class instead ends the process at once
    (``exit_on_rm``).
    """

    commands = {}

    #: End the process after answering ``rm`` or at the end of the command stream (the
    #: :class:`Module` class); False keeps the original API's behaviour described above.
    exit_on_rm = False

    def __init__(self, *args: object, **kwargs: object) -> None:
        self._timers = []
        self._exit_requested = False
        #: None, or (for a module started again after its service restarted) what the service
        #: remembered: ``{"uid": ..., "parameters": {...}}``, its last parameters. Set before
        #: the ``init`` handler runs; ``init`` gets the same arguments either way.
        self.restore_info = None
        super().__init__(*args, **kwargs)

    # -- dispatch -------------------------------------------------------

    def find_handler(self, cmd: str) -> object | None:
        """Return a callable taking ``**args`` for ``cmd``, or None."""
        fn = self.commands.get(cmd)
        if fn is None:
            return None
        if getattr(fn, "__self__", None) is not None:
            return fn  # already bound
        return lambda **args: fn(self, **args)

    def dispatch(self, cmd: str, args: dict) -> dict:
        """Run the handler for ``cmd`` and return the answer dict."""
        handler = self.find_handler(cmd)
        if handler is None:
            if cmd in DEFAULT_COMMANDS:
                return {"success": True}
            return {"success": False, "error": f"unknown command: {cmd}"}
        try:
            result = handler(**args)
        except SystemExit:
            raise
        except Exception as e:  # noqa: BLE001 - logged with its traceback (by the lazily made logger)
            _log().exception("command %r failed", cmd)
            msg = str(e)
            return {"success": False,
                    "error": f"{type(e).__name__}: {msg}" if msg else type(e).__name__}
        answer = {"success": True}
        if result is not None:
            answer["result"] = result
        return answer

    def handle_one_command(self) -> bool:
        """Read exactly one command line, dispatch it and write the answer.

        Blocks until a line arrives.  Returns True once a command was
        answered.  After ``rm``, or at the end of the stream, the process exits
        when ``exit_on_rm`` is set; otherwise the streams are closed and this
        returns after ``rm`` and raises :class:`CommandStreamClosed` at the end.
        """
        if self.closed:
            raise CommandStreamClosed("the command stream is closed (after rm)")
        try:
            line = self.read_line()
        except LineTooLongError as e:
            self._answer({"success": False, "error": str(e)})
            return True
        if line is None:
            if self.exit_on_rm:
                self.on_eof()
                return False
            self.close()
            raise CommandStreamClosed("the service closed the command stream")
        cmd = None
        try:
            req = _loads(line.decode("utf-8"))
        except (ValueError, RecursionError) as e:
            answer = {"success": False, "error": f"invalid JSON command: {e}"}
        else:
            if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                answer = {"success": False, "error": "malformed command: missing \"cmd\""}
            else:
                cmd = req["cmd"]
                if cmd == "init" and isinstance(req.get("restored"), dict):
                    self.restore_info = req["restored"]
                args = req.get("args")
                if args is None:
                    args = {}
                if not isinstance(args, dict):
                    answer = {"success": False, "error": "\"args\" must be an object"}
                else:
                    answer = self.dispatch(cmd, args)
        self._answer(answer)
        if cmd == "rm":
            if self.exit_on_rm:
                self.exit(0)
            self.close()  # the original API: the module's own code goes on, to its end
        if self._exit_requested:
            self.exit(0)
        return True

    def _answer(self, answer):
        """Write an answer; a dead service means we exit (or, for the original API, raise)."""
        try:
            self.write_answer(answer)
        except OSError as exc:
            if not self.exit_on_rm:
                self.close()
                raise CommandStreamClosed("the service closed the command stream") from exc
            _log().info("command stream closed while answering; exiting")
            self.exit(0)

    def on_eof(self) -> None:
        """Called when the service closes the command stream; exits."""
        _log().info("command stream closed by service; exiting")
        self.exit(0)

    #: End the process quickly after ``rm`` or the end of the command stream: ``atexit``
    #: handlers run (so logging is flushed) and standard output and error are flushed, then
    #: ``os._exit`` skips the interpreter's teardown (several ms of a module's stop time).
    #: Set to False for a plain ``sys.exit`` (``finally`` blocks around ``main()`` then run too).
    fast_exit = True

    def exit(self, status: int = 0) -> None:
        """Close connections and exit the process with ``status``."""
        self.close()
        if self.fast_exit:
            _exit_now(status)
        sys.exit(status)

    # -- timers ---------------------------------------------------------

    def tick(self, interval: float, fn: object) -> _Timer:
        """Call ``fn()`` every ``interval`` seconds from the serving loop.

        Returns a timer object with a ``cancel()`` method.
        """
        t = _Timer(time.monotonic() + interval, float(interval), fn)
        self._timers.append(t)
        return t

    def call_later(self, delay: float, fn: object) -> _Timer:
        """Call ``fn()`` once after ``delay`` seconds; returns a cancellable timer."""
        t = _Timer(time.monotonic() + delay, None, fn)
        self._timers.append(t)
        return t

    def _next_deadline(self):
        """Earliest pending timer deadline, or None."""
        self._timers = [t for t in self._timers if not t.cancelled]
        if not self._timers:
            return None
        return min(t.when for t in self._timers)

    def run_timers(self) -> None:
        """Fire every timer that is due (exceptions are logged, not raised)."""
        now = time.monotonic()
        for t in list(self._timers):
            if t.cancelled or t.when > now:
                continue
            if t.interval is None:
                t.cancelled = True
            else:
                # Keep a steady cadence but never try to catch up a backlog.
                t.when += t.interval
                if t.when <= now:
                    t.when = now + t.interval
            try:
                t.fn()
            except SystemExit:
                raise
            except Exception:  # noqa: BLE001 - logged with its traceback (by the lazily made logger)
                _log().exception("timer callback %r failed", t.fn)
        if self._exit_requested:
            self.exit(0)

    # -- loops ----------------------------------------------------------

    def run_once(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` for one command, handle it, fire due timers.

        Returns True if a command was handled; False at once when the streams are closed.
        """
        if self._exit_requested:
            self.exit(0)
        if self.closed:
            return False
        deadline = None if timeout is None else time.monotonic() + timeout
        handled = False
        while True:
            wait = deadline
            nxt = self._next_deadline()
            if nxt is not None and (wait is None or nxt < wait):
                wait = nxt
            remaining = None if wait is None else max(0.0, wait - time.monotonic())
            if self.poll(remaining):
                try:
                    self.handle_one_command()
                except CommandStreamClosed:
                    return False
                handled = True
            self.run_timers()
            if handled or (deadline is not None and time.monotonic() >= deadline):
                return handled

    def serve_forever(self) -> None:
        """Handle commands and timers until ``rm`` or the end of the command stream.

        With ``exit_on_rm`` (the :class:`Module` class) the process then exits;
        otherwise this returns, and the module's code after it runs.
        """
        while not self.closed:
            self.run_once(None)

    def run(self) -> None:
        """Alias of :meth:`serve_forever`."""
        self.serve_forever()


def command(name: str | None = None) -> object:
    """Decorator marking a :class:`Module` method as custom command ``name``.

    ``@command`` uses the method name; ``@command("shout")`` handles the
    wire command ``do_shout`` (a leading ``do_`` in ``name`` is optional).
    """
    def mark(fn, cmd_name):
        if not cmd_name.startswith("do_"):
            cmd_name = "do_" + cmd_name
        fn._shmooze_command = cmd_name  # noqa: SLF001 - the decorator's mark on the function, read by Module
        return fn

    if callable(name):
        return mark(name, name.__name__)
    return lambda fn: mark(fn, name or fn.__name__)


class Module(JSONParentPoller):
    """Base class for modules with overridable hooks.

    Override :meth:`on_init`, :meth:`on_play`, :meth:`on_suspend` and
    :meth:`on_rm`; add custom commands as ``do_<name>(self, **args)`` methods
    or with :func:`command`.  Start with ``MyModule.main()``.  After ``rm``
    (or when the service closes the command stream) the process ends at once.
    """

    _command_methods = {}
    exit_on_rm = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        found = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                cmd_name = getattr(value, "_shmooze_command", None)
                if isinstance(cmd_name, str):
                    found[cmd_name] = attr
        cls._command_methods = found

    def __init__(self, *args: object, **kwargs: object) -> None:
        #: Local mirror of the parameters this module has set.
        self.parameters = {}
        super().__init__(*args, **kwargs)

    @classmethod
    def main(cls, argv: list[str] | None = None, **kwargs: object) -> None:
        """Connect using ``argv`` (default ``sys.argv``) and serve forever."""
        cls(argv=argv, **kwargs).serve_forever()

    def find_handler(self, cmd: str) -> object | None:
        """Resolve ``cmd`` to ``commands``, a hook, @command or ``do_*`` method."""
        if cmd in self.commands:
            return JSONParentPoller.find_handler(self, cmd)
        if cmd in DEFAULT_COMMANDS:
            return getattr(self, "on_" + cmd)
        attr = self._command_methods.get(cmd)
        if attr is not None:
            return getattr(self, attr)
        if cmd.startswith("do_") and len(cmd) > 3:
            fn = getattr(self, cmd, None)
            if callable(fn):
                return fn
        return None

    # -- hooks ----------------------------------------------------------

    def on_init(self, **args: object) -> object:
        """Handle ``init`` (args come from the client)."""
        return None

    def on_play(self, **args: object) -> object:
        """Handle ``play``."""
        return None

    def on_suspend(self, **args: object) -> object:
        """Handle ``suspend``."""
        return None

    def on_rm(self, **args: object) -> object:
        """Handle ``rm``; the process exits after the answer is sent."""
        return None

    # -- updates --------------------------------------------------------

    def set_parameters(self, parameters: dict | None = None, **kw: object) -> bool:
        """Merge parameters (dict and/or keyword arguments) and send them."""
        params = dict(parameters or {})
        params.update(kw)
        self.parameters.update(params)
        return ParentConnection.set_parameters(self, params)

    def unset_parameters(self, names: list[str] | str) -> bool:
        """Remove the named parameters."""
        if isinstance(names, str):
            names = [names]
        names = list(names)
        for n in names:
            self.parameters.pop(n, None)
        return ParentConnection.unset_parameters(self, names)

    def rm(self, exit: bool = True) -> bool:
        """Tell the service we are leaving; exit once the current step ends.

        When called from a command handler the answer is still sent first.
        Pass ``exit=False`` to only send the update.
        """
        ok = ParentConnection.rm(self)
        if exit:
            self._exit_requested = True
        return ok


if __name__ == "__main__":  # pragma: no cover - trivial demo module
    Module.main()
