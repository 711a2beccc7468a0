"""Services for the containment tests: hostile modules in Python and bash (named in settings files)."""

from __future__ import annotations

from pathlib import Path

from shmooze.moduletype import ModuleType, python_module
from shmooze.queue import Queue

HERE = Path(__file__).resolve().parent
MISBEHAVE = str(HERE / "modules" / "misbehave.py")
ESCAPE_SH = str(HERE / "modules" / "escape.sh")

FAST = {"rm_timeout": 0.5, "term_timeout": 0.5}

TYPES = [
    python_module("good", MISBEHAVE, "--record", **FAST),
    # leaves a grandchild in its own session; ignores rm and SIGTERM itself
    python_module("pyescape", MISBEHAVE, "--escape", "--ignore-term", **FAST),
    ModuleType("shescape", ("bash", ESCAPE_SH), **FAST),
]


def make_queue() -> Queue:
    return Queue(TYPES)
