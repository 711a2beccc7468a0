"""The soak's queue: well-behaved modules and modules that leave by themselves (tests/modules/misbehave.py)."""

from __future__ import annotations

from pathlib import Path

from shmooze.moduletype import python_module
from shmooze.queue import Queue

MISBEHAVE = str(Path(__file__).resolve().parent.parent / "tests" / "modules" / "misbehave.py")

#: type name -> seconds after init when it leaves by itself (None: stays until removed)
TYPES: dict[str, float | None] = {"stay": None, "record": None, "leave05": 0.5, "leave1": 1.0, "leave2": 2.0}
FLAGS = {"stay": (), "record": ("--record",), "leave05": ("--exit-after", "0.5"),
         "leave1": ("--exit-after", "1"), "leave2": ("--exit-after", "2")}


def make_queue() -> Queue:
    return Queue([python_module(name, MISBEHAVE, *FLAGS[name], description=f"misbehave.py {' '.join(FLAGS[name])}")
                  for name in TYPES])
