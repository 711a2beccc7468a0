"""The service base: a class whose declared methods are its commands.

Example::

    class Counter(Service):
        name = "counter"

        def __init__(self):
            super().__init__()
            self.value = 0

        @command
        def increment(self, by: int = 1) -> int:
            self.value += by
            self.changed("counter", value=self.value)
            return self.value

Arguments are the command's ``args`` object, checked against the method's
signature and type hints before the call. Only methods marked with
:func:`~shmooze.commands.command` are commands (see :mod:`shmooze.commands`).
Raise :class:`CommandError` to fail a command with a message; any other
exception fails it too and is logged.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import typing
from typing import Any

from shmooze import __version__, protocol
from shmooze.commands import CommandSpec, command, declared, describe, spec_of
from shmooze.errors import CommandError
from shmooze.events import ChangeLog, epoch_base
from shmooze.system import storage
from shmooze.system.usage import OwnUsage

log = logging.getLogger(__name__)

def only_reads(items: list[protocol.Item], read_only: frozenset[str] | None = None) -> bool:
    """Whether running these items changes nothing (invalid ones are answered without running).

    ``read_only``: the service's read-only commands; by default those every service has."""
    if read_only is None:
        read_only = Service.declared_read_only()
    return all(not isinstance(i, protocol.Command) or i.cmd in read_only for i in items)


def type_matches(value: Any, hint: Any) -> bool:
    """Whether a decoded JSON value fits a type hint (builtins, lists, dicts, Optional, Union, Any)."""
    if hint is Any or hint is object:
        return True
    if hint is None or hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        return any(type_matches(value, h) for h in typing.get_args(hint))
    if origin in (list, tuple, set, frozenset) or hint in (list, tuple):
        if not isinstance(value, list):
            return False
        inner = typing.get_args(hint)
        return not inner or all(type_matches(v, inner[0]) for v in value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            return False
        inner = typing.get_args(hint)
        return len(inner) < 2 or all(type_matches(v, inner[1]) for v in value.values())
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def hint_name(hint: Any) -> str:
    """A hint in words: ``dict[str, list[str]]`` is "an object of lists of strings"."""
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
             list: "a list", dict: "an object", type(None): "null"}
    if hint in names:
        return names[hint]
    origin = typing.get_origin(hint)
    inner = typing.get_args(hint)
    if origin in (list, tuple, set, frozenset):
        return f"a list of {_plural(inner[0])}" if inner else "a list"
    if origin is dict:
        return f"an object of {_plural(inner[1])}" if len(inner) == 2 and inner[1] is not Any else "an object"
    if inner:
        return " or ".join(hint_name(a) for a in inner)
    return getattr(hint, "__name__", str(hint))


def _plural(hint: Any) -> str:
    """ "a list of strings" -> "lists of strings"; "null" stays "null"."""
    words = hint_name(hint).split(" or ")
    out = []
    for word in words:
        article, _, rest = word.partition(" ")
        if article not in ("a", "an") or not rest:
            out.append(word)
            continue
        head, _, tail = rest.partition(" ")
        out.append(head + "s" + (" " + tail if tail else ""))
    return " or ".join(out)


def _first_misfit(value: Any, hint: Any, path: str = "") -> tuple[str, Any, Any]:
    """The path (``['a'][1]``), value and expected hint of the deepest part of ``value`` that breaks
    ``hint``. Of a union (``list[str] | None``), the member of the value's own kind (a list) is followed."""
    origin = typing.get_origin(hint)
    inner = typing.get_args(hint)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        same_kind = [h for h in inner if type_matches(value, typing.get_origin(h) or h)]
        if len(same_kind) == 1:
            found = _first_misfit(value, same_kind[0], path)
            if found[0]:
                return found
    if origin in (list, tuple, set, frozenset) and inner and isinstance(value, list):
        for i, item in enumerate(value):
            if not type_matches(item, inner[0]):
                return _first_misfit(item, inner[0], f"{path}[{i}]")
    if origin is dict and len(inner) == 2 and isinstance(value, dict):
        for key, item in value.items():
            if not type_matches(item, inner[1]):
                return _first_misfit(item, inner[1], f"{path}[{key!r}]")
    return path, value, hint


def mismatch(name: str, value: Any, hint: Any) -> str | None:
    """Why argument ``name`` does not fit its hint, in words; None when it fits. A part that does not fit
    (an element of a list) is named: ``tags[1] is a number, not a string``."""
    if type_matches(value, hint):
        return None
    path, part, wanted = _first_misfit(value, hint)
    if not path:
        return f"argument {name!r} must be {hint_name(hint)}, not {protocol.type_name(part)}"
    return f"argument {name!r} must be {hint_name(hint)}, but {name}{path} is {protocol.type_name(part)}, " \
           f"not {hint_name(wanted)}"


class Service:
    """Base of every shmooze service. Subclasses add commands: methods marked with ``@command``."""

    #: The service's name (used in logs and status).
    name = "service"
    #: True on a subclass: every public method it defines is a command (for quick scripts).
    expose_all = False
    #: The longest a ``changes`` long poll waits, in seconds, whatever it asks.
    max_changes_wait = 60.0

    def __init__(self) -> None:
        self.events = ChangeLog(base=epoch_base())
        self.started_at = time.time()
        self._started_mono = time.monotonic()
        self._own_usage = OwnUsage()
        self._commands = self._collect_commands()
        #: Commands that change nothing: they never wait for a command slot.
        self.read_only_commands = frozenset(n for n, spec in self._commands.items() if spec.read_only)
        #: Commands that answer at once from memory: the worker may run them on its connection loop.
        self.quick_commands = frozenset(n for n, spec in self._commands.items() if spec.quick)
        self._stopped = threading.Event()
        self._command_slots: threading.BoundedSemaphore | None = None
        self._slot_count = 0
        from shmooze.http.metrics import ServiceStats

        self.stats = ServiceStats()  # what the metrics command hands out (shmooze.http.metrics)
        #: Whether what the service keeps (journal, command log) can be written (see shmooze.system.storage).
        self.storage = storage.Health(on_change=lambda problem: self.changed("storage", problem=problem))
        #: With etcd, this process's part in its service's election (a :class:`shmooze.cluster.leadership.Leadership`):
        #: its ``refusal()`` of commands that change state (a standby, no quorum: 503), its ``status()`` and
        #: ``gauges()``. None: the service serves alone.
        self.leadership: Any = None

    @classmethod
    def declared_read_only(cls) -> frozenset[str]:
        """The names of the commands this class declares read-only."""
        return frozenset(name for name, mark in declared(cls).items() if mark.read_only)

    def limit_commands(self, slots: int) -> None:
        """Let at most ``slots`` requests that change state run at once; more are refused at once.

        The serving threads beyond ``slots`` are then always free for reads (``status``,
        ``queue``, ``changes``...), however many slow commands are running.
        """
        self._slot_count = slots
        self._command_slots = threading.BoundedSemaphore(slots) if slots > 0 else None

    # -- life ----------------------------------------------------------------------

    def start(self) -> None:
        """Called once in the serving process before the first request."""

    def stop(self) -> None:
        """Called once when the serving process stops; stop what :meth:`start` started."""
        self._stopped.set()

    # -- built-in commands ---------------------------------------------------------

    @command(quick=True)
    def status(self) -> dict[str, Any]:
        """The service's pid, uptime, version, change version and ``problem``: what keeps it from working
        as it should (a store it cannot write: a full disk), None when nothing does."""
        return {
            "service": self.name,
            "pid": os.getpid(),
            "uptime": round(time.monotonic() - self._started_mono, 3),
            "version": __version__,
            "change_version": self.events.version,
            "epoch": self.events.base,
            "problem": self.storage.problem(),
            **self._own_usage.figures(),  # the worker's CPU and memory (a host adds its modules')
            **(self.leadership.status() if self.leadership is not None else {}),  # role: LEADER or STANDBY
        }

    @command(read_only=True)
    def changes(self, since: int = 0, timeout: float = 0.0, stream: bool = False) -> dict[str, Any]:
        """Change events after version ``since``, waiting up to ``timeout`` seconds (at most 60). With
        ``stream`` on a gunicorn worker, the answer is instead a kept stream of them, one line of JSON per
        batch (:mod:`shmooze.http.changestream`); elsewhere ``stream`` changes nothing."""
        return self.events.since(since, min(max(timeout, 0.0), self.max_changes_wait))

    @command(quick=True)
    def commands(self) -> dict[str, Any]:
        """Each command's arguments (name, type, whether required, default), description and
        whether it only reads (then the gateway serves it without the access token)."""
        return {name: describe(spec, getattr(self, name)) for name, spec in sorted(self._commands.items())}

    @command(read_only=True)
    def metrics(self) -> list:
        """This service's figures for the gateway's Prometheus endpoint (see :mod:`shmooze.http.metrics`)."""
        return self.stats.export(self.name, self._gauges())

    def _gauges(self) -> list:
        return [("shmooze_change_events", "Change events the service published", "counter", {},
                 float(self.events.version)), *self.storage.gauges(),
                *(self.leadership.gauges() if self.leadership is not None else [])]


    # -- helpers for subclasses ----------------------------------------------------

    def changed(self, kind: str, **details: Any) -> int:
        """Publish a change event (see :mod:`shmooze.events`)."""
        return self.events.publish(kind, service=self.name, **details)

    def changed_each(self, kind: str, each: list[dict[str, Any]]) -> int:
        """Publish one change event of ``kind`` per item of ``each`` (its details), all at once."""
        return self.events.publish_each(kind, [{"service": self.name, **details} for details in each])

    # -- dispatch ------------------------------------------------------------------

    def _collect_commands(self) -> dict[str, CommandSpec]:
        return {name: spec_of(name, getattr(self, name), mark.read_only, mark.quick)
                for name, mark in declared(type(self)).items()}

    def is_quick(self, request: protocol.Request) -> bool:
        """Whether every item of the request answers at once: a quick command, an unknown command or an
        invalid item (both answered with an error)."""
        quick, known = self.quick_commands, self._commands
        return all(not isinstance(i, protocol.Command) or i.cmd in quick or i.cmd not in known
                   for i in request.items)

    def dispatch(self, item: protocol.Item) -> dict[str, Any]:
        """Run one parsed command and return its answer object; never raises. Each is counted and timed."""
        started = time.monotonic()
        answer = self._dispatch(item)
        name = getattr(item, "cmd", "(invalid)")
        self.stats.command(name, name in self._commands, answer.get("success") is True, time.monotonic() - started)
        return answer

    def _dispatch(self, item: protocol.Item) -> dict[str, Any]:
        if isinstance(item, protocol.Invalid):
            return protocol.error(item.error)
        spec = self._commands.get(item.cmd)
        if spec is None:
            return protocol.error(f"unknown command {protocol.short(item.cmd, 60)} for {self.name} "
                                  f"(commands: {', '.join(sorted(self._commands))})")
        problem = self._check_args(spec, item.args)
        if problem:
            return protocol.error(f"{spec.name}: {problem}")
        refusal = None if spec.read_only else self.storage.refusal
        if refusal is not None:  # the change could not be kept: no success answer (fail closed)
            return protocol.error(f"{spec.name} {refusal}")
        try:
            result = getattr(self, spec.name)(**item.args)
        except CommandError as exc:
            return protocol.error(str(exc) or f"{spec.name} failed")
        except Exception as exc:  # a bug in the command: the service keeps serving
            log.exception("%s: command %s raised", self.name, spec.name)
            return protocol.error(f"{spec.name} failed: {type(exc).__name__}: {exc}")
        return protocol.ok(result)

    def handle(self, request: protocol.Request) -> list[dict[str, Any]]:
        """Answer every item of a parsed request, in order."""
        slots = self._command_slots
        reads = only_reads(request.items, self.read_only_commands)
        if self.leadership is not None and not reads:
            refusal = self.leadership.refusal()
            if refusal is not None:  # a standby, or no quorum: the whole request, before anything runs
                from shmooze.http.jsonapp import JSONHTTPError

                raise JSONHTTPError(503, refusal)
        if slots is None or reads:
            return [self.dispatch(item) for item in request.items]
        if not slots.acquire(blocking=False):
            busy = protocol.error(f"{self.name} is busy: {self._slot_count} commands are running; "
                                  "try again in a moment")
            return [busy for _ in request.items]
        try:
            return [self.dispatch(item) for item in request.items]
        finally:
            slots.release()

    @staticmethod
    def _check_args(spec: CommandSpec, args: dict[str, Any]) -> str | None:
        if not spec.takes_any:
            unknown = [a for a in args if a not in spec.params]
            if unknown:
                takes = ", ".join(spec.params) or "no arguments"
                return f"unknown argument {unknown[0]!r} (takes: {takes})"
        missing = [n for n in spec.required if n not in args]
        if missing:
            return f"missing argument {missing[0]!r}"
        for name, value in args.items():
            hint = spec.hints.get(name)
            problem = None if hint is None else mismatch(name, value, hint)
            if problem:
                return problem
        return None
