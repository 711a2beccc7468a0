"""Where a host's modules go and what they are told: the placement policy of a queue or a pool.

A policy keeps the placed modules in its own order (the queue's entries and background, the pool's
set) and says which ``play`` / ``suspend`` orders its rule asks for now. The host's
:class:`~shmooze.hosting.moduletable.ModuleTable` calls it with the table's lock held; the host's
:class:`~shmooze.hosting.playrule.PlayRule` sends the orders, outside the lock.
"""

from __future__ import annotations

from typing import Any, Iterable

from shmooze.hosting.moduleprocess import ModuleProcess

Orders = list[tuple[ModuleProcess, str]]


class Placement:
    """The base of placement policies; every method is called with the table's lock held."""

    def placed(self) -> list[ModuleProcess]:
        """Every placed module, in order."""
        raise NotImplementedError

    def attach(self, module: ModuleProcess, kind: str, restarted: bool) -> list[ModuleProcess] | None:
        """Put a started module in its place; return the modules it displaced (to be stopped), or None
        when it has no place (a restarted module no longer wanted there)."""
        raise NotImplementedError

    def detach(self, module: ModuleProcess) -> None:
        """Take a placed module out of its place."""
        raise NotImplementedError

    def place_restored(self, modules: list[ModuleProcess], background: ModuleProcess | None) -> list[ModuleProcess]:
        """Put modules restored from the journal in place, before anything added meanwhile; return those
        that found no place."""
        raise NotImplementedError

    def orders(self, untold: Iterable[ModuleProcess], playing: Iterable[ModuleProcess]) -> Orders:
        """The play/suspend orders the rule asks for now (``untold``: placed modules told nothing yet;
        ``playing``: those last told play)."""
        return []


def listed(module: ModuleProcess, parameters: dict[str, list[str]]) -> dict[str, Any]:
    """A placed module as ``queue``, ``bg`` and ``pool`` list it: uid, type, and the parameters named
    for its type in ``parameters``."""
    out: dict[str, Any] = {"uid": module.uid, "type": module.type.name}
    names = parameters.get(module.type.name)
    if names is not None:
        out["parameters"] = module.get_parameters(names)
    return out
