"""A service whose commands answer the same every time, for fuzzing over sockets (tests/test_fuzz_sockets.py):
a quick one (on the loop worker's connection loop), a read-only one (on a pool thread) and one that
changes state (on a pool thread, checked by the service's guard)."""

from __future__ import annotations

from typing import Any

from shmooze.commands import command
from shmooze.service import Service


class SocketFuzz(Service):
    name = "fuzz"

    @command(quick=True)
    def echo(self, **args: Any) -> dict:
        """Its arguments, on the connection loop."""
        return args

    @command(read_only=True)
    def echo_pool(self, **args: Any) -> dict:
        """Its arguments, on a pool thread."""
        return args

    @command
    def add(self, a: int, b: int = 0) -> int:
        """A command that may change state (so the guard checks who sends it); it changes nothing."""
        return a + b
