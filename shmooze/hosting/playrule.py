"""The play/suspend rule at work: after every change, a host's modules are told what its placement asks.

:meth:`PlayRule.apply` asks the table for the orders the placement's rule asks for now (the queue:
the top entry plays, the others are suspended, the background plays only while the queue is empty;
the pool: each new module plays), marks them sent, sends them concurrently, removes the modules
that fail theirs, and applies the rule again until nothing fails.
"""

from __future__ import annotations

import threading
from typing import Callable

from shmooze.hosting.moduleprocess import ModuleProcess
from shmooze.hosting.moduletable import ModuleTable
from shmooze.hosting.placement import Orders


class PlayRule:
    """``send(orders)`` sends orders and returns the modules that failed them; ``remove(uids)`` takes
    those out and stops them."""

    def __init__(self, table: ModuleTable, send: Callable[[Orders], list[ModuleProcess]],
                 remove: Callable[[list[str]], None]):
        self.table, self.send, self.remove = table, send, remove
        self._lock = threading.Lock()  # one pass of the rule at a time

    def apply(self) -> None:
        with self._lock:
            while True:
                with self.table.lock:  # (so that no module is taken out between the two)
                    orders = self.table.orders()
                    self.table.told(orders)
                failed = self.send(orders)
                if not failed:
                    return
                self.remove([m.uid for m in failed])
