from pathlib import Path

from shmooze.moduletype import ModuleType, python_module
from shmooze.queue import Queue

MODULES = Path(__file__).resolve().parent.parent / "modules"


def make_queue():
    return Queue([
        python_module("timer", str(MODULES / "timer.py"), description="counts down, then leaves"),
        ModuleType("ticker", ("node", str(MODULES / "ticker.js")), description="counts up, in Node.js"),
    ])
