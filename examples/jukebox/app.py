"""The jukebox: a queue of things to say, show and count down, a clock background, and a pool of lights.

``settings.json`` beside this package names the factories below under
``services``; ``shmooze run`` serves them.
"""

from __future__ import annotations

from pathlib import Path

from shmooze.moduletype import ModuleType, python_module
from shmooze.pool import Pool
from shmooze.queue import Queue

HERE = Path(__file__).resolve().parent
MODULES = HERE / "modules"

QUEUE_TYPES = [
    python_module("text", str(MODULES / "speaker.py"), description="says a text, one word at a time"),
    python_module("countdown", str(MODULES / "countdown.py"), description="counts down, then leaves"),
    ModuleType("shout", ("bash", str(HERE.parent / "modules" / "shout.sh")),
               description="a bash module that shouts back"),
    python_module("banner", str(MODULES / "banner.py"),
                  description="scrolls a text across the screen (written with the original module API)"),
]
BACKGROUND_TYPES = [python_module("clock", str(MODULES / "clock.py"), description="the time")]
LIGHT_TYPES = [python_module("blinker", str(MODULES / "blinker.py"), description="a blinking light")]


class Jukebox(Queue):
    """The queue, which starts with the clock as its background (unless a background was restored)."""

    def after_restore(self) -> None:
        if self.bg() is None:
            self.set_bg("clock")


def make_queue() -> Queue:
    return Jukebox(QUEUE_TYPES, BACKGROUND_TYPES)


def make_pool() -> Pool:
    return Pool(LIGHT_TYPES)
