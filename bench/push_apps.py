"""The push benchmark's queue: the jukebox's module types plus ``stamp`` (bench/push_stamp_module.py).

No background is started, so the only change events are the ones the benchmark causes.
"""

from __future__ import annotations

from pathlib import Path

from jukebox.app import BACKGROUND_TYPES, QUEUE_TYPES

from shmooze.moduletype import python_module
from shmooze.queue import Queue

STAMP = str(Path(__file__).resolve().parent / "push_stamp_module.py")


def make_queue() -> Queue:
    return Queue([*QUEUE_TYPES, python_module("stamp", STAMP, description="says the time every interval")],
                 BACKGROUND_TYPES)
