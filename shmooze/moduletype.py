"""Module types: what a queue or pool may start, and the times of its stop ladder."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any


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

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError("a module type needs a name")
        argv = tuple(str(a) for a in self.argv)
        if not argv:
            raise ValueError(f"module type {self.name!r} needs a command line")
        object.__setattr__(self, "argv", argv)

    def command_line(self) -> list[str]:
        argv = list(self.argv)
        if argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        return argv

    def environment(self, extra: dict[str, str]) -> dict[str, str]:
        return {**os.environ, **self.env, **extra}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description}


def python_module(name: str, path: str, *args: str, **options: Any) -> ModuleType:
    """A module type that runs a Python file with the service's interpreter."""
    return ModuleType(name, (sys.executable, path, *args), **options)
