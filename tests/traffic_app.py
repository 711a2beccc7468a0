"""A service for the traffic tests: slow commands that record each run, large events and answers."""

from __future__ import annotations

import os
import time

from shmooze.commands import command
from shmooze.service import Service


class Traffic(Service):
    name = "traffic"

    def __init__(self) -> None:
        super().__init__()
        self.runs_path = os.environ["TRAFFIC_RUNS"]

    @command
    def slow(self, seconds: float = 1.0, tag: str = "") -> float:
        """Record that it ran (in a file, so a restart keeps the count), then take ``seconds``."""
        with open(self.runs_path, "a") as f:
            f.write(f"{tag}\n")
        time.sleep(seconds)
        return seconds

    @command
    def publish(self, count: int = 1, size: int = 10, kind: str = "blob") -> int:
        """Publish ``count`` events of about ``size`` bytes each."""
        version = 0
        for _ in range(count):
            version = self.changed(kind, data="x" * size)
        return version

    @command
    def big(self, size: int = 1000) -> str:
        """An answer of ``size`` bytes."""
        return "y" * size

    @command(read_only=True)
    def history(self, seconds: float = 0.0, tag: str = "") -> float:
        """A slow read: declared read-only, so the gateway may send it again."""
        return self.slow(seconds, tag)
