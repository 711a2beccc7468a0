"""The original framework's service API, run by the new services.

A service written for the original (Tornado) shmooze runs with Python 3 changes only::

    import shmooze.lib.service as service
    import shmooze.settings as settings

    class Volume(service.JSONCommandProcessor, service.Service):
        port = settings.ports["volume"]

        @service.coroutine
        def get_vol(self):
            raise service.Return({"vol": self.vol})

        @service.coroutine
        def louder(self):
            answer = yield service.json_query("localhost", settings.ports["queue"], {"cmd": "queue"})
            ...

        commands = {"get_vol": get_vol, "louder": louder}

    Volume()
    service.ioloop.start()

What runs it: :class:`Service` is a :class:`shmooze.service.Service`, so its port speaks the new
HTTP/JSON (the gateway, ``shmz`` and pages reach it; it checks the service key). Every original
command runs on one thread, the :data:`ioloop`'s, one step at a time as under Tornado: a
coroutine's generator is driven to its end there, and what it yields (a :class:`Future`, a list or
dict of them, ``json_query``, ``Lock.acquire()``, ``sleep``) is waited for without holding the
loop, which runs other commands meanwhile. ``json_query`` posts to another service's own port with
the application's service key (see :meth:`shmooze.client.ServiceClient.on_port`), on a thread of
its own, and hands back the whole answer as the original did.

The loop runs on a thread of its own, and each service is made on it (:class:`MadeOnTheLoop`): what
its ``__init__`` makes (a SQLite connection) is used on the thread that made it, as under Tornado.
Started as a program (``python -m app.service``, as the original's supervisord.conf did),
``ioloop.start()`` serves every :class:`Service` made so far on its ``port`` and returns once
``ioloop.stop()`` is called (from a signal handler, say). Named in the settings' ``services``
(``"volume": "app.service:Volume"``, or the instance ``app.service:vol``), the module is imported
by ``shmooze serve``, which serves and stops it: ``ioloop.start()`` at its top level then returns at
once, and puts back the signal handlers the module replaced.
"""

from __future__ import annotations

import collections
import concurrent.futures
import datetime
import functools
import heapq
import inspect
import itertools
import logging
import os
import select
import signal
import subprocess
import threading
import time
import types
from typing import Any, Callable

from shmooze import protocol, servicekey
from shmooze import settings as shmooze_settings
from shmooze.client import ServiceClient
from shmooze.commands import CommandSpec, declared, describe, spec_of
from shmooze.errors import SettingsError
from shmooze.errors import Timeout as ClientTimeout
from shmooze.lib import packet
from shmooze.service import Service as NewService

log = logging.getLogger(__name__)

Future = concurrent.futures.Future

__all__ = ["Future", "Return", "TimeoutError", "coroutine", "json_query", "Lock", "Event", "with_timeout", "sleep", "moment",
           "maybe_future", "wait", "IOLoop", "ioloop", "Service", "JSONCommandProcessor"]

#: The built-in commands of every new service that an original service answers too (unless its
#: ``commands`` table has one of these names: then the table's wins).
BUILT_INS = ("status", "changes", "metrics", "commands")


#: Signals whose handlers an imported original module may replace at its top level (its shutdown
#: handler), as they were when this module was first imported: ``ioloop.start()`` under ``shmooze
#: serve`` puts them back, since there the framework stops the service.
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
_signals_before = {sig: signal.getsignal(sig) for sig in HANDLED_SIGNALS}


def restore_signal_handlers() -> list[str]:
    """Put back the handlers an original module replaced (on the main thread only); their names."""
    if threading.current_thread() is not threading.main_thread():
        return []
    restored = []
    for sig, before in _signals_before.items():
        if before is not None and signal.getsignal(sig) is not before:
            signal.signal(sig, before)
            restored.append(signal.Signals(sig).name)
    return restored


class Return(Exception):
    """``raise Return(value)`` ends a coroutine with ``value`` (Tornado's ``gen.Return``)."""

    def __init__(self, value: Any = None):
        super().__init__(value)
        self.value = value


class TimeoutError(Exception):  # the original's name (tornado.gen.TimeoutError)
    """A :func:`with_timeout` or :func:`json_query` that took longer than its time."""


# -- the loop ------------------------------------------------------------------------------------

class IOLoop:
    """Tornado's IOLoop as original services use it: callbacks and timeouts run one at a time on the
    thread that runs :meth:`start`."""

    def __init__(self) -> None:
        self._callbacks: collections.deque[Callable[[], Any]] = collections.deque()
        self._timers: list[tuple[float, int, Callable[[], Any]]] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()  # the timers (the deque needs none: append and popleft are atomic)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stopping = False
        self._thread: threading.Thread | None = None  # the loop's own thread (services named in settings)
        self.running_on: int | None = None  # the ident of the thread running the loop

    # -- what original code calls ---------------------------------------------------------------

    @staticmethod
    def instance() -> IOLoop:
        return ioloop

    def time(self) -> float:
        return time.time()

    def add_callback(self, callback: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run ``callback`` on the loop's thread soon (safe from any thread)."""
        self._callbacks.append(functools.partial(callback, *args, **kwargs))
        self._wake()

    #: From a signal handler: appending to a deque and writing a byte to a pipe take no lock.
    add_callback_from_signal = add_callback
    spawn_callback = add_callback

    def add_timeout(self, deadline: float | datetime.timedelta, callback: Callable[..., Any], *args: Any,
                    **kwargs: Any) -> tuple[float, int, Callable[[], Any]]:
        """Run ``callback`` at ``deadline`` (a :meth:`time`) or after a ``timedelta``."""
        if isinstance(deadline, datetime.timedelta):
            delay = deadline.total_seconds()
        else:
            delay = deadline - self.time()
        return self.call_later(delay, callback, *args, **kwargs)

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any,
                   **kwargs: Any) -> tuple[float, int, Callable[[], Any]]:
        timer: tuple[float, int, Callable[[], Any]] = (time.monotonic() + max(0.0, delay), next(self._seq),
                                                       functools.partial(callback, *args, **kwargs))
        with self._lock:
            heapq.heappush(self._timers, timer)
        self._wake()
        return timer

    def remove_timeout(self, timer: tuple[float, int, Callable[[], Any]]) -> None:
        with self._lock:
            if timer in self._timers:
                self._timers.remove(timer)
                heapq.heapify(self._timers)

    def add_future(self, future: Future, callback: Callable[[Future], Any]) -> None:
        """Call ``callback(future)`` on the loop once ``future`` is done."""
        future.add_done_callback(lambda done: self.add_callback(callback, done))

    def start(self) -> None:
        """Run the loop here until :meth:`stop`. Called by a program's own code (``python -m app.service``),
        it first serves every :class:`Service` made so far on its port; called while ``shmooze serve``
        imports the module (a service named in ``services``) it returns at once: the framework serves it."""
        caller = inspect.currentframe()
        caller = caller.f_back if caller is not None else None
        if caller is None or caller.f_globals.get("__name__") != "__main__":
            restored = restore_signal_handlers()
            log.info("ioloop.start() in an imported module: shmooze serve serves the service and stops it%s",
                     f" (its handlers of {', '.join(restored)} are not used)" if restored else "")
            return
        servers = [ServedPort(s) for s in list(_made)]
        try:
            for server in servers:
                server.start()
            thread = self._thread
            if thread is not None and thread.is_alive():  # (it made the services): wait for its stop
                while thread.is_alive():
                    thread.join(0.5)  # (signal handlers run meanwhile)
            else:
                self.run()
        finally:
            for server in servers:
                server.close()

    def stop(self) -> None:
        """End :meth:`start` (or the loop's thread) after the callback running now."""
        self._stopping = True
        self._wake()

    def close(self, all_fds: bool = False) -> None:
        """Tornado's close: nothing to release here beyond stopping."""
        self.stop()

    # -- what the framework calls ----------------------------------------------------------------

    def run(self) -> None:
        """Run callbacks and timeouts on this thread until :meth:`stop`."""
        self._stopping = False
        self.running_on = threading.get_ident()
        try:
            while not self._stopping:
                self._run_once()
        finally:
            self.running_on = None

    def run_in_thread(self) -> None:
        """Run the loop on a thread of its own (once; a running loop is left as it is)."""
        if self.running_on is not None or (self._thread is not None and self._thread.is_alive()):
            return
        ready = threading.Event()

        def run() -> None:
            self.add_callback(ready.set)
            self.run()

        self._thread = threading.Thread(target=run, name="shmooze-original-ioloop", daemon=True)
        self._thread.start()
        ready.wait(10)

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def run_on_loop(self, make: Callable[[], Any]) -> Future:
        """Call ``make()`` on the loop's thread; the future ends with its result (a future's, once done)."""
        outcome: Future = Future()

        def call() -> None:
            try:
                made = make()
            except Exception as exc:  # noqa: BLE001 - handed to the waiter, which answers it
                outcome.set_exception(exc)
                return
            if isinstance(made, Future):
                chain(made, outcome)
            else:
                outcome.set_result(made)

        self.add_callback(call)
        return outcome

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: the loop wakes anyway

    def _run_once(self) -> None:
        for _ in range(len(self._callbacks)):
            self._call(self._callbacks.popleft())
        now = time.monotonic()
        due = []
        with self._lock:
            while self._timers and self._timers[0][0] <= now:
                due.append(heapq.heappop(self._timers)[2])
            wait = min(self._timers[0][0] - now, 1.0) if self._timers else 1.0
        for callback in due:
            self._call(callback)
        if self._callbacks or self._stopping:
            return
        try:
            readable, _, _ = select.select([self._wake_r], [], [], max(0.0, wait))
        except InterruptedError:
            return
        if readable:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass

    @staticmethod
    def _call(callback: Callable[[], Any]) -> None:
        try:
            callback()
        except Exception:
            log.exception("callback %r raised", callback)


#: The loop every original service shares (``service.ioloop``, as in the original).
ioloop = IOLoop()


# -- futures and coroutines ------------------------------------------------------------------------

def chain(source: Future, target: Future) -> None:
    """When ``source`` is done, end ``target`` the same way."""
    def copy(done: Future) -> None:
        if target.done():
            return
        exc = done.exception()
        if exc is not None:
            target.set_exception(exc)
        else:
            target.set_result(done.result())

    source.add_done_callback(copy)


def done_future(value: Any = None) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


def maybe_future(value: Any) -> Future:
    """``value`` as a future (a future stays itself)."""
    return value if isinstance(value, Future) else done_future(value)


def _gather(awaited: Any) -> Future:
    """What a coroutine yielded, as one future: a future, a list or dict of them (all of them), None."""
    if isinstance(awaited, Future):
        return awaited
    if awaited is None:
        return done_future(None)
    if isinstance(awaited, dict):
        keys = list(awaited)
        values = _gather([awaited[k] for k in keys])
        out: Future = Future()
        values.add_done_callback(lambda f: out.set_exception(f.exception()) if f.exception() is not None
                                 else out.set_result(dict(zip(keys, f.result()))))
        return out
    if isinstance(awaited, (list, tuple)):
        futures = [maybe_future(f) for f in awaited]
        combined: Future = Future()
        if not futures:
            combined.set_result([])
            return combined
        left = [len(futures)]
        lock = threading.Lock()

        def one_done(_: Future) -> None:
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if not last:
                return
            failed = next((f.exception() for f in futures if f.exception() is not None), None)
            if failed is not None:
                combined.set_exception(failed)
            else:
                combined.set_result([f.result() for f in futures])

        for f in futures:
            f.add_done_callback(one_done)
        return combined
    raise TypeError(f"a coroutine yielded {type(awaited).__name__}, not a future (or a list or dict of them)")


class _Runner:
    """Drives one coroutine's generator: each step on the loop's thread, each wait without holding it."""

    def __init__(self, gen: types.GeneratorType, result: Future):
        self.gen, self.result = gen, result

    def step(self, value: Any = None, error: BaseException | None = None) -> None:
        while True:
            try:
                yielded = self.gen.throw(error) if error is not None else self.gen.send(value)
            except Return as ret:
                self.result.set_result(ret.value)
                return
            except StopIteration as stop:
                self.result.set_result(stop.value)
                return
            except Exception as exc:  # noqa: BLE001 - the coroutine's failure is its future's
                self.result.set_exception(exc)
                return
            try:
                waited = _gather(yielded)
            except TypeError as exc:
                value, error = None, exc
                continue
            if not waited.done():
                waited.add_done_callback(lambda done: ioloop.add_callback(self.resume, done))
                return
            value, error = self.outcome(waited)

    def resume(self, done: Future) -> None:
        self.step(*self.outcome(done))

    @staticmethod
    def outcome(done: Future) -> tuple[Any, BaseException | None]:
        exc = done.exception()
        return (None, exc) if exc is not None else (done.result(), None)


def coroutine(func: Callable[..., Any]) -> Callable[..., Future]:
    """Tornado's ``@gen.coroutine``: calling the function returns a :class:`Future` of its result
    (``raise Return(value)``, or ``return value``); ``yield`` in it waits for a future."""
    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Future:
        result: Future = Future()
        try:
            made = func(*args, **kwargs)
        except Return as ret:
            result.set_result(ret.value)
            return result
        except Exception as exc:  # noqa: BLE001 - the coroutine's failure is its future's
            result.set_exception(exc)
            return result
        if isinstance(made, types.GeneratorType):
            _Runner(made, result).step()
        elif isinstance(made, Future):
            chain(made, result)
        else:
            result.set_result(made)
        return result

    return run


engine = coroutine
moment = None  # ``yield service.moment``: a step back to the loop (here: nothing to wait for)


def sleep(seconds: float) -> Future:
    """A future done after ``seconds`` (Tornado's ``gen.sleep``)."""
    future: Future = Future()

    def wake() -> None:
        if not future.done():
            future.set_result(None)

    ioloop.call_later(seconds, wake)
    return future


def with_timeout(timeout: float | datetime.timedelta, future: Any) -> Future:
    """``future``, or :class:`TimeoutError` if it is not done by ``timeout`` (a deadline or a timedelta)."""
    inner = _gather(future)
    if inner.done():
        return inner
    out: Future = Future()
    chain(inner, out)

    def expire() -> None:
        if not out.done():
            out.set_exception(TimeoutError("Timeout"))

    ioloop.add_timeout(timeout, expire)
    return out


_waiters = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="shmooze-original-wait")


def wait(proc: subprocess.Popen) -> Future:
    """A future of a child process's exit status (the original's ``service.wait``)."""
    return _waiters.submit(proc.wait)


class Lock:
    """toro's Lock: ``with (yield lock.acquire()):`` waits for it without holding the loop."""

    def __init__(self) -> None:
        self._held = False
        self._queue: collections.deque[Future] = collections.deque()
        self._guard = threading.Lock()

    def locked(self) -> bool:
        return self._held

    def acquire(self, deadline: Any = None) -> Future:
        future: Future = Future()
        with self._guard:
            if not self._held:
                self._held = True
                future.set_result(_Release(self))
            else:
                self._queue.append(future)
        return future

    def release(self) -> None:
        with self._guard:
            while self._queue:
                waiter = self._queue.popleft()
                if not waiter.done():
                    waiter.set_result(_Release(self))
                    return
            self._held = False


class Event:
    """toro's Event: ``yield event.wait()`` until another command calls ``event.set()``."""

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[Future] = []
        self._guard = threading.Lock()

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        with self._guard:
            self._set = True
            waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    def wait(self, deadline: Any = None) -> Future:
        with self._guard:
            if self._set:
                return done_future(None)
            future: Future = Future()
            self._waiters.append(future)
        return future if deadline is None else with_timeout(deadline, future)


class _Release:
    """What ``Lock.acquire()`` gives: leaving its ``with`` block releases the lock."""

    def __init__(self, lock: Lock):
        self.lock = lock

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        self.lock.release()


# -- json_query: another service, over the new HTTP/JSON ---------------------------------------------

_queries = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="shmooze-json-query")
_clients: dict[tuple[str, float], ServiceClient] = {}
_clients_lock = threading.Lock()


def _service_key() -> bytes | None:
    try:
        return servicekey.load(shmooze_settings.current(), create=False)
    except (SettingsError, OSError):
        return None  # no settings file: the other service takes unsigned requests or refuses them


def _client(addr: str, port: int, timeout: float) -> ServiceClient:
    host = f"[{addr}]" if ":" in addr else addr
    url = f"http://{host}:{port}/"
    with _clients_lock:
        client = _clients.get((url, timeout))
        if client is None:
            client = _clients[(url, timeout)] = ServiceClient(url, url, timeout=timeout, key=_service_key())
        return client


def _query(addr: str, port: int, inp: Any, timeout: float) -> Any:
    try:
        return _client(addr, port, timeout).post(inp, timeout)
    except ClientTimeout as exc:
        raise TimeoutError(str(exc)) from None


def json_query(addr: str, port: int, inp: Any, timeout: float = 2) -> Future:
    """Send ``inp`` (a command or a list of them) to the service on ``addr``:``port`` and give its whole
    answer (``{"success": ..., "result": ...}``), as the original did; ``yield`` it in a coroutine."""
    return _queries.submit(_query, addr, port, inp, float(timeout))


# -- services ------------------------------------------------------------------------------------------

#: Every original service made in this process, in order (what ``ioloop.start()`` serves).
_made: list[Service] = []


class JSONCommandProcessor:
    """Runs the commands of a ``commands`` table (name to coroutine method), as the original did:
    answers ``packet.good(result)`` or ``packet.error(message)``, and logs the commands named in
    ``log_cmds`` to ``logger`` (a :class:`shmooze.lib.database.Database`) under ``log_namespace``."""

    commands: Any = {}
    log_cmds: list[str] = []
    log_uid: Any = None
    log_namespace: str | None = None
    logger: Any = None

    @coroutine
    def command(self, line: Any) -> Any:
        if isinstance(line, list):
            try:
                result = []
                for item in line:
                    single = yield self.single_command(item)
                    result.append(single)
            except Exception:
                log.exception("multi-command processing error")
                result = packet.error("Generic multi-command processing error")
            raise Return(result)
        if isinstance(line, dict):
            try:
                result = yield self.single_command(line)
            except Exception:
                log.exception("command processing error")
                result = packet.error("Generic command processing error")
            raise Return(result)
        raise Return(packet.error("Command must be either dict (single command) or list (multiple commands)"))

    @coroutine
    def single_command(self, line: Any) -> Any:
        if not isinstance(line, dict):
            raise Return(packet.error("Command not a dict."))
        if "cmd" not in line:
            raise Return(packet.error("No command given."))
        cmd, args = line["cmd"], line.get("args", {})
        if not isinstance(args, dict):
            raise Return(packet.error("Argument list not a dict."))
        handler = self.commands.get(cmd) if isinstance(cmd, str) else None
        if handler is None:
            raise Return(packet.error("Bad command."))
        try:
            result = yield maybe_future(handler(self, **args))
            result = packet.good(result)
        except Exception as exc:
            log.warning("command %s failed", cmd, exc_info=True)
            result = packet.error(str(exc))
        if cmd in self.log_cmds and self.logger:
            self.logger.log(self.log_uid, self.log_namespace, line, result)
        raise Return(result)


class MadeOnTheLoop(type):
    """Makes each original service on the loop's thread, where its commands run (started if need be): what
    its ``__init__`` makes (a SQLite connection) is used on the thread that made it, as under Tornado."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if ioloop.running_on == threading.get_ident():
            return type.__call__(cls, *args, **kwargs)
        ioloop.run_in_thread()
        return ioloop.run_on_loop(lambda: type.__call__(cls, *args, **kwargs)).result()


class Service(NewService, metaclass=MadeOnTheLoop):
    """An original service: listens on its ``port`` (a class attribute, or the argument) with the new
    HTTP/JSON. Its commands are its ``command(line)`` coroutine's (a :class:`JSONCommandProcessor`'s
    ``commands`` table); ``status``, ``changes``, ``metrics`` and ``commands`` are the new services' own."""

    port: int = 0
    #: Seconds a request waits for an original command's answer.
    command_timeout = 60.0

    def __init__(self, port: int | None = None):
        if port is not None:
            self.port = port
        super().__init__()
        self.listen(self.port)

    def listen(self, port: int) -> None:
        """Note the service for ``ioloop.start()`` (a program) or ``shmooze serve`` (a service named in the
        settings), which bind its port."""
        self.port = port
        _made.append(self)

    @coroutine
    def command(self, query: Any) -> Any:
        """Override this (or use a :class:`JSONCommandProcessor`): the answer to one request item."""
        raise Return(query)

    # -- run by the new framework -----------------------------------------------------------------

    def _table(self) -> dict[str, Any]:
        table = getattr(type(self), "commands", None)
        return table if isinstance(table, dict) else {}

    def _collect_commands(self) -> dict[str, CommandSpec]:
        """The original table's commands (never quick: they run on the loop) and the built-ins it lacks."""
        table = self._table()
        marks = declared(NewService)
        specs = {name: spec_of(name, getattr(NewService, name).__get__(self), marks[name].read_only, marks[name].quick)
                 for name in BUILT_INS if name not in table}
        for name, handler in table.items():
            specs[name] = spec_of(name, functools.partial(handler, self))
        return specs

    def is_original(self, cmd: str) -> bool:
        """Whether the loop runs ``cmd`` (every name but the built-ins the table lacks)."""
        return cmd in self._table() or cmd not in BUILT_INS

    def _dispatch(self, item: protocol.Item) -> dict[str, Any]:
        if not isinstance(item, protocol.Command) or not self.is_original(item.cmd):
            if isinstance(item, protocol.Command) and item.cmd == "commands":
                table = self._table()
                return protocol.ok({name: describe(spec, table.get(name) or getattr(NewService, name))
                                    for name, spec in sorted(self._commands.items())})
            return super()._dispatch(item)
        line = {"cmd": item.cmd, "args": item.args}
        try:
            answer = ioloop.run_on_loop(lambda: self.command(line)).result(self.command_timeout)
        except concurrent.futures.TimeoutError:
            return protocol.error(f"{item.cmd}: no answer within {self.command_timeout:g} s")
        except Exception as exc:
            log.exception("%s: command %s raised", self.name, item.cmd)
            return packet.error(str(exc))
        return answer if isinstance(answer, dict) else protocol.ok(answer)

    def start(self) -> None:
        """Served by ``shmooze serve``: run the loop on a thread of its own."""
        super().start()
        ioloop.run_in_thread()

    def stop(self) -> None:
        super().stop()
        if self in _made:
            _made.remove(self)


class ServedPort:
    """A service of a program's own (``python -m app.service``) on its port: the new HTTP/JSON with the
    service key, from a threaded server in this process (every command still runs on the loop)."""

    def __init__(self, service: Service):
        from werkzeug.serving import make_server

        from shmooze.access import ServiceGuard
        from shmooze.http.jsonapp import service_app

        try:
            settings = shmooze_settings.current()
        except (SettingsError, OSError):
            settings = shmooze_settings.Settings({"ports": {"service": service.port}})
        name = next((n for n, p in settings.ports.items() if p == service.port), "service")
        if service.name == "service":
            service.name = name
        key = servicekey.load(settings) if settings.path != "<memory>" else None
        guard = ServiceGuard.for_settings(service, settings, name, key)
        address = settings.listen_address(name) if name in settings.ports else "127.0.0.1"
        self.service = service
        self.server = make_server(address, service.port, service_app(service, settings.max_body_bytes,
                                                                     settings.max_answer_bytes, guard),
                                  threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, name=f"shmooze-port-{service.port}",
                                       daemon=True)
        log.info("%s listening on %s:%d", name, address, service.port)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.service.events.close()
        NewService.stop(self.service)
