"""Client keys: a retried ``add`` or ``set_bg`` gets the first attempt's answer, not a second module.

A client names a request with a ``key``; :meth:`ClientKeys.once` runs it once per key within
``window`` seconds: a repeat (a retry) gets the first answer, waiting for it if the first is still
starting its module. A failed first attempt is forgotten. Keys are journaled with their module, so
the first answer outlives a restart (:meth:`ClientKeys.remember`).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from shmooze.errors import CommandError


class _KeySlot:
    """The first answer to a client key."""

    def __init__(self, result: Any = None, expires: float = float("inf")):
        self.done = threading.Event()
        self.result = result
        self.expires = expires
        if result is not None:
            self.done.set()


class ClientKeys:
    """``wait(key)`` is called before a key is looked up (a host waits there while the first answer to
    that key is being restored from its journal)."""

    def __init__(self, window: float = 600.0, wait: Callable[[str], None] | None = None):
        self.window = window
        self.wait = wait
        self._slots: dict[str, _KeySlot] = {}
        self._lock = threading.Lock()

    def once(self, key: str | None, run: Callable[[], dict]) -> dict:
        """``run()``, or the first answer of an earlier request with this key (``None``: no key, just run)."""
        if key is None:
            return run()
        if not 0 < len(key) <= 200:
            raise CommandError("key must be a string of 1 to 200 characters")
        if self.wait is not None:
            self.wait(key)
        while True:
            with self._lock:
                now = time.monotonic()
                for old in [k for k, slot in self._slots.items() if slot.expires < now]:
                    del self._slots[old]
                slot = self._slots.get(key)
                if slot is None:
                    slot = self._slots[key] = _KeySlot()
                    break
            if not slot.done.wait(120):
                raise CommandError("the first command with this key is still running")
            if slot.result is not None:
                return slot.result
        try:
            result = run()
        except BaseException:
            with self._lock:
                self._slots.pop(key, None)
            slot.done.set()
            raise
        slot.result, slot.expires = result, time.monotonic() + self.window
        slot.done.set()
        return result

    def remember(self, key: str, result: dict, added_at: float) -> None:
        """A first answer from before a restart (``added_at``: its wall-clock time), kept for what is left
        of its window."""
        left = self.window - (time.time() - added_at)
        if left > 0:
            with self._lock:
                self._slots.setdefault(key, _KeySlot(result, time.monotonic() + left))
