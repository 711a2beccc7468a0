"""The queue service: modules in order, the top one playing, a background when the queue is empty.

After every change the queue re-establishes one rule: the module on top is
playing, every other module is suspended, and the background plays only while
the queue is empty. It sends ``play`` and ``suspend`` only where something
changed, concurrently; a module that fails one is stopped and removed, and the
rule is applied again.
"""

from __future__ import annotations

from typing import Any, Iterable

from shmooze.commands import command
from shmooze.errors import CommandError
from shmooze.hosting.host import ModuleHost
from shmooze.hosting.lifecycle import Reordered
from shmooze.hosting.moduleprocess import ModuleProcess
from shmooze.hosting.originallog import OriginalLogWriter
from shmooze.hosting.placement import Orders, Placement, listed
from shmooze.moduletype import ModuleType, available, by_name


class QueueOrder(Placement):
    """The queue's placement: its entries in order, and the background apart."""

    def __init__(self) -> None:
        self.entries: list[ModuleProcess] = []
        self.background: ModuleProcess | None = None

    def placed(self) -> list[ModuleProcess]:
        return self.entries + ([self.background] if self.background is not None else [])

    def attach(self, module: ModuleProcess, kind: str, restarted: bool) -> list[ModuleProcess] | None:
        if kind == "module":
            if restarted:
                return None  # a queue entry that ends leaves the queue
            self.entries.append(module)
            return []
        if restarted and self.background is not None:
            return None  # another background was set meanwhile
        old, self.background = self.background, module
        return [old] if old is not None else []

    def detach(self, module: ModuleProcess) -> None:
        if module is self.background:
            self.background = None
        elif module in self.entries:  # (a background that set_bg replaced is in neither place)
            self.entries.remove(module)

    def place_restored(self, modules: list[ModuleProcess], background: ModuleProcess | None) -> list[ModuleProcess]:
        self.entries = modules + self.entries
        if background is None:
            return []
        if self.background is not None:  # a background was set while restoring: it stays
            return [background]
        self.background = background
        return []

    def orders(self, untold: Iterable[ModuleProcess], playing: Iterable[ModuleProcess]) -> Orders:
        top = self.entries[0] if self.entries else None
        bg = self.background
        orders = [(m, "suspend") for m in playing if m is not top and m is not bg]
        if top is not None and top.told != "play":
            orders.append((top, "play"))
        if bg is not None:
            if top is None and bg.told != "play":
                orders.append((bg, "play"))
            elif top is not None and bg.told == "play":
                orders.append((bg, "suspend"))
        return orders

    def move_first(self, first: list[ModuleProcess]) -> list[str]:
        """Put ``first`` (entries, in that order) before the others, which keep their order; return the
        new order's uids."""
        named = {m.uid for m in first}
        self.entries = first + [m for m in self.entries if m.uid not in named]
        return [m.uid for m in self.entries]


class Queue(ModuleHost):
    name = "queue"
    restartable = ("background",)  # a queue entry that ends leaves the queue

    def __init__(self, modules: Iterable[ModuleType], backgrounds: Iterable[ModuleType] = (),
                 logfilename: str | None = None, **options: Any):
        """``modules`` and ``backgrounds``: module types (or the original's module classes, with
        ``TYPE_STRING`` and ``process``); ``logfilename``: as in the original, a SQLite file where the
        queue writes the original's command log (table ``queue_log``: see shmooze.hosting.originallog)."""
        self.order = QueueOrder()
        super().__init__(modules, placement=self.order, **options)
        self.backgrounds = by_name(backgrounds, "background")
        if logfilename:
            self.original_log = OriginalLogWriter(logfilename, self.original_kind)

    def type_tables(self) -> dict[str, dict[str, ModuleType]]:
        """The module types this queue starts: "module" and "background"."""
        return {"module": self.types, "background": self.backgrounds}

    def _find(self, uid: str) -> ModuleProcess:
        """Only queued modules answer to tell_module and ask_module (the background has its own)."""
        module = self.table.find(uid)
        if module is None or module is self.order.background:
            raise CommandError(f"no module with uid {uid!r} in the queue")
        return module

    def _background(self, uid: str) -> ModuleProcess:
        with self.table.lock:
            bg = self.order.background
        if bg is None:
            raise CommandError("there is no background")
        if bg.uid != uid:
            raise CommandError(f"{uid!r} is not the current background ({bg.uid!r})")
        return bg

    # -- commands ----------------------------------------------------------------------

    @command(read_only=True)
    def backgrounds_available(self, describe: bool = False) -> list:
        """Names of the background types; with ``describe``, ``{"name", "description"}`` of each."""
        return available(self.backgrounds, describe)

    @command
    def set_bg(self, type: str, args: dict = {}, key: str | None = None) -> dict:  # noqa: B006 - never mutated
        """Start a background; the old one is stopped. ``key``: as for ``add``."""
        return self.keys.once(key, lambda: {"uid": self.start_and_place(self.backgrounds, type, args, "background", key,
                                                                     logged_as="set_bg").uid})

    @command
    def mv(self, uids: list[str]) -> None:
        """Reorder: the named modules first, in that order, then the others in their old order."""
        self.restorer.wait_for()  # the restored modules are placed first: an order made before would not hold
        with self.table.lock:
            first = [m for m in (self.table.find(uid) for uid in dict.fromkeys(uids)) if m is not None]
            order = self.order.move_first([m for m in first if m is not self.order.background])
            self.lifecycle.publish(Reordered(order))
        self.recorder.command("mv", {"uids": uids})
        self.rule.apply()

    @command(read_only=True)
    def queue(self, parameters: dict[str, list[str]] = {}) -> list:  # noqa: B006 - never mutated
        """The queue in order: ``{"uid", "type", "parameters"?}`` (parameters for the types named)."""
        with self.table.lock:
            modules = list(self.order.entries)
        return [listed(m, parameters) for m in modules]

    @command(read_only=True)
    def bg(self, parameters: dict[str, list[str]] = {}) -> Any:  # noqa: B006 - never mutated
        """The background like a queue entry, or null."""
        with self.table.lock:
            bg = self.order.background
        return None if bg is None else listed(bg, parameters)

    @command
    def tell_background(self, uid: str, cmd: str, args: dict = {}) -> Any:  # noqa: B006 - never mutated
        """Send the background ``do_CMD``; ``uid`` must be the current background's."""
        return self._tell(self._background(uid), cmd, args, "tell_background")

    @command(read_only=True)
    def ask_background(self, uid: str, parameters: list[str]) -> dict:
        """Named parameters of the background."""
        return self._background(uid).get_parameters(parameters)
