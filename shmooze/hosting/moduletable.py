"""The modules of a host, by state, under one lock: :class:`ModuleTable`.

A module's states in its host, and the one method of the table that moves it::

    (spawned) --starting()--> starting --started()--> (placed next, or stopped)
    --place() or place_restored()--> placed, untold --told()--> placed, playing or suspended
    placed --take_out()--> stopping --stopped()--> (ended)

A module that fails its start, or finds no place, goes from ``started()`` straight to its stop
ladder and ``stopped()``; a module that another displaces (a new background) is taken out as the
new one is placed. Placed modules are indexed by uid, so finding one never scans; where they
go (the queue's order and background, the pool's set) is the placement policy's
(:mod:`shmooze.hosting.placement`), which the table calls with its lock held.
"""

from __future__ import annotations

import itertools
import secrets
import threading
from typing import Iterable

from shmooze.hosting.moduleprocess import ModuleProcess
from shmooze.hosting.placement import Orders, Placement


class ModuleTable:
    """Every module of a host that is starting, placed or stopping, and whether the host is closing.

    ``lock`` guards them all (an RLock: a caller holds it across several transitions and the placement
    policy's calls, each transition takes it too)."""

    def __init__(self, placement: Placement):
        self.lock = threading.RLock()
        self.placement = placement
        #: Set once when the host stops: nothing is started or placed after it.
        self.closing = False
        #: Connections refused by modules that have ended (those of live modules are on each module).
        self.refused_before = 0
        self._index: dict[str, ModuleProcess] = {}  # every placed module, by uid
        self._untold: dict[str, ModuleProcess] = {}  # placed modules told nothing yet
        self._playing: dict[str, ModuleProcess] = {}  # placed modules last told play
        self._starting: dict[str, ModuleProcess] = {}
        self._stopping: dict[str, ModuleProcess] = {}
        self._uid_prefix = secrets.token_hex(3)  # (uids of another instance of the host differ)
        self._uid_numbers = itertools.count(1)

    def new_uid(self) -> str:
        return f"{self._uid_prefix}-{next(self._uid_numbers)}"

    # -- transitions -------------------------------------------------------------------

    def close(self) -> bool:
        """The host is stopping: return whether it already was (a second ``stop`` waits for the first)."""
        with self.lock:
            closing, self.closing = self.closing, True
            return closing

    def starting(self, module: ModuleProcess) -> None:
        """Spawned, not answered init yet: in no place, but counted and stopped with the host."""
        with self.lock:
            self._starting[module.uid] = module

    def started(self, module: ModuleProcess) -> None:
        """Its start is over, answered or failed: placed next (:meth:`place`), or stopped."""
        with self.lock:
            self._starting.pop(module.uid, None)

    def place(self, module: ModuleProcess, kind: str, restarted: bool) -> list[ModuleProcess] | None:
        """Started, it takes the place the placement policy gives it: indexed by uid, told nothing yet (the
        rule tells it). Return the modules it displaced, taken out (:meth:`take_out`); None when it has no
        place (a restarted module no longer wanted there): then it is in no state, to be stopped."""
        with self.lock:
            displaced = self.placement.attach(module, kind, restarted)
            if displaced is None:
                return None
            self._index[module.uid] = self._untold[module.uid] = module
            return self.take_out(m.uid for m in displaced)

    def place_restored(self, modules: list[ModuleProcess], background: ModuleProcess | None) -> list[ModuleProcess]:
        """Modules restored from the journal take their places (:meth:`place`), before those placed meanwhile;
        return those that found none (in no state, to be stopped)."""
        with self.lock:
            unplaced = self.placement.place_restored(modules, background)
            for module in modules + ([background] if background is not None else []):
                if module not in unplaced:
                    self._index[module.uid] = self._untold[module.uid] = module
            return unplaced

    def told(self, orders: Orders) -> None:
        """The rule's orders are being sent: each module is what it was last told (play or suspend)."""
        with self.lock:
            for module, cmd in orders:
                module.told = cmd
                self._untold.pop(module.uid, None)
                if cmd == "play":
                    self._playing[module.uid] = module
                else:
                    self._playing.pop(module.uid, None)

    def take_out(self, uids: Iterable[str]) -> list[ModuleProcess]:
        """Out of place and out of the index, to be stopped (unknown uids are skipped): stopping."""
        with self.lock:
            removed = [m for m in (self._index.pop(uid, None) for uid in dict.fromkeys(uids)) if m is not None]
            for module in removed:
                self.placement.detach(module)
                self._untold.pop(module.uid, None)
                self._playing.pop(module.uid, None)
                self._stopping[module.uid] = module
            return removed

    def stopped(self, module: ModuleProcess) -> None:
        """Its stop ladder is over: out of the table; its refused connections join the host's count."""
        with self.lock:
            self._stopping.pop(module.uid, None)
            self.refused_before += module.refused

    # -- views -------------------------------------------------------------------------

    def find(self, uid: str) -> ModuleProcess | None:
        """The placed module with this uid, or None."""
        return self._index.get(uid)

    def placed(self) -> list[ModuleProcess]:
        """Placed modules, in the placement policy's order."""
        with self.lock:
            return self.placement.placed()

    def live(self) -> list[ModuleProcess]:
        """Placed modules, then those starting."""
        with self.lock:
            return self.placement.placed() + list(self._starting.values())

    def stopping(self) -> list[ModuleProcess]:
        with self.lock:
            return list(self._stopping.values())

    def refusal(self, most: int) -> str | None:
        """Why no module may start now (the host is stopping, or holds ``most`` modules placed or
        starting), or None."""
        with self.lock:
            if self.closing:
                return "is stopping"
            if len(self._index) + len(self._starting) >= most:
                return f"already holds {most} modules, its limit"
            return None

    def orders(self) -> Orders:
        """The play/suspend orders the placement's rule asks for now."""
        with self.lock:
            return self.placement.orders(list(self._untold.values()), list(self._playing.values()))

    def refused(self) -> int:
        """Connections refused by this host's modules, ended or live."""
        with self.lock:
            return self.refused_before + sum(m.refused for m in self.live())
