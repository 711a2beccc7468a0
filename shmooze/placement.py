"""Where a host's modules go and what they are told: the placement policy of a queue or a pool.

A policy keeps the placed modules in its own order (the queue's entries and background, the pool's
set) and says which ``play`` / ``suspend`` orders its rule asks for now. The host's
:class:`~shmooze.moduletable.ModuleTable` calls it with the table's lock held; :func:`send_orders`
then sends those orders, outside the lock.
"""

from __future__ import annotations

import concurrent.futures
import logging
from typing import Any, Callable, Iterable

from shmooze.errors import CommandError
from shmooze.module import ModuleProcess

log = logging.getLogger(__name__)

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


def send_orders(orders: Orders, pool: concurrent.futures.Executor | None,
                told: Callable[[ModuleProcess, str], Any]) -> list[ModuleProcess]:
    """Send play/suspend orders concurrently (``told`` after each that succeeded); return the modules
    that failed theirs."""
    if not orders:
        return []
    assert pool is not None  # commands reach modules only once the host has booted
    if len(orders) == 1:  # (one add to a pool) sent from this thread: no pool thread to wake or to make
        futures = {_run_now(orders[0][0].call, orders[0][1]): orders[0]}
    else:
        futures = {pool.submit(m.call, cmd): (m, cmd) for m, cmd in orders}
    failed = []
    for future, (module, cmd) in futures.items():
        try:
            future.result()
            told(module, cmd)
        except CommandError as exc:
            log.warning("module %s (%s) failed %s: %s", module.uid, module.type.name, cmd, exc)
            failed.append(module)
    return failed


def listed(module: ModuleProcess, parameters: dict[str, list[str]]) -> dict[str, Any]:
    """A placed module as ``queue``, ``bg`` and ``pool`` list it: uid, type, and the parameters named
    for its type in ``parameters``."""
    out: dict[str, Any] = {"uid": module.uid, "type": module.type.name}
    names = parameters.get(module.type.name)
    if names is not None:
        out["parameters"] = module.get_parameters(names)
    return out


def _run_now(fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
    """``fn(*args)`` run here, as a done future (as a pool would hand it back)."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    try:
        future.set_result(fn(*args))
    except BaseException as exc:  # noqa: BLE001 - handed to whoever reads the future
        future.set_exception(exc)
    return future
