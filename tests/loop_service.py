"""A service with quick commands and slow ones, for the connection-loop worker's tests."""

from __future__ import annotations

import threading

from shmooze.commands import command
from shmooze.service import Service


class LoopSample(Service):
    name = "loop"

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    @command(quick=True)
    def where(self) -> str:
        """The name of the thread that runs the command."""
        return threading.current_thread().name

    @command(quick=True)
    def big(self, size: int) -> str:
        """A string of ``size`` bytes."""
        return "x" * size

    @command(read_only=True)
    def where_read(self) -> str:
        """Like ``where``, but read-only only (so never on the loop)."""
        return threading.current_thread().name

    @command
    def wait_gate(self, timeout: float = 30.0) -> bool:
        return self.gate.wait(timeout)

    @command
    def open_gate(self) -> None:
        self.gate.set()
