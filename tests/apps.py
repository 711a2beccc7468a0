"""Service factories used by the process-level tests (named in their settings files)."""

from __future__ import annotations

from pathlib import Path

from shmooze.moduletype import ModuleType, python_module
from shmooze.pool import Pool
from shmooze.queue import Queue

HERE = Path(__file__).resolve().parent
MISBEHAVE = str(HERE / "modules" / "misbehave.py")
SHOUT = str(HERE.parent / "examples" / "modules" / "shout.sh")

FAST = {"rm_timeout": 0.5, "term_timeout": 0.5}

TYPES = [
    python_module("good", MISBEHAVE, "--record", **FAST),
    python_module("child", MISBEHAVE, "--child-ignores-term", **FAST),
    python_module("stubborn", MISBEHAVE, "--ignore-term", **FAST),
    python_module("slow", MISBEHAVE, "--slow-command", "5", **FAST),
    ModuleType("shout", ("bash", SHOUT), **FAST),
]


def make_queue() -> Queue:
    return Queue(TYPES, backgrounds=[python_module("bg", MISBEHAVE, "--record", **FAST)])


def make_pool() -> Pool:
    return Pool(TYPES)


#: A module that ignores ``rm`` and SIGTERM, with long ladder timeouts: only SIGKILL ends it soon.
STUCK = python_module("stuck", MISBEHAVE, "--ignore-term", rm_timeout=30, term_timeout=30)


def make_stuck_queue() -> Queue:
    return Queue([*TYPES, STUCK])


def make_failing() -> Queue:
    raise RuntimeError("this service is broken on purpose (a test)")


def make_hanging() -> Queue:
    """A service that never finishes starting: its port listens, nothing answers."""
    import threading

    threading.Event().wait(120)
    return make_queue()


OPSMOD = str(HERE / "modules" / "opsmod.py")


def make_ops_pool() -> Pool:
    """A pool for the operations tests: a plain type and one restarted on failure."""
    return Pool([python_module("ops", OPSMOD, **FAST),
                 python_module("crashy", OPSMOD, restart="on-failure", restart_delay=0.2, **FAST)])


def make_silent_queue() -> Queue:
    """A queue with a module type that never connects: every ``add`` of it fails after the connect timeout."""
    return Queue([python_module("silent", MISBEHAVE, "--no-connect", **FAST)])


CHATTY = str(HERE / "modules" / "chatty.py")


def make_chatty_queue() -> Queue:
    """A queue of modules that print (their output goes to the module output files)."""
    return Queue([python_module("chatty", CHATTY, **FAST)])


def make_first_hour_queue() -> Queue:
    """A queue of modules that fail to start as a newcomer's would (a missing import, a missing file), and
    one that prints nothing."""
    return Queue([ModuleType("crasher", ("python3", "-c", "import nope_not_here")),
                  ModuleType("missing", ("python3", str(HERE / "modules" / "nope.py"))),
                  python_module("quiet", MISBEHAVE, **FAST),
                  python_module("init-crash", MISBEHAVE, "--crash-in-init", **FAST),
                  python_module("init-error", MISBEHAVE, "--init-error", **FAST)])
