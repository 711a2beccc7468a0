"""A small stand-alone service: a volume setting from 0 to 100."""

from __future__ import annotations

import threading

from shmooze.commands import command
from shmooze.errors import CommandError
from shmooze.service import Service


class Volume(Service):
    """The jukebox's volume, with mute."""

    name = "volume"

    def __init__(self, level: int = 50):
        super().__init__()
        self._lock = threading.Lock()
        self.level = level
        self.muted = False

    @command(quick=True)
    def get_volume(self) -> dict:
        """The level (0 to 100) and whether it is muted."""
        with self._lock:
            return {"level": self.level, "muted": self.muted}

    @command
    def set_volume(self, level: int) -> dict:
        """Set the level; it must be from 0 to 100."""
        if not 0 <= level <= 100:
            raise CommandError(f"level must be from 0 to 100, not {level}")
        with self._lock:
            self.level = level
        self.changed("volume", level=level)
        return self.get_volume()

    @command
    def step(self, by: int = 5) -> dict:
        """Raise (or, with a negative step, lower) the level, staying within 0 to 100."""
        with self._lock:
            self.level = max(0, min(100, self.level + by))
            level = self.level
        self.changed("volume", level=level)
        return self.get_volume()

    @command
    def mute(self, muted: bool = True) -> dict:
        """Mute (or, with muted=false, unmute); the level is kept."""
        with self._lock:
            self.muted = muted
        self.changed("mute", muted=muted)
        return self.get_volume()
