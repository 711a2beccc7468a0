"""Module types: what a queue or pool may start, and the times of its stop ladder."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field, replace
from typing import Any, Iterable


@dataclass(frozen=True)
class ModuleType:
    """A kind of module: a name and the command line that starts one.

    The service appends ``HOST CMD_PORT UPDATE_PORT`` to ``argv``. ``python3`` or
    ``python`` as the first word is replaced by the interpreter running the
    service, so modules start with the same environment (and skip PATH shims).

    Times, in seconds: ``connect_timeout`` for the module to connect both streams,
    ``command_timeout`` for each answer on the command stream (``init_timeout`` for
    ``init``), then the stop ladder: ``rm_timeout`` to exit after ``rm`` and closed
    streams, ``term_timeout`` to exit after SIGTERM, before SIGKILL.

    ``restore=False``: after a restart of its service, a module of this type is not
    started again (a countdown, say). ``log_updates=True``: its parameter updates go
    to the command log (by default they do not).
    Operations (see :mod:`shmooze.restart` and :mod:`shmooze.system.limits`): ``restart`` is ``"never"``,
    ``"on-failure"`` or ``"always"``, with backoff from ``restart_delay`` to ``restart_max_delay``
    seconds, giving up after ``restart_max_starts`` starts within ``restart_window`` seconds;
    ``limit_memory`` (bytes), ``limit_cpu`` (seconds of CPU time), ``limit_cpu_rate`` (CPUs: 0.5 is half
    of one core), ``limit_files`` and ``limit_processes`` bound what one module may use. Settings
    override these per type name (``module_types``: :func:`with_settings`).
    ``place``: the address, among its service's candidate hosts (``hosts``), of the one host where
    modules of this type may run (the speaker in one room); on any other host they are kept stopped.
    """

    name: str
    argv: tuple[str, ...]
    connect_timeout: float = 2.0
    command_timeout: float = 1.0
    init_timeout: float | None = None
    rm_timeout: float = 3.0
    term_timeout: float = 5.0
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    description: str = ""
    restore: bool = True
    log_updates: bool = False
    restart: str = "never"
    restart_delay: float = 1.0
    restart_max_delay: float = 60.0
    restart_max_starts: int = 5
    restart_window: float = 60.0
    limit_memory: int | None = None
    limit_cpu: float | None = None
    limit_files: int | None = None
    limit_processes: int | None = None
    limit_cpu_rate: float | None = None
    place: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError("a module type needs a name")
        argv = tuple(str(a) for a in self.argv)
        if not argv:
            raise ValueError(f"module type {self.name!r} needs a command line")
        object.__setattr__(self, "argv", argv)
        from shmooze.restart import Policy

        Policy.of(self)  # a bad restart setting is an error here, not when the module ends

    def command_line(self) -> list[str]:
        argv = list(self.argv)
        if argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        return argv

    def environment(self, extra: dict[str, str]) -> dict[str, str]:
        return {**os.environ, **self.env, **extra}

    def describe(self) -> dict[str, Any]:
        """What ``modules_available`` answers for this type when asked with ``describe``."""
        return {"name": self.name, "description": self.description}


def python_module(name: str, path: str, *args: str, **options: Any) -> ModuleType:
    """A module type that runs a Python file with the service's interpreter."""
    return ModuleType(name, (sys.executable, path, *args), **options)


def as_module_type(value: Any) -> ModuleType:
    """A module type, or the original's module class (``TYPE_STRING`` and ``process``) as one."""
    if isinstance(value, ModuleType):
        return value
    name, argv = getattr(value, "TYPE_STRING", None), getattr(value, "process", None)
    if isinstance(name, str) and isinstance(argv, (list, tuple)):
        return ModuleType(name, tuple(argv))
    raise TypeError(f"{value!r} is not a module type (a ModuleType, or a class with TYPE_STRING and process)")


def by_name(types: Iterable[Any], kind: str) -> dict[str, ModuleType]:
    """A service's table of types, by name (``kind`` names them in the error of two with one name); the
    original's module classes are taken too (:func:`as_module_type`)."""
    table: dict[str, ModuleType] = {}
    for t in map(as_module_type, types):
        if t.name in table:
            raise ValueError(f"two {kind} types named {t.name!r}")
        table[t.name] = t
    return table


def available(types: dict[str, ModuleType], describe: bool) -> list:
    """``modules_available`` / ``backgrounds_available``: names, or with ``describe`` each type's description."""
    return [types[name].describe() if describe else name for name in sorted(types)]


#: What ``module_types`` in the settings may set on a module type, with the kind of value.
SETTABLE: dict[str, str] = {
    "restart": "text", "restart_delay": "seconds", "restart_max_delay": "seconds",
    "restart_max_starts": "count", "restart_window": "seconds",
    "limit_memory": "bytes", "limit_cpu": "seconds", "limit_cpu_rate": "cpus", "limit_files": "count",
    "limit_processes": "count", "place": "text",
}
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_bytes(value: Any) -> int:
    """A size: a whole number of bytes, or text such as ``"512M"``, ``"1.5G"``, ``"64KiB"`` (powers of 1024)."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        return value
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(value), re.IGNORECASE)
    if not found:
        raise ValueError(f"not a size: {value!r} (a number of bytes, or e.g. \"512M\", \"2G\")")
    return int(float(found.group(1)) * _UNITS[found.group(2).lower()])


def _setting(key: str, value: Any) -> Any:
    kind = SETTABLE[key]
    if value is None:
        return None
    if kind == "text":
        if not isinstance(value, str):
            raise ValueError(f"{key} must be text, not {value!r}")
        return value
    if kind == "bytes":
        size = parse_bytes(value)
        if size <= 0:
            raise ValueError(f"{key} must be positive, not {value!r}")
        return size
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a number, not {value!r}")
    if kind == "count":
        if value != int(value) or value < 1:
            raise ValueError(f"{key} must be a whole number of at least 1, not {value!r}")
        return int(value)
    least = "at least 0" if key == "restart_delay" else "positive"
    if value < 0 or (value == 0 and key != "restart_delay"):
        raise ValueError(f"{key} must be {least}, not {value!r}")
    return float(value)


def with_settings(mtype: ModuleType, options: Any) -> ModuleType:
    """``mtype`` with the restart policy and limits that the settings give it (an entry of ``module_types``:
    ``{"restart": "on-failure", "limit_memory": "512M", ...}``); ``ValueError`` says what is wrong."""
    if not isinstance(options, dict):
        raise ValueError(f"module_types[{mtype.name!r}] must be an object of settings, not {options!r}")
    unknown = sorted(set(options) - set(SETTABLE))
    if unknown:
        raise ValueError(f"module_types[{mtype.name!r}]: unknown setting(s) {', '.join(unknown)} "
                         f"(settable: {', '.join(SETTABLE)})")
    try:
        changes = {key: _setting(key, value) for key, value in options.items()}
        return replace(mtype, **changes)  # (checked again: a bad restart policy fails here)
    except ValueError as exc:
        raise ValueError(f"module_types[{mtype.name!r}]: {exc}") from None
