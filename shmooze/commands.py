"""Declared commands: which methods of a service clients may call, and what each one is.

A method becomes a wire command only when it is marked::

    class Volume(Service):
        @command(read_only=True)
        def get_volume(self) -> dict:
            "The level and whether it is muted."

        @command
        def set_volume(self, level: int) -> dict:
            "Set the level (0 to 100)."

        def apply_to_hardware(self) -> None:   # a helper: not a command
            ...

``read_only=True`` says the command changes nothing: it never waits for a command
slot, the gateway serves it without the access token, and may send it again after
a failure. ``quick=True`` (which implies read-only) says more: it answers from memory
at once and never waits (no I/O, no lock held for long), so the service's worker may
run it on its connection loop instead of handing it to a thread (see
:mod:`shmooze.http.loopworker`). A command that may wait, such as ``changes`` with a
timeout, must not be quick: while it runs, no other connection is served. A subclass that overrides a command
keeps it a command (with the
flags of the nearest declaration unless it declares again).

For a quick script, ``expose_all = True`` on a service class makes every public
method that class (and its subclasses) defines a command, none of them read-only.
"""

from __future__ import annotations

import inspect
import json
import re
import typing
from dataclasses import dataclass
from typing import Any, Callable, TypeVar, overload

F = TypeVar("F", bound=Callable[..., Any])

#: The attribute the decorator sets on a method: its :class:`Declaration`.
MARK = "__shmooze_command__"


@dataclass(frozen=True)
class Declaration:
    """What ``@command`` says of a method."""

    read_only: bool = False
    #: Answers at once from memory: may run on the worker's connection loop (implies read_only).
    quick: bool = False


@overload
def command(func: F) -> F: ...
@overload
def command(*, read_only: bool = False, quick: bool = False) -> Callable[[F], F]: ...
def command(func: Any = None, *, read_only: bool = False, quick: bool = False) -> Any:
    """Mark a service method as a command: ``@command``, ``@command(read_only=True)`` or
    ``@command(quick=True)`` (read-only and never waits)."""
    def mark(method: F) -> F:
        setattr(method, MARK, Declaration(read_only or quick, quick))
        return method

    return mark(func) if func is not None else mark


@dataclass
class CommandSpec:
    """What the dispatcher knows of one command method."""

    name: str
    params: dict[str, inspect.Parameter]
    required: list[str]
    hints: dict[str, Any]
    takes_any: bool  # has **kwargs
    read_only: bool = False
    quick: bool = False


def spec_of(name: str, func: Callable[..., Any], read_only: bool = False, quick: bool = False) -> CommandSpec:
    """The spec of one command from its signature and type hints."""
    sig = inspect.signature(func)
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # noqa: BLE001 - annotations are arbitrary code; unresolvable ones check nothing
        hints = {}
    params = {
        p.name: p
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    required = [n for n, p in params.items() if p.default is p.empty]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    return CommandSpec(name, params, required, {k: v for k, v in hints.items() if k in params}, takes_any,
                       read_only or quick, quick)


def declared(cls: type) -> dict[str, Declaration]:
    """The commands a class declares (itself or its bases), by name.

    A name is a command when some class in the MRO marks it, or when a class with ``expose_all``
    true defines it publicly (unless it overrides a method a base defines as no command, such as
    ``start`` or ``stop``). The nearest marked definition gives the flags.
    """
    found: dict[str, Declaration] = {}
    plain: set[str] = set()  # methods bases define as no command
    for klass in reversed(cls.__mro__):  # the base first: subclasses override
        exposed = bool(getattr(klass, "expose_all", False))
        for attr, member in klass.__dict__.items():
            if not inspect.isfunction(member):
                continue
            mark = getattr(member, MARK, None)
            if isinstance(mark, Declaration):
                found[attr] = mark
            elif exposed and not attr.startswith("_") and attr not in plain and attr not in found:
                found[attr] = Declaration()
            elif attr not in found:
                plain.add(attr)
    return found


def type_label(hint: Any) -> str:
    """A type hint as it reads in Python source: ``int``, ``list[str]``, ``int | None``."""
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("NoneType", "None")


def _json_value(value: Any) -> Any:
    """A default value as JSON, or its repr when it has no JSON form."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def describe(spec: CommandSpec, method: Callable[..., Any]) -> dict[str, Any]:
    """What ``commands`` tells of one command: args (name, type, required, default), doc, read_only."""
    args = []
    for name, param in spec.params.items():
        arg: dict[str, Any] = {"name": name, "type": type_label(spec.hints[name]) if name in spec.hints else None,
                               "required": name in spec.required}
        if param.default is not param.empty:
            arg["default"] = _json_value(param.default)
        args.append(arg)
    out: dict[str, Any] = {"args": args, "doc": inspect.getdoc(method) or "", "read_only": spec.read_only}
    if spec.takes_any:
        out["more_args"] = True
    return out


#: reST roles (``:class:`~a.b.C```, ``:mod:`a.b```) and inline markup (````x````, ```x```, ``**x**``).
_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`~?([^`]*?)`")
_INLINE = re.compile(r"``(.+?)``|`([^`]+?)`|\*\*(.+?)\*\*")
#: The end of a sentence: a stop and a space before a capital or an opening bracket (not "e.g. a").
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")


def plain(text: str) -> str:
    """reST markup made plain: ``:class:`~a.b.C``` -> ``C``, ````x```` -> ``x``."""
    text = _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1] if m.group(0).find("`~") >= 0 else m.group(1), text)
    return _INLINE.sub(lambda m: next(g for g in m.groups() if g is not None), text)


def summary(doc: str) -> str:
    """The first sentence of a docstring, whole (it may run over lines), in plain text."""
    paragraph = " ".join(doc.strip().split("\n\n", 1)[0].split())
    return plain(_SENTENCE_END.split(paragraph, maxsplit=1)[0])
