"""A service with one command of every kind, for the service base's tests."""

from __future__ import annotations

import threading
from typing import Any

from shmooze.commands import command
from shmooze.errors import CommandError
from shmooze.service import Service


class Sample(Service):
    name = "sample"

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    @command
    def echo(self, **args: Any) -> dict:
        return args

    @command
    def nothing(self) -> None:
        return None

    @command
    def add(self, a: int, b: int = 0) -> int:
        return a + b

    @command
    def typed(self, name: str, uids: list[str], flag: bool = False, ratio: float = 1.0,
              extra: dict | None = None) -> dict:
        return {"name": name, "uids": uids, "flag": flag, "ratio": ratio, "extra": extra}

    @command
    def refuse(self) -> None:
        raise CommandError("no, because the queue is full")

    @command
    def bug(self) -> None:
        raise ZeroDivisionError("division by zero")

    @command
    def not_json(self) -> Any:
        return {1, 2}

    @command
    def wait_gate(self, timeout: float = 5.0) -> bool:
        return self.gate.wait(timeout)

    @command
    def open_gate(self) -> None:
        self.gate.set()

    def _private(self) -> None:
        raise AssertionError("must not be reachable")
