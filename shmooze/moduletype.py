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
    Operations (see :mod:`shmooze.restart` and :mod:`shmooze.limits`): ``restart`` is ``"never"``,
    ``"on-failure"`` or ``"always"``, with backoff from ``restart_delay`` to ``restart_max_delay``
    seconds, giving up after ``restart_max_starts`` starts within ``restart_window`` seconds;
    ``limit_memory`` (bytes), ``limit_cpu`` (seconds of CPU time), ``limit_files`` and
    ``limit_processes`` bound what one module may use.
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
