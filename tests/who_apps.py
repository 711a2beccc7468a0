"""Services for tests/test_who.py: one that says whom it runs a command for."""

from __future__ import annotations

from shmooze import caller
from shmooze.commands import command
from shmooze.service import Service


class Whoami(Service):
    name = "whoami"

    @command
    def whoami(self) -> str | None:
        """Changes nothing, but is not declared read-only: it runs as a command that changes state."""
        return caller.current()

    @command(read_only=True)
    def peek(self) -> str | None:
        return caller.current()
